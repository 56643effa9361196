"""The corpus of bad inputs through every command: `data inspect|validate|cache`, `train`, `evaluate`,
`predict` and `explain` (the server gets it in test_robust_security.py).

One dataset holds a few good synthetic radiographs and the whole corpus beside them. Each command must
finish (exit 0), name every bad file with its reason (in its output or in the report it writes), and
still process every good file. Broken datasets (an empty class folder, bad manifests) are a one-line
error naming the file, exit code 2. Commands run in-process through ``pneumoscan.cli.main``.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers.corpus import (
    BAD_CASES,
    CASES,
    DATASET_CASES,
    make_dataset,
    run_cli,
    tiny_model,
    write_good_images,
)
from pneumoscan.cli import build_parser

GOOD_PER_CLASS = 6


@dataclass
class World:
    root: Path
    paths: dict[str, Path]
    model: Path

    @property
    def goods(self) -> list[Path]:
        return [p for name, p in self.paths.items() if name.startswith("good:")]

    @property
    def corpus_files(self) -> list[Path]:
        return [self.paths[c.name] for c in CASES]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("cli-corpus")
    paths = make_dataset(root / "data", good_per_class=GOOD_PER_CLASS, size=48)
    return World(root / "data", paths, tiny_model(root / "model", size=32))


def _commands() -> set[str]:
    """Registered commands, e.g. {"train", "data inspect", ...}."""
    parser = build_parser()
    names: set[str] = set()
    for action in parser._subparsers._group_actions:  # argparse keeps sub-parsers here
        for name, sub in action.choices.items():
            names.add(name)
            if sub._subparsers is not None:
                for inner in sub._subparsers._group_actions:
                    names.update(f"{name} {child}" for child in inner.choices)
    return names


def _run(argv: list[str], capsys, caplog=None) -> tuple[int, str]:
    commands = _commands()
    assert " ".join(argv[:2]) in commands or argv[0] in commands, f"`pneumoscan {argv[0]}` is not a command"
    return run_cli(argv, capsys, caplog)


LISTED_BAD_CASES = tuple(c for c in BAD_CASES if c.listed)


def _assert_bad_named(text: str, paths: dict[str, Path], cases=LISTED_BAD_CASES) -> None:
    lines = text.splitlines()
    for case in cases:
        path = str(paths[case.name])
        said = [line for line in lines if path in line]
        assert said, f"{case.name}: {path} is not named"
        assert any(case.says(line) for line in said), f"{case.name}: reason {case.reason!r} missing in {said}"


def _expected_good(world: World) -> set[str]:
    return {os.path.abspath(p) for p in world.goods} | {
        os.path.abspath(world.paths[c.name]) for c in CASES if c.decodable}


# Each command: how to call it on the corpus dataset, and how to read back what it did.
@dataclass
class Entry:
    argv: Callable[[World, Path], list[str]]
    check: Callable[[World, Path, str], None]


def _check_inspect(world: World, out: Path, text: str) -> None:
    summary = json.loads((out / "summary.json").read_text())
    _assert_bad_named("\n".join(f"{u['path']}: {u['reason']}" for u in summary["unreadable"]), world.paths)
    # The terminal shows the count and the first 10 by name; summary.json names them all.
    unreadable = len(summary["unreadable"])  # the corpus, and the symlink loop's partner
    assert unreadable >= len(LISTED_BAD_CASES) and f"unreadable files: {unreadable}" in text
    assert sum(1 for u in summary["unreadable"] if u["path"] in text) == min(10, unreadable)
    assert summary["images"]["count"] == len(_expected_good(world))


def _check_validate(world: World, out: Path, text: str) -> None:
    _assert_bad_named(text, world.paths)
    bad_lines = [line for line in text.splitlines() if line.startswith("BAD")]
    for good in _expected_good(world):
        assert not any(good in line for line in bad_lines), f"a good file is reported bad: {good}"


def _check_cache(world: World, out: Path, text: str) -> None:
    _assert_bad_named(text, world.paths)
    assert f"cache of {len(_expected_good(world))} images" in text


def _check_train(world: World, out: Path, text: str) -> None:
    _assert_bad_named(text, world.paths)
    run = (out / "latest").resolve()
    assert (run / "model.safetensors").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    with open(run / "split.csv", newline="", encoding="utf-8", errors="surrogateescape") as fh:
        used = {os.path.abspath(row["path"]) for row in csv.DictReader(fh)}
    assert used == _expected_good(world), "the good files (odd names included) are not all used"
    provenance = json.loads((run / "provenance.json").read_text())
    assert provenance["skipped_images"]["count"] >= len(LISTED_BAD_CASES)


def _check_evaluate(world: World, out: Path, text: str) -> None:
    report = json.loads((out / "report.json").read_text())
    _assert_bad_named("\n".join(f"{u['path']}: {u['reason']}" for u in report["data"]["unreadable"]), world.paths)
    # Blank images decode but are no radiographs: refused (as predict refuses them), named, not scored.
    refused = {os.path.abspath(item["path"]) for item in report["scope"]["images"]}
    assert refused == {os.path.abspath(world.paths[c.name]) for c in CASES if c.decodable and c.blank}
    assert report["data"]["images"] == len(_expected_good(world) - refused)
    assert "could not be decoded" in text


def _check_predict(world: World, out: Path, text: str) -> None:
    with open(out / "predictions.csv", newline="", encoding="utf-8", errors="surrogateescape") as fh:
        rows = {row["file"]: row for row in csv.DictReader(fh)}
    refused = [c for c in CASES if (not c.decodable or c.blank) and c.listed]
    for case in refused:
        row = rows[str(world.paths[case.name])]
        assert row["probability"] == "" and (case.says(row["error"]) if not case.blank else "blank" in row["error"])
    for case in CASES:
        if case.decodable and not case.blank:
            assert 0.0 <= float(rows[str(world.paths[case.name])]["probability"]) <= 1.0, case.name
    for good in world.goods:
        assert 0.0 <= float(rows[str(good)]["probability"]) <= 1.0
    # The table shows the bad rows too, with their reason (long paths are shortened from the left).
    for case in refused:
        tail = f"{world.paths[case.name].parent.name}/{world.paths[case.name].name}"
        assert any(tail in line and (case.blank or case.says(line)) for line in text.splitlines()), case.name


def _check_explain(world: World, out: Path, text: str) -> None:
    _assert_bad_named(text, world.paths)
    blank = str(world.paths["one_pixel"])
    assert any(blank in line and "blank" in line for line in text.splitlines()), "1x1 image not reported"
    written = {p.name for p in out.glob("*_gradcam.png")}
    for case in CASES:
        if case.decodable and not case.blank:
            stem = Path(os.fsdecode(case.filename) if isinstance(case.filename, bytes) else case.filename).stem
            assert f"{stem}_gradcam.png" in written, f"{case.name}: no heatmap written"


ENTRIES: dict[str, Entry] = {
    "data inspect": Entry(lambda w, out: ["data", "inspect", str(w.root), "--out", str(out), "--workers", "1",
                                          "--no-progress"], _check_inspect),
    "data validate": Entry(lambda w, out: ["data", "validate", str(w.root), "--workers", "1", "--no-progress"],
                           _check_validate),
    "data cache": Entry(lambda w, out: ["data", "cache", str(w.root), "--size", "32", "--folder", str(out),
                                        "--workers", "1", "--no-progress"], _check_cache),
    "train": Entry(lambda w, out: ["train", "--data", str(w.root), "--model", "seed-cnn", "--image-size", "32",
                                   "--epochs", "1", "--batch-size", "8", "--out", str(out), "--no-progress",
                                   # nothing held out as test: every file must reach training's decoder
                                   "--no-augment", "--test-fraction", "0"], _check_train),
    "evaluate": Entry(lambda w, out: ["evaluate", str(w.model), "--data", str(w.root), "--split", "all",
                                      "--bootstrap", "20", "--out", str(out)], _check_evaluate),
    "predict": Entry(lambda w, out: ["predict", str(w.model), str(w.root / "train"), "--out",
                                     str(out / "predictions.csv")], _check_predict),
    # Only the corpus (plus one good file): a heatmap figure costs ~0.5 s each.
    "explain": Entry(lambda w, out: ["explain", str(w.model), *map(str, w.corpus_files), str(w.goods[0]),
                                     "--out", str(out)], _check_explain),
}


@pytest.mark.parametrize("entry", [pytest.param(e, id=e.replace(" ", "-"), marks=[pytest.mark.e2e] if e == "train" else [])
                                   for e in ENTRIES])
@pytest.mark.usefixtures("no_figures")  # the report's and inspect's figures: not what is checked here
def test_every_command_names_each_bad_file_and_processes_the_good_ones(entry: str, world: World, tmp_path,
                                                                         capsys, caplog) -> None:
    out = tmp_path / "out"
    code, text = _run(ENTRIES[entry].argv(world, out), capsys, caplog)
    assert code == 0, text[-3000:]
    assert "Traceback" not in text
    ENTRIES[entry].check(world, out, text)


# Broken datasets: a one-line error naming the file, exit code 2, for every command that lists a dataset.
DATASET_COMMANDS: dict[str, Callable[[Path, Path, Path], list[str]]] = {
    "data inspect": lambda target, model, out: ["data", "inspect", str(target), "--out", str(out), "--no-progress"],
    "data validate": lambda target, model, out: ["data", "validate", str(target), "--no-progress"],
    "data cache": lambda target, model, out: ["data", "cache", str(target), "--size", "32", "--folder", str(out),
                                              "--no-progress"],
    "train": lambda target, model, out: ["train", "--data", str(target), "--model", "seed-cnn", "--image-size", "32",
                                         "--epochs", "1", "--out", str(out), "--no-progress"],
    "evaluate": lambda target, model, out: ["evaluate", str(model), "--data", str(target), "--split", "all",
                                            "--bootstrap", "20", "--out", str(out)],
}


@pytest.mark.parametrize("command", list(DATASET_COMMANDS), ids=lambda e: e.replace(" ", "-"))
@pytest.mark.parametrize("case", list(DATASET_CASES), ids=str)
def test_every_command_refuses_a_broken_dataset_in_one_line_naming_it(command: str, case: str, world: World,
                                                                     tmp_path, capsys) -> None:
    what, make, words = DATASET_CASES[case]
    target = make(tmp_path / "broken")
    code, text = _run(DATASET_COMMANDS[command](target, world.model, tmp_path / "out"), capsys)
    assert code == 2, text[-2000:]
    errors = [line for line in text.splitlines() if line.startswith("pneumoscan: error:")]
    assert len(errors) == 1 and "Traceback" not in text, text[-2000:]
    assert words in errors[0].lower() and (str(target) in errors[0] or target.name in errors[0]), errors[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.safetensors"))


@pytest.mark.parametrize("command", ["predict", "explain"])
def test_predict_and_explain_on_an_empty_folder_say_so_in_one_line(command: str, world: World, tmp_path,
                                                                   capsys) -> None:
    empty = tmp_path / "NORMAL"
    empty.mkdir()
    code, text = _run([command, str(world.model), str(empty), "--out", str(tmp_path / "out.csv" if command ==
                                                                           "predict" else tmp_path / "out")], capsys)
    assert code == 2 and "Traceback" not in text
    errors = [line for line in text.splitlines() if line.startswith("pneumoscan: error:")]
    assert len(errors) == 1 and str(empty) in errors[0], text


def test_a_bad_file_named_directly_on_the_command_line_does_not_stop_the_others(world: World, tmp_path,
                                                                                 capsys) -> None:
    files = [world.paths["truncated_jpeg"], world.goods[0], world.paths["zero_byte"], world.goods[-1]]
    code, text = _run(["predict", str(world.model), *map(str, files), "--out", str(tmp_path / "p.json")], capsys)
    assert code == 0
    rows = json.loads((tmp_path / "p.json").read_text())
    rows = rows["predictions"] if isinstance(rows, dict) else rows
    assert [r["probability"] is not None for r in rows] == [False, True, False, True]



def test_validate_strict_fails_on_a_manifest_row_whose_file_does_not_exist(tmp_path, capsys) -> None:
    images = write_good_images(tmp_path / "images", 0, 2) + write_good_images(tmp_path / "images", 1, 2, start=2)
    gone = tmp_path / "images" / "deleted-since.png"
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,label\n" + "".join(f"{p},{i % 2}\n" for i, p in enumerate([*images, gone])))
    code, text = _run(["data", "validate", str(manifest), "--strict", "--workers", "1", "--no-progress"], capsys)
    assert code == 1, text
    assert any(line.startswith("BAD") and str(gone) in line and "does not exist" in line
               for line in text.splitlines()), text
    code, _ = _run(["data", "validate", str(manifest), "--workers", "1", "--no-progress"], capsys)
    assert code == 0  # without --strict the report is the same but the exit code says "checked"


def test_predict_says_when_a_pattern_matches_no_file(world: World, tmp_path, capsys) -> None:
    pattern = str(tmp_path / "nothing-*.png")
    code, text = _run(["predict", str(world.model), pattern, str(world.goods[0]), "--out",
                       str(tmp_path / "p.csv")], capsys)
    assert code == 0, text
    with open(tmp_path / "p.csv", newline="") as fh:
        rows = {row["file"]: row for row in csv.DictReader(fh)}
    assert "no files match" in rows[pattern]["error"], rows[pattern]


def test_explain_on_only_bad_files_says_nothing_was_written(world: World, tmp_path, capsys) -> None:
    out = tmp_path / "heatmaps"
    files = [world.paths["truncated_jpeg"], world.paths["fifo"], world.paths["dicom_deflate_bomb"]]
    code, text = _run(["explain", str(world.model), *map(str, files), "--out", str(out)], capsys)
    assert code == 1 and "Traceback" not in text, text
    assert "nothing written" in text and f"written to {out}" not in text, text
    assert not out.exists() or not any(out.iterdir())
