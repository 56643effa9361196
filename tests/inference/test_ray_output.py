"""Where `predict --out X.parquet` writes, for both engines: a folder pneumoscan's results did not make is
refused, with the same message, before any work and before Ray starts; staging left by a killed run is
recognised and removed; a full disk is one line naming the file once. No Ray cluster is started here
(the end-to-end Ray tests are in test_predict_ray.py)."""

from __future__ import annotations

import errno
import socket
import subprocess
import sys

import pytest

pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed: pip install -e '.[dev]'")

from helpers.synthetic import write_synthetic_image  # noqa: E402
from pneumoscan.cli import main  # noqa: E402
from pneumoscan.errors import OutputError  # noqa: E402
from pneumoscan.inference.results import ResultsWriter  # noqa: E402


def _error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("pneumoscan: error:")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def image(tmp_path):
    return write_synthetic_image(tmp_path / "images" / "a.png", 1, seed=0)


def _user_folders(tmp_path):
    """Folders named like a results folder, holding what a user keeps there (never ours to delete)."""
    import pyarrow as pa

    plain = tmp_path / "mine.parquet"
    plain.mkdir()
    (plain / "thesis.txt").write_text("four years of work")
    hidden = tmp_path / "hidden.parquet"
    hidden.mkdir()
    (hidden / ".thesis.txt").write_text("four years of work")
    other = tmp_path / "dataset.parquet"
    other.mkdir()
    pq.write_table(pa.table({"patient": ["p1"], "weight": [71.5]}), other / "part-000001.parquet")
    return [plain, hidden, other]


def test_both_engines_refuse_a_folder_they_did_not_make_with_the_same_message_and_change_nothing(
    image, tmp_path, capsys
):
    pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[dev]'")
    for folder in _user_folders(tmp_path):
        before = {p.name: p.read_bytes() for p in folder.iterdir()}
        messages = []
        for engine in ("local", "ray"):
            code = main(["predict", str(image), "--engine", engine, "--out", str(folder)])
            assert code == 2
            messages.append(_error_line(capsys))
            assert {p.name: p.read_bytes() for p in folder.iterdir()} == before, engine
        assert messages[0] == messages[1] and str(folder) in messages[0] and "did not make" in messages[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset.parquet", "hidden.parquet", "images",
                                                          "mine.parquet"]  # no staging folder left


def test_a_killed_runs_staging_folder_is_removed_by_the_next_run_and_a_live_ones_kept(tmp_path):
    from pneumoscan._io import make_staging_folder

    out = tmp_path / "results.parquet"
    host = socket.gethostname().replace(".", "-")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    stale = tmp_path / f".results.parquet.{host}-{dead}.abcd1234.tmp"
    stale.mkdir()
    (stale / "0_000000_000000.parquet").write_bytes(b"part of a killed run")
    live = make_staging_folder(out)  # this process's own: alive

    staging = make_staging_folder(out)

    assert not stale.exists() and live.is_dir() and staging.is_dir() and staging != live
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, staging.name])


def test_a_full_disk_under_parquet_results_names_the_file_once(tmp_path, monkeypatch):
    out = tmp_path / "results.parquet"
    writer = ResultsWriter(out)

    def full(*args, **kwargs):  # mock: a full disk cannot be made here without privileges
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "write_table", full)
    with pytest.raises(OutputError) as info:
        writer.append([{"file": "a.png", "probability": 0.5}])

    message = str(info.value)
    assert "no space left on the device" in message and message.count("results.parquet") == 1, message
