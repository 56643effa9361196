"""`pneumoscan export`: an ONNX file with its contract inside, and a model card beside it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import pneumoscan
from pneumoscan.cli import main
from pneumoscan.errors import ModelFileError
from pneumoscan.inference.onnx_backend import load_onnx
from pneumoscan.models import ModelMeta, build_model, save_model
from pneumoscan.provenance import DISCLAIMER
from pneumoscan.runs import export_file, latest_report
from pneumoscan.serving.export import export_onnx

SIZE = 32


@pytest.fixture
def run(tmp_path) -> Path:
    torch.manual_seed(5)
    meta = ModelMeta(name="seed-cnn", image_size=SIZE, threshold=0.3125, temperature=1.25,
                     operating_points={"youden": 0.5, "sens95": 0.125}, val_metrics={"auroc": 0.9375},
                     version="0.1.0", run_id="r1", provenance={"data_manifest_sha256": "abc123", "seed": 7})
    save_model(tmp_path / "run", build_model("seed-cnn", SIZE), meta)
    return tmp_path / "run"


def _report(run: Path, name: str, payload: dict | str, age: float) -> Path:
    path = run / "reports" / name / "report.json"
    path.parent.mkdir(parents=True)
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    stamp = path.stat().st_mtime - age
    os.utime(path, (stamp, stamp))
    return path


def test_cli_export_writes_onnx_and_a_model_card_with_threshold_intervals_and_disclaimer(run, capsys):
    _report(run, "old", {"metrics": {"auroc": 0.5}}, age=100)
    newest = _report(run, "test", {  # the layout `pneumoscan evaluate` writes
        "metrics": {"threshold_free": {"auroc": {"value": 0.91, "low": 0.87, "high": 0.94}},
                    "at": {"stored": {"sensitivity": {"value": 0.95, "low": 0.9, "high": 0.98}}}},
        "bootstrap": {"level": 0.95, "unit": "patient"}}, age=0)

    # Exported elsewhere than the run's export/ (which the suite's shared export fixtures use): the file
    # lands where asked, with its card beside it, and the card still reads the run's newest report.
    onnx_file = run.parent / "elsewhere" / "m.onnx"
    assert main(["export", str(run), "--format", "onnx", "--out", str(onnx_file)]) == 0

    assert onnx_file.is_file() and str(onnx_file) in capsys.readouterr().out
    card = json.loads((onnx_file.parent / "model_card.json").read_text())
    markdown = (onnx_file.parent / "model_card.md").read_text()
    assert card["disclaimer"] == DISCLAIMER and DISCLAIMER in markdown
    assert card["output"]["threshold"] == 0.3125 and "0.3125" in markdown
    assert card["metrics"]["evaluation"]["report"] == str(newest)
    figures = card["metrics"]["evaluation"]["figures"]
    assert figures["threshold_free.auroc"] == {"value": 0.91, "low": 0.87, "high": 0.94}
    assert "| threshold_free.auroc | 0.9100 | 0.8700 to 0.9400 |" in markdown
    assert "| at.stored.sensitivity | 0.9500 | 0.9000 to 0.9800 |" in markdown
    assert "95% bootstrap intervals, resampling patients" in markdown and "0.9375" in markdown
    assert card["training_data"]["data_manifest_sha256"] == "abc123"
    assert card["input"]["size"] == SIZE and "Intended use" in markdown and "Out of scope" in markdown
    assert card["files"]["onnx"] == "m.onnx" and len(card["files"]["onnx_sha256"]) == 64


def test_exported_graph_outputs_the_logit_and_the_temperature_scaled_probability(exported_run):
    session = load_onnx(export_file(exported_run)).backend.session  # exported by export_onnx, temperature 1.7
    images = np.random.default_rng(2).random((3, 1, 64, 64), dtype=np.float32)
    logit, probability = session.run(["logit", "probability"], {"image": images})
    assert logit.shape == probability.shape == (3, 1)
    np.testing.assert_allclose(probability, 1 / (1 + np.exp(-logit / 1.7)), atol=1e-6)


def test_a_torn_or_foreign_report_never_breaks_the_model_card(run):
    _report(run, "torn", '{"metrics": {"auroc": 0.9', age=0)
    _report(run, "list", "[1, 2, 3]", age=10)
    assert latest_report(run) == (None, None)
    from pneumoscan.inference.model_card import build_model_card
    from pneumoscan.models import read_meta

    card = build_model_card(read_meta(run), run)
    assert card["metrics"]["evaluation"] is None and card["metrics"]["note"]


def test_export_refuses_an_onnx_input_and_a_non_onnx_output_name(run, tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"x")
    with pytest.raises(ModelFileError, match="already an ONNX model"):
        export_onnx(tmp_path / "m.onnx")
    with pytest.raises(ModelFileError, match=r"must end in \.onnx"):
        export_onnx(run, tmp_path / "model.pt")


def test_the_exported_graph_carries_no_path_of_the_exporting_machine(exported_run):
    import onnx

    onnx_file = export_file(exported_run)  # exported by export_onnx on this machine, once for the suite
    source_root = str(Path(pneumoscan.__file__).resolve().parents[1])
    assert source_root.encode() not in onnx_file.read_bytes()
    model = onnx.load(str(onnx_file))
    assert all(not node.metadata_props for node in model.graph.node)
