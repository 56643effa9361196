"""The subtype columns in `predict`'s outputs: every file format carries ``subtype`` and ``viral_probability``
(filled for PNEUMONIA answers only, empty elsewhere), and the terminal table shows them where a row has one.

The rows come from the one row maker given the head's probabilities (the model files of these tests have no
subtype head).
"""

from __future__ import annotations

import csv
import json

import pytest

from pneumoscan.inference.results import format_table, read_results, results_schema, write_predictions
from pneumoscan.inference.rows import COLUMNS, Source, result_rows
from pneumoscan.models import ModelMeta

META = ModelMeta(name="seed-cnn", image_size=64, threshold=0.5,
                 subtype={"temperature": 1.0, "threshold": 0.5, "uncertain": [0.4, 0.6]})
NAMES = ["normal.png", "bacterial.png", "uncertain.png", "viral.png", "broken.png"]


@pytest.fixture
def rows():
    sources = [Source(name) for name in NAMES[:4]] + [Source(NAMES[4], error="broken.png: cannot decode")]
    return result_rows(META, sources, [0.2, 0.9, 0.8, 0.7], viral=[0.95, 0.12, 0.5, 0.9])


def test_csv_has_both_columns_filled_for_pneumonia_answers_and_empty_elsewhere(rows, tmp_path):
    out = write_predictions(rows, tmp_path / "out.csv")
    with open(out, newline="") as fh:
        written = list(csv.DictReader(fh))
    assert {"subtype", "viral_probability"} <= set(written[0])
    by_file = {row["file"]: row for row in written}
    assert by_file["normal.png"]["subtype"] == "" and by_file["normal.png"]["viral_probability"] == ""
    assert by_file["broken.png"]["subtype"] == "" and by_file["broken.png"]["viral_probability"] == ""
    assert by_file["bacterial.png"]["subtype"] == "bacterial"
    assert float(by_file["bacterial.png"]["viral_probability"]) == pytest.approx(0.12)
    assert by_file["uncertain.png"]["subtype"] == "uncertain" and by_file["viral.png"]["subtype"] == "viral"


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".parquet"])
def test_every_other_format_types_the_two_columns(rows, tmp_path, suffix):
    if suffix == ".parquet":
        pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed: pip install -e '.[dev]'")
        schema = results_schema()
        assert schema.field("subtype").type == pa.string() and schema.field("viral_probability").type == pa.float64()
    out = write_predictions(rows, tmp_path / f"out{suffix}")
    found = (json.loads(out.read_text())["predictions"] if suffix == ".json" else list(read_results(out)))
    assert tuple(found[0]) == COLUMNS
    assert [(r["subtype"], r["viral_probability"]) for r in found] == [
        (None, None), ("bacterial", pytest.approx(0.12)), ("uncertain", pytest.approx(0.5)),
        ("viral", pytest.approx(0.9)), (None, None)]


def test_table_shows_the_subtype_of_pneumonia_rows_only(rows):
    lines = format_table(rows).splitlines()
    assert "subtype" in lines[0]
    line = dict(zip(NAMES, lines[1:], strict=True))
    assert "bacterial (P viral 0.12)" in line["bacterial.png"]
    assert line["uncertain.png"].endswith("uncertain") and "viral (P viral 0.90)" in line["viral.png"]
    assert "viral" not in line["normal.png"] and "cannot decode" in line["broken.png"]


def test_table_of_a_model_without_a_head_has_no_subtype_column():
    rows = result_rows(ModelMeta(name="seed-cnn", image_size=64), [Source("a.png")], [0.9])
    assert format_table(rows).splitlines()[0].split() == ["file", "probability", "label", "note"]
