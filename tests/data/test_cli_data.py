"""`pneumoscan data ...`: each command prints its result; bad input is one line on stderr and exit code 2."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.images import save
from pneumoscan.cli import main
from pneumoscan.data import load_dataset


@pytest.mark.parametrize("command", ["inspect", "validate", "split", "cache", "download"])
def test_every_data_command_help_ends_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as info:
        main(["data", command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out.rstrip()
    assert "example:" in out and out.splitlines()[-1].strip().startswith(f"pneumoscan data {command}")


def test_data_without_a_command_prints_its_help_and_exits_2(capsys):
    assert main(["data"]) == 2
    assert "inspect" in capsys.readouterr().out


def test_inspect_prints_the_table_and_writes_the_report(synthetic_dataset, tmp_path, capsys):
    assert main(["data", "inspect", str(synthetic_dataset), "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "leakage check:" in out and "summary.json" in out
    assert {p.name for p in (tmp_path / "r").iterdir()} == {"summary.json", "class_balance.png", "samples.png"}


def test_validate_strict_exits_1_when_a_file_is_bad_and_0_without_strict(synthetic_dataset, capsys):
    (synthetic_dataset / "train" / "NORMAL" / "IM-0077-0001.png").write_bytes(b"")
    assert main(["data", "validate", str(synthetic_dataset), "--no-progress"]) == 0
    assert main(["data", "validate", str(synthetic_dataset), "--strict", "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "BAD  " in out and "IM-0077-0001.png: empty file" in out and "41 files checked, 1 bad" in out


def test_split_writes_a_manifest_every_command_accepts(synthetic_dataset, tmp_path, capsys):
    manifest = tmp_path / "split.csv"
    assert main(["data", "split", str(synthetic_dataset), "--val-fraction", "0.2", "--seed", "3",
                 "--out", str(manifest)]) == 0
    assert "val" in capsys.readouterr().out
    # The same default as `train`: a test split is held out when the source has none.
    assert {s.split for s in load_dataset(manifest).samples} == {"train", "val", "test"}
    assert main(["data", "validate", str(manifest), "--strict", "--no-progress"]) == 0
    assert main(["data", "split", str(synthetic_dataset), "--test-fraction", "0", "--out", str(manifest)]) == 0
    assert {s.split for s in load_dataset(manifest).samples} == {"train", "val"}


def test_cache_builds_then_reuses(synthetic_dataset, tmp_path, capsys):
    args = ["data", "cache", str(synthetic_dataset), "--size", "32", "--folder", str(tmp_path), "--no-progress"]
    assert main(args) == 0 and "built cache of 40 images at 32px" in capsys.readouterr().out
    assert main(args) == 0 and "reused cache of 40 images" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: (p / "photos").mkdir() or p, "no class folders"),
        (lambda p: _csv(p, "file,label\nx.png,0\n"), "missing column(s) path"),
        (lambda p: _csv(p, "path,label\nx.png,maybe\n"), "unknown label 'maybe'"),
        (lambda p: p / "absent", "no such file or folder"),
    ],
    ids=["no-class-folders", "csv-missing-column", "unknown-label", "missing-root"],
)
@pytest.mark.parametrize("command", ["inspect", "validate", "split", "cache"])
def test_bad_dataset_is_one_line_on_stderr_and_exit_2(tmp_path, capsys, make, message, command):
    root = make(tmp_path)
    extra = {"inspect": ["--out", str(tmp_path / "r")], "split": ["--out", str(tmp_path / "s.csv")],
             "cache": ["--folder", str(tmp_path / "c")]}.get(command, [])
    assert main(["data", command, str(root), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pneumoscan: error: ") and err.count("\n") == 1 and message in err


def _csv(folder, text: str):
    save(folder / "x.png", np.zeros((8, 8), np.uint8))
    (folder / "m.csv").write_text(text)
    return folder / "m.csv"


@pytest.mark.parametrize("command", ["inspect", "validate", "cache"])
def test_no_progress_bar_when_stderr_is_not_a_terminal(command, synthetic_dataset, tmp_path, capsys, no_figures):
    extra = {"inspect": ["--out", str(tmp_path / "r")], "cache": ["--folder", str(tmp_path / "c")]}.get(command, [])
    assert main(["data", command, str(synthetic_dataset), "--workers", "1", *extra]) == 0
    err = capsys.readouterr().err
    assert "img/s" not in err and "\r" not in err and "%|" not in err, err
