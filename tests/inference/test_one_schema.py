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


_NEW_FIELD_PROBE = """
import json, os, sys
import pyarrow.parquet as pq
from fastapi.testclient import TestClient
import pneumoscan
from pneumoscan.inference.ray_engine import decode_batch, scorer_for
from pneumoscan.inference.results import write_predictions
from pneumoscan.inference.rows import COLUMNS
from pneumoscan.serving.app import create_app
import pyarrow as pa

onnx, image, out = sys.argv[1], sys.argv[2], sys.argv[3]
model = pneumoscan.load(onnx)
rows = model.predict([image])
found = {"api": list(rows[0].record())}
for fmt in (".csv", ".json", ".jsonl", ".parquet"):
    path = write_predictions(rows, os.path.join(out, "r" + fmt))
    if fmt == ".json":
        found[fmt] = list(json.loads(open(path).read())["predictions"][0])
    elif fmt == ".csv":
        found[fmt] = open(path).readline().strip().split(",")
    elif fmt == ".jsonl":
        found[fmt] = list(json.loads(open(path).readline()))
    else:
        found[fmt] = pq.read_table(path).schema.names
with TestClient(create_app(model)) as client:
    item = client.post("/v1/predict/batch", files=[("files", ("a.png", open(image, "rb").read()))]).json()["results"][0]
found["server"] = [c for c in item if c in COLUMNS]
listing = pa.table({"file": [image], "fspath": [os.fsencode(image)], "size": [1], "mtime_ns": [1]})
scored = scorer_for(__import__("pathlib").Path(onnx))()(decode_batch(listing, int(model.meta.image_size), model.meta.fit))
found["ray"] = scored.schema.names
found["value"] = [rows[0].record()["second_opinion"], item["second_opinion"], scored.to_pylist()[0]["second_opinion"]]
print(json.dumps({"columns": list(COLUMNS), "found": found}))
"""


@pytest.mark.e2e
def test_a_new_field_of_every_result_is_a_change_to_the_schema_and_the_row_maker_alone(onnx_file, images, tmp_path):
    """A copy of pneumoscan whose rows.py alone gains a field (declared in Prediction, filled by
    result_rows) writes it in every format, the server's rows and the Ray scorer's table."""
    import shutil
    import subprocess
    import sys

    package = Path(pneumoscan.__file__).parent
    copy = tmp_path / "src" / "pneumoscan"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    rows_py = copy / "inference" / "rows.py"
    text = rows_py.read_text()
    declared = "    mtime_ns: int | None = None\n\n    @property"
    filled = "size=source.size, mtime_ns=source.mtime_ns,"
    assert text.count(declared) == 1 and text.count(filled) == 1
    rows_py.write_text(text.replace(declared, "    mtime_ns: int | None = None\n    second_opinion: str | None = None"
                                              "\n\n    @property")
                       .replace(filled, filled + ' second_opinion=None if probability is None else "viral",'))
    env = {**__import__("os").environ, "PYTHONPATH": str(copy.parent)}
    done = subprocess.run([sys.executable, "-c", _NEW_FIELD_PROBE, str(onnx_file), str(images[0]), str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["columns"][-1] == "second_opinion"
    assert {key: cols for key, cols in result["found"].items() if key != "value"} == dict.fromkeys(
        ("api", ".csv", ".json", ".jsonl", ".parquet", "server", "ray"), result["columns"])
    assert result["found"]["value"] == ["viral"] * 3
