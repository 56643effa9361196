"""One answer per image, whatever asks: the Python API, `predict --out` in every format, the server, the Ray
scorer and the DICOM node give the same columns and the same values for the same images, all made by the
one row maker (`inference.rows.result_rows`)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import pneumoscan
from helpers.images import write_dicom
from helpers.synthetic import write_synthetic_image
from pneumoscan.cli import main
from pneumoscan.inference.results import read_results
from pneumoscan.inference.rows import COLUMNS

pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed: pip install -e '.[dev]'")

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
FORMATS = (".csv", ".json", ".jsonl", ".parquet")


@pytest.fixture(scope="module")
def onnx_file(exported_run) -> Path:
    return exported_run / "export" / "model.onnx"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """A PNG, a chest DICOM with identifiers, a CT DICOM (out of scope by its header) and a file that is no image."""
    import pydicom

    folder = tmp_path_factory.mktemp("images")
    png = write_synthetic_image(folder / "chest.png", 1, seed=3, size=48)
    values = np.random.default_rng(5).integers(200, 3800, (48, 48))
    dcm = write_dicom(folder / "chest.dcm", values, bits_stored=12, patient_id="P-7", sop_class=CR_STORAGE,
                      accession="A-9", study_uid="1.2.3.4")
    ct = write_dicom(folder / "ct.dcm", values, bits_stored=12, patient_id="P-8", sop_class=CR_STORAGE)
    ds = pydicom.dcmread(ct)
    ds.Modality = "CT"
    ds.save_as(ct, enforce_file_format=True)
    garbage = folder / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    return [png, dcm, ct, garbage]


@pytest.fixture(scope="module")
def api_rows(onnx_file, images) -> list[dict]:
    rows = [row.record() for row in pneumoscan.load(onnx_file).predict(images)]
    assert [r["probability"] is not None for r in rows] == [True, True, False, False]  # the test means something
    assert rows[1]["patient_id"] == "P-7" and rows[1]["accession_number"] == "A-9" and rows[1]["size"] > 0
    assert "out of scope: DICOM Modality CT" in rows[2]["error"] and rows[3]["error"]
    return rows


def _written(path: Path, fmt: str) -> tuple[tuple[str, ...], list[dict]]:
    """The columns and the rows of a results file, as a reader of that format sees them."""
    if fmt == ".json":
        rows = json.loads(path.read_text())["predictions"]
        assert all(tuple(r) == tuple(rows[0]) for r in rows)
        return tuple(rows[0]), rows
    if fmt == ".csv":
        with open(path, newline="") as fh:
            header = tuple(next(csv.reader(fh)))
    elif fmt == ".jsonl":
        header = tuple(json.loads(path.read_text().splitlines()[0]))
    else:
        import pyarrow.parquet as pq

        header = tuple(pq.read_table(path).schema.names)
    return header, list(read_results(path))


def test_predict_out_gives_the_same_columns_and_values_in_every_format_as_the_python_api(
    onnx_file, images, api_rows, tmp_path
):
    headers = {}
    for fmt in FORMATS:
        out = tmp_path / f"results{fmt}"
        assert main(["predict", str(onnx_file), *map(str, images), "--out", str(out), "--quiet"]) == 0
        headers[fmt], rows = _written(out, fmt)
        assert rows == api_rows, fmt
    assert set(headers.values()) == {COLUMNS}


def test_the_server_answers_each_image_with_the_same_row_as_the_python_api(onnx_file, images, api_rows):
    from fastapi.testclient import TestClient

    from pneumoscan.serving.app import create_app

    # An upload is named by its file name and has no modification time; every other column is the file's.
    expected = [{**row, "file": Path(row["file"]).name, "mtime_ns": None} for row in api_rows]
    expected = [{**row, "error": row["error"] and row["error"].replace(str(images[i]), images[i].name)}
                for i, row in enumerate(expected)]
    with TestClient(create_app(pneumoscan.load(onnx_file))) as client:
        answer = client.post("/v1/predict/batch", files=[("files", (p.name, p.read_bytes())) for p in images])
        assert answer.status_code == 200, answer.text
        batch = answer.json()["results"]
        one = client.post("/v1/predict", files={"file": (images[1].name, images[1].read_bytes())}).json()
    # Only the words for a file that is no image are the server's own (its 415's detail).
    assert [{c: item[c] for c in COLUMNS} for item in batch] == [*expected[:3], {**expected[3], "error": batch[3]["error"]}]
    assert "not an image" in batch[3]["error"] and batch[3]["size"] == expected[3]["size"]
    assert {c: one[c] for c in COLUMNS} == expected[1]


def test_the_ray_scorer_gives_the_same_rows_as_the_python_api_without_starting_ray(onnx_file, images, api_rows):
    import os

    from pneumoscan.inference.ray_engine import decode_batch, scorer_for

    meta = pneumoscan.load(onnx_file).meta
    listing = pa.table({"file": [str(p) for p in images], "fspath": [os.fsencode(p) for p in images],
                        "size": [r["size"] for r in api_rows], "mtime_ns": [r["mtime_ns"] for r in api_rows]})
    scored = scorer_for(onnx_file)()(decode_batch(listing, int(meta.image_size), meta.fit))
    assert tuple(scored.schema.names) == COLUMNS
    assert scored.to_pylist() == api_rows


def test_the_dicom_node_scores_an_instance_with_the_python_apis_row(onnx_file, images, api_rows, tmp_path):
    import pydicom
    from pydicom.uid import generate_uid

    from pneumoscan.dicom.processing import Processor

    node = Processor(pneumoscan.load(onnx_file), tmp_path / "node")
    outcomes = []
    for path in images[1:3]:
        ds = pydicom.dcmread(path)
        ds.BodyPartExamined, ds.SeriesInstanceUID = "CHEST", generate_uid()  # what a PACS sends
        outcomes.append(node.process(ds))
    scored, refused = outcomes
    row = api_rows[1]
    assert scored.scored, scored.reason
    assert (scored.probability, scored.label, scored.threshold) == (row["probability"], row["label"], row["threshold"])
    assert refused.reason == api_rows[2]["error"].removeprefix(f"{images[2]}: ")  # the scope module's words


def test_predict_lists_its_inputs_once_and_scores_a_file_given_twice_once(onnx_file, images, monkeypatch, tmp_path):
    from pneumoscan.inference import inputs

    walked = []
    real = inputs.iter_inputs
    monkeypatch.setattr(inputs, "iter_inputs", lambda items: (walked.append(list(items)), real(walked[-1]))[1])
    folder, out = images[0].parent, tmp_path / "rows.json"
    assert main(["predict", str(onnx_file), str(images[0]), str(folder), str(images[0]), "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["predictions"]
    assert sorted(row["file"] for row in rows) == sorted(map(str, images))
    assert walked == [[str(images[0])], [str(folder)], [str(images[0])]]  # each argument listed once
