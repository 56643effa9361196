"""Two bundled models, one table of names (`pneumoscan.bundled.MODELS`): `default` and `fast` resolve in
every command that takes a model and in `pneumoscan.load`, `pneumoscan models` shows each with its card's
new-site figures and speed, a bundled model this installation lacks is a one-line error, and the package
data ships every bundled folder.

Where `fast` is not built yet (`python bench/build_default_model.py --which fast`), its folder is stood in
for by a tiny random model with a test-made card (`fast_bundle`, the one thing mocked here: the real files
come from a 10-minute build), so that the name's resolution is tested either way; the checks of the real
files (tests/bundled/test_bundled_model.py) skip with the reason.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import tomllib
from pathlib import Path

import pytest

import pneumoscan
from pneumoscan import bundled
from pneumoscan.bundled import CARD_JSON, CARD_MARKDOWN, META_JSON, ONNX_FILE, WEIGHTS_FILE
from pneumoscan.cli import build_parser, main
from pneumoscan.errors import ModelFileError
from pneumoscan.inference import resolve_model
from pneumoscan.inference.model_files import split_model_and_inputs

REPO = Path(__file__).resolve().parents[2]
NAMES = list(bundled.MODELS)
# Test-made figures of the stand-in's card: `pneumoscan models` must print these, read from the card.
STAND_IN_FIGURES = {"roc_auc": (0.9123, 0.8811, 0.9456), "sensitivity at the threshold": (0.9701, 0.94, 0.99),
                    "specificity at the threshold": (0.8333, 0.78, 0.88)}
STAND_IN_SPEED = 4321.0


@pytest.fixture
def fast_bundle(exported_run, tmp_path, monkeypatch) -> Path:
    """The `fast` model's folder: the shipped one when it is built, else a stand-in (a random 64 px
    mini-resnet with a card holding test-made figures) put in its place in the table of names."""
    if bundled.installed(bundled.FAST):
        return bundled.folder(bundled.FAST)
    folder = tmp_path / "bundled-fast"
    folder.mkdir()
    shutil.copyfile(exported_run / "export" / ONNX_FILE, folder / ONNX_FILE)
    shutil.copyfile(exported_run / WEIGHTS_FILE, folder / WEIGHTS_FILE)
    shutil.copyfile(exported_run / META_JSON, folder / META_JSON)
    card = json.loads((exported_run / "export" / CARD_JSON).read_text())
    figures = {k: {"value": v, "low": lo, "high": hi} for k, (v, lo, hi) in STAND_IN_FIGURES.items()}
    card["metrics"] = {**card.get("metrics", {}), "evaluation": {"images": 316, "figures": figures}}
    card["speed"] = {"images_per_second": STAND_IN_SPEED, "p50_ms": 0.2, "conditions": "stand-in conditions",
                     "command": "python bench/build_default_model.py --which fast --speed-only"}
    (folder / CARD_JSON).write_text(json.dumps(card))
    monkeypatch.setitem(bundled.MODELS, bundled.FAST, folder)
    return folder


@pytest.fixture
def both(fast_bundle) -> dict[str, Path]:
    return {name: bundled.folder(name) for name in NAMES}


def _image(tmp_path: Path) -> Path:
    """A real radiograph of the official test half (in the repository): the shipped gates score it."""
    image = tmp_path / "chest.jpeg"
    shutil.copyfile(REPO / "examples" / "PNEUMONIA" / "person100_bacteria_475.jpeg", image)
    return image


def test_the_table_names_default_and_fast_and_default_stays_the_default():
    assert NAMES == ["default", "fast"] and bundled.NAME == "default"
    assert bundled.folder("default") == bundled.BUNDLED_DIR
    assert bundled.folder("fast") == bundled.BUNDLED_DIR / "fast"
    assert resolve_model().name == resolve_model("default").name == "default"


# Each command that takes a model, with NAME where the model goes, and how its parsed arguments name it.
COMMANDS = {
    "predict": (["predict", "NAME", "chest.png"], lambda a: split_model_and_inputs(a.paths, a.model)[0]),
    "predict --model": (["predict", "--model", "NAME", "chest.png"], lambda a: split_model_and_inputs(a.paths, a.model)[0]),
    "evaluate": (["evaluate", "NAME", "--data", "x"], lambda a: a.models[0]),
    "explain": (["explain", "NAME", "chest.png"], lambda a: split_model_and_inputs(a.images, a.model)[0]),
    "export": (["export", "NAME"], lambda a: a.model),
    "serve": (["serve", "NAME"], lambda a: a.model),
    "dicom listen": (["dicom", "listen", "NAME", "--out", "x"], lambda a: a.model),
    "dicom pull": (["dicom", "pull", "NAME", "--url", "http://127.0.0.1:1/dicom-web", "--study", "1.2.3",
                    "--out", "x"], lambda a: a.model),
    "calibrate": (["calibrate", "NAME", "--data", "x"], lambda a: a.model),
    "fit-scope": (["fit-scope", "NAME", "data"], lambda a: a.model),
    "train --teacher": (["train", "--teacher", "NAME"], lambda a: a.teacher),
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("name", NAMES)
def test_every_command_that_takes_a_model_resolves_both_bundled_names(both, name, command):
    argv, model_of = COMMANDS[command]
    args = build_parser().parse_args([name if a == "NAME" else a for a in argv])
    files = resolve_model(model_of(args))
    assert files.bundled and files.name == name, command
    assert files.path.parent == both[name] and files.weights == both[name] / WEIGHTS_FILE
    assert files.run_folder == Path("runs") / name  # what commands write about it goes there, never the package


@pytest.mark.parametrize("name", NAMES)
def test_predict_load_serve_and_the_dicom_node_score_with_the_named_bundled_model(both, name, tmp_path, capsys):
    from pneumoscan.dicom.processing import Processor
    from pneumoscan.serving.app import load_served

    image = _image(tmp_path)
    model = pneumoscan.load(name, scope_check=False)
    assert model.files.name == name and model.files.path == both[name] / ONNX_FILE
    assert model.backend_name == "onnxruntime"
    expected = model.predict(image)[0].probability
    assert main(["predict", name, str(image), "--no-scope-check", "--out", str(tmp_path / "out.csv")]) == 0
    assert f"the bundled {name} model" in capsys.readouterr().out
    written = (tmp_path / "out.csv").read_text().splitlines()[1].split(",")
    assert float(written[1]) == pytest.approx(expected, abs=1e-6)
    assert load_served(name).files.path == both[name] / ONNX_FILE
    assert Processor(name, tmp_path / "node").classifier.files.name == name


def test_the_two_bundled_models_are_different_models(both):
    assert pneumoscan.load("default").meta != pneumoscan.load("fast").meta


def test_explain_export_and_fit_scope_take_fast_and_write_to_runs_fast(fast_bundle, tmp_path, monkeypatch, capsys):
    from helpers.synthetic import write_synthetic_image

    data = tmp_path / "data"
    for i in range(110):  # fit-scope's least: 50 to fit, 20 to set the thresholds (a fifth held out)
        write_synthetic_image(data / "train" / ("NORMAL", "PNEUMONIA")[i % 2] / f"IM-{i:04d}-0001.png", i % 2, seed=i)
    monkeypatch.chdir(tmp_path)
    before = {f.name: f.read_bytes() for f in fast_bundle.iterdir() if f.is_file()}
    image = _image(tmp_path)
    assert main(["explain", "fast", str(image), "--out", str(tmp_path / "explain")]) == 0
    assert list((tmp_path / "explain").glob("*.png"))
    assert main(["fit-scope", "fast", str(data), "--images", "50", "--held-out", "20"]) == 0
    assert "written to runs/fast" in capsys.readouterr().out
    refitted = pneumoscan.load(tmp_path / "runs" / "fast")
    assert refitted.meta.scope is not None and refitted.meta.name == pneumoscan.load("fast").meta.name
    assert main(["export", "fast"]) == 0
    assert pneumoscan.load(tmp_path / "runs" / "fast" / "export" / ONNX_FILE).meta.scope is not None
    after = {f.name: f.read_bytes() for f in fast_bundle.iterdir() if f.is_file()}
    assert after == before, "a command wrote into the bundled model's folder"


def test_fast_teaches_a_student_by_its_name(both):
    from pneumoscan.training.distill import load_teacher

    teacher = load_teacher("fast")
    assert teacher.record[0]["teacher"] == "fast"
    from pneumoscan.provenance import sha256_file

    # Its weights, named by their place relative to the package (no machine's path in a student's file).
    assert teacher.record[0]["sha256"] == sha256_file(both["fast"] / WEIGHTS_FILE)
    assert not Path(teacher.record[0]["weights"]).is_absolute()
    assert teacher.record[0]["weights"].endswith(f"{both['fast'].name}/{WEIGHTS_FILE}")


def test_a_bundled_model_this_installation_lacks_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(bundled.MODELS, bundled.FAST, tmp_path / "fast")  # as an installation without it
    image = _image(tmp_path)
    with pytest.raises(ModelFileError, match="^the fast model is not in this installation: "):
        pneumoscan.load("fast")
    assert main(["predict", "fast", str(image)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pneumoscan: error: the fast model is not in this installation: ") and "\n" not in err
    assert "bench/build_default_model.py --which fast" in err
    assert main(["models", "--runs", str(tmp_path / "runs")]) == 0
    assert "fast: the fast model is not in this installation" in capsys.readouterr().out
    assert pneumoscan.load().files.name == "default"  # the default is untouched


def test_pneumoscan_models_shows_both_with_their_cards_figures_and_speed(both, tmp_path, capsys):
    assert main(["models", "--runs", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    table = out.split("\n\n")[0].splitlines()
    for name in NAMES:
        card = resolve_model(name).read_card()
        figures = card["metrics"]["evaluation"]["figures"]
        row = next(line for line in table if line.startswith(f"{name} "))
        auc = figures["roc_auc"]
        assert f"{auc['value']:.3f} [{auc['low']:.3f}, {auc['high']:.3f}]" in row, row
        for key in ("sensitivity at the threshold", "specificity at the threshold"):
            assert f"{figures[key]['value']:.3f}" in row, (key, row)
        speed = card.get("speed")
        assert row.split()[-1] == (f"{speed['images_per_second']:,.0f}" if speed else "-"), row
        if speed:
            assert f"measured by `{speed['command']}`" in out
        assert any(line.split()[:2] == [name, "bundled"] for line in out.splitlines())  # and in the runs table


def test_calibrated_versions_of_a_bundled_model_go_to_its_own_runs_folder(both):
    for name in NAMES:
        assert bundled.name_of(both[name] / WEIGHTS_FILE) == name
    assert bundled.name_of(REPO / "README.md") is None


def test_the_package_data_ships_every_bundled_folder():
    """pyproject's package data covers each bundled model's five files, wherever its folder is."""
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["pneumoscan"]
    package = REPO / "src" / "pneumoscan"
    for name, folder in bundled.MODELS.items():
        for file in (ONNX_FILE, WEIGHTS_FILE, META_JSON, CARD_JSON, CARD_MARKDOWN):
            path = (folder / file).relative_to(package).as_posix()
            assert any(fnmatch.fnmatchcase(path, p) and p.count("/") == path.count("/") for p in patterns), (name, path)


def test_git_keeps_every_bundled_models_files():
    """`.gitignore` ignores *.onnx and *.safetensors everywhere but in the bundled folders."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    import subprocess

    package = REPO / "src" / "pneumoscan"
    for folder in bundled.MODELS.values():
        for file in (ONNX_FILE, WEIGHTS_FILE):
            path = (folder / file).relative_to(REPO)
            # check-ignore exits 1 when the path is not ignored
            assert subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=REPO).returncode == 1, path
    assert subprocess.run(["git", "check-ignore", "-q", str((package / "x.onnx").relative_to(REPO))],
                          cwd=REPO).returncode == 0
