"""Streamed `predict --out`: results appended batch by batch, resumable after kill -9, DICOM identifiers,
manifests and the triage worklist."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import pneumoscan
from helpers.images import write_dicom
from pneumoscan.cli import main
from pneumoscan.data.dicom_ids import read_dicom_identifiers
from pneumoscan.inference.results import COLUMNS, read_results
from pneumoscan.inference.stream import iter_sources, predict_to_file

SRC = Path(pneumoscan.__file__).resolve().parents[1]
SIZE = 32

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage


def _write_png(path: Path, seed: int) -> Path:
    from PIL import Image

    from helpers.synthetic import write_synthetic_image

    path.parent.mkdir(parents=True, exist_ok=True)
    write_synthetic_image(path, seed % 2, seed=seed, size=48)
    assert Image.open(path).size == (48, 48)
    return path


def _dicom(path: Path, seed: int, patient: str, accession: str, sop_uid: str | None = None) -> Path:
    from pydicom.uid import generate_uid

    values = np.random.default_rng(seed).integers(200, 3800, (48, 48))
    return write_dicom(path, values, bits_stored=12, patient_id=patient, sop_class=CR_STORAGE, sop_uid=sop_uid,
                       accession=accession, study_uid=generate_uid())


@pytest.fixture(scope="module")
def model_dir(exported_run) -> Path:
    """A run folder with an export: `predict RUN` scores it on ONNX Runtime, as :func:`onnx` does here."""
    return exported_run


def onnx(run: Path):
    return pneumoscan.load(run / "export" / "model.onnx")


@pytest.fixture(scope="module")
def many_inputs(tmp_path_factory) -> tuple[Path, list[str]]:
    """400 inputs in a folder: 20 distinct PNGs, each also under 19 other names (symlinks), and one bad file."""
    folder = tmp_path_factory.mktemp("many")
    originals = [_write_png(folder / "src" / f"img{i:02d}.png", i) for i in range(20)]
    for copy in range(19):
        for original in originals:
            link = folder / f"copy{copy:02d}" / original.name
            link.parent.mkdir(exist_ok=True)
            link.symlink_to(original)
    (folder / "copy00" / "zz-cut.png").write_bytes(originals[0].read_bytes()[:50])
    files = list(iter_sources([folder]))
    assert len(files) == 401
    return folder, files


@pytest.fixture(scope="module")
def uninterrupted(model_dir, many_inputs) -> dict[str, float | None]:
    """Each input's probability from one uninterrupted run."""
    return {r.source: r.probability for r in onnx(model_dir).predict(many_inputs[1])}


def _rows(out: Path) -> list[dict]:
    return list(read_results(out))


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_streamed_results_equal_classifier_predict_row_for_row(model_dir, tmp_path, suffix):
    images = [_write_png(tmp_path / "in" / f"x{i}.png", i) for i in range(70)]
    (tmp_path / "in" / "notes.png").write_text("not an image")
    out = tmp_path / f"results{suffix}"

    summary = predict_to_file(onnx(model_dir), [tmp_path / "in"], out, batch_size=16, workers=2)

    expected = {r.source: r for r in onnx(model_dir).predict(sorted(iter_sources([tmp_path / "in"])))}
    rows = _rows(out)
    assert (summary.seen, summary.scored, summary.failed) == (71, 70, 1)
    assert sorted(r["file"] for r in rows) == sorted(expected)
    for row in rows:
        assert set(row) == set(COLUMNS)
        want = expected[row["file"]]
        if want.error:
            assert row["probability"] is None and "notes.png" in row["error"] and row["label"] is None
        else:
            assert row["probability"] == pytest.approx(want.probability, abs=1e-6)
            assert (row["label"], row["threshold"], row["error"]) == (want.label, 0.5, None)
            assert row["size"] == os.stat(row["file"]).st_size
    assert len(images) == 70


def test_dicom_rows_carry_patient_accession_study_and_sop_instance_uid(model_dir, tmp_path):
    dcm = _dicom(tmp_path / "ward" / "IM0001", 1, patient="PAT-7", accession="ACC-42")
    _write_png(tmp_path / "ward" / "plain.png", 2)
    out = tmp_path / "results.csv"

    predict_to_file(onnx(model_dir), [tmp_path / "ward"], out)

    import pydicom

    header = pydicom.dcmread(dcm, stop_before_pixels=True)
    by_name = {Path(r["file"]).name: r for r in _rows(out)}
    assert by_name["IM0001"]["error"] is None  # an extension-less DICOM, found and scored
    assert {k: by_name["IM0001"][k] for k in ("patient_id", "accession_number", "study_instance_uid", "sop_instance_uid")} == {
        "patient_id": "PAT-7", "accession_number": "ACC-42", "study_instance_uid": header.StudyInstanceUID,
        "sop_instance_uid": header.SOPInstanceUID}
    assert by_name["plain.png"]["patient_id"] is None and by_name["plain.png"]["sop_instance_uid"] is None
    assert read_dicom_identifiers(dcm.read_bytes()) == read_dicom_identifiers(dcm)  # bytes (uploads) too


def _run_killed(argv: list[str], out: Path, min_rows: int) -> int:
    """Start `pneumoscan predict` in a child process and SIGKILL it once ``out`` holds ``min_rows`` rows.

    The child writes every 24 rows (not every 256 or 8,192) so that the kill lands between writes."""
    setup = "import pneumoscan.inference.stream as s; s.WRITE_ROWS = s.PARQUET_ROWS = 24; "
    code = f"import sys; {setup}from pneumoscan.cli import main; sys.exit(main({argv!r}))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        try:
            if out.exists() and _count_rows(out) >= min_rows:
                break
        except Exception:  # noqa: BLE001 - a file caught mid-write; poll again
            pass
        time.sleep(0.005)
    assert child.poll() is None, f"the run ended before it could be killed: {child.stderr.read().decode()[-500:]}"
    workers = _children(child.pid)
    assert workers, "the run had no decoding workers to orphan"
    child.send_signal(signal.SIGKILL)
    child.wait()
    _wait_gone(workers)  # a killed run's decoding workers exit with it
    return _count_rows(out)


def _children(pid: int) -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process(pid).children(recursive=True)]


def _wait_gone(pids: list[int], timeout: float = 10.0) -> None:
    import psutil

    _, alive = psutil.wait_procs([psutil.Process(p) for p in pids if psutil.pid_exists(p)], timeout=timeout)
    assert not alive, f"decoding workers outlived the killed run: {[p.pid for p in alive]}"


def _count_rows(out: Path) -> int:
    if out.suffix == ".parquet":
        return sum(1 for _ in read_results(out)) if out.is_dir() else 0
    with open(out, "rb") as fh:
        return max(0, fh.read().count(b"\n") - (out.suffix == ".csv"))


@pytest.mark.e2e  # runs `pneumoscan predict` in its own process and kills it
@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_kill_9_mid_run_then_resume_scores_every_input_exactly_once(model_dir, many_inputs, uninterrupted, tmp_path,
                                                                    suffix):
    folder, files = many_inputs
    out = tmp_path / f"results{suffix}"
    argv = ["predict", str(model_dir), str(folder), "--out", str(out), "--batch-size", "8", "--workers", "2"]

    before = _run_killed(argv, out, min_rows=40)
    assert 0 < before < len(files)  # the kill landed mid-run
    assert main([*argv, "--resume"]) == 0

    rows = _rows(out)
    counts = Counter(r["file"] for r in rows)
    assert set(counts) == set(files) and max(counts.values()) == 1  # every input, exactly once
    expected = uninterrupted
    got = {r["file"]: r["probability"] for r in rows}
    assert got.keys() == expected.keys()
    assert all((got[f] is None) == (expected[f] is None) for f in files)
    np.testing.assert_allclose([got[f] for f in files if got[f] is not None],
                               [expected[f] for f in files if expected[f] is not None], atol=1e-6)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_resume_cuts_a_torn_last_line_and_scores_that_input_again(model_dir, tmp_path, suffix):
    files = [_write_png(tmp_path / "in" / f"x{i}.png", i) for i in range(12)]
    out = tmp_path / f"results{suffix}"
    predict_to_file(onnx(model_dir), [tmp_path / "in"], out, batch_size=4)
    data = out.read_bytes()
    out.write_bytes(data[: len(data) - 25])  # what a kill inside the last write leaves

    summary = predict_to_file(onnx(model_dir), [tmp_path / "in"], out, resume=True, batch_size=4)

    assert (summary.existing, summary.skipped, summary.scored) == (11, 11, 1)
    assert sorted(r["file"] for r in _rows(out)) == sorted(map(str, files))


def test_resume_skips_a_dicom_already_scored_under_another_name(model_dir, tmp_path):
    _dicom(tmp_path / "a" / "first.dcm", 1, patient="P1", accession="A1", sop_uid="1.2.3.4.5")
    out = tmp_path / "results.jsonl"
    predict_to_file(onnx(model_dir), [tmp_path / "a"], out)
    (tmp_path / "a" / "first.dcm").rename(tmp_path / "a" / "renamed.dcm")  # same instance, moved
    _dicom(tmp_path / "a" / "second.dcm", 2, patient="P2", accession="A2")

    summary = predict_to_file(onnx(model_dir), [tmp_path / "a"], out, resume=True)

    assert (summary.skipped, summary.scored) == (1, 1)
    assert sorted(Path(r["file"]).name for r in _rows(out)) == ["first.dcm", "second.dcm"]


def test_manifests_list_the_inputs_by_their_path_column(model_dir, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    files = [_write_png(tmp_path / "imgs" / f"x{i}.png", i) for i in range(4)]
    (tmp_path / "list.csv").write_text("path,label\n" + "".join(f"imgs/x{i}.png,0\n" for i in range(3)))
    pq.write_table(pa.table({"path": [str(files[3])]}), tmp_path / "more.parquet")

    assert list(iter_sources([tmp_path / "list.csv", tmp_path / "more.parquet"])) == [str(f) for f in files]
    (tmp_path / "bad.csv").write_text("file\nimgs/x0.png\n")
    from pneumoscan.errors import ConfigError

    with pytest.raises(ConfigError, match=r"bad\.csv: no 'path' column"):
        list(iter_sources([tmp_path / "bad.csv"]))


def test_predict_with_out_prints_a_summary_and_writes_a_worklist_sorted_by_probability(model_dir, tmp_path, capsys):
    for i in range(8):
        _write_png(tmp_path / "in" / f"x{i}.png", i)
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n")
    _dicom(tmp_path / "in" / "study.dcm", 3, patient="PAT-1", accession="ACC-1")
    out, worklist = tmp_path / "results.csv", tmp_path / "worklist.csv"

    code = main(["predict", str(model_dir), str(tmp_path / "in"), "--out", str(out), "--worklist", str(worklist)])

    printed = capsys.readouterr().out
    assert code == 0
    assert "x0.png" not in printed and "scored 9 of 10 files" in printed  # the summary only, no table
    lines = worklist.read_text().splitlines()
    assert lines[0].startswith("# ") and "NOT a medical device" in lines[0]
    table = list(csv.DictReader(lines[1:]))
    assert [r["file"] for r in table][-1].endswith("broken.png") and table[-1]["error"]  # unscored rows last
    scored = table[:-1]
    probs = [float(r["probability"]) for r in scored]
    assert probs == sorted(probs, reverse=True) and [r["rank"] for r in scored] == [str(i) for i in range(1, 10)]
    for row, p in zip(scored, probs, strict=True):
        assert row["at_youden"] == ("yes" if p >= 0.5 else "no")
        assert row["at_sens95"] == ("yes" if p >= 0.2 else "no") and row["at_spec95"] == ("yes" if p >= 0.8 else "no")
    study = next(r for r in table if r["file"].endswith("study.dcm"))
    assert (study["patient_id"], study["accession_number"]) == ("PAT-1", "ACC-1") and study["sop_instance_uid"]


def test_streamed_options_are_checked_before_any_work(model_dir, tmp_path, capsys):
    image = _write_png(tmp_path / "x.png", 0)
    assert main(["predict", str(model_dir), str(image), "--resume"]) == 2
    assert main(["predict", str(model_dir), str(image), "--out", str(tmp_path / "r.json"), "--resume"]) == 2
    assert main(["predict", str(model_dir), str(image), "--out", str(tmp_path / "r.txt")]) == 2
    (tmp_path / "old.csv").write_text("a,b\n1,2")
    assert main(["predict", str(model_dir), str(image), "--out", str(tmp_path / "old.csv"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--resume needs --out" in err and "r.txt" in err and "old.csv: not a results file" in err
    assert (tmp_path / "old.csv").read_text() == "a,b\n1,2"  # a file that is not ours is never touched


def test_a_fifo_named_dcm_is_refused_on_its_row_without_waiting_for_a_writer(model_dir, tmp_path, capsys):
    import threading

    folder = tmp_path / "in"
    _write_png(folder / "good.png", 1)
    fifo = folder / "scan.dcm"
    os.mkfifo(fifo)
    out = tmp_path / "p.csv"
    codes: list[int] = []
    worker = threading.Thread(target=lambda: codes.append(main(["predict", str(model_dir), str(folder),
                                                                  "--out", str(out), "--workers", "1"])),
                              daemon=True)
    worker.start()
    worker.join(60)
    if worker.is_alive():  # let the blocked open() return so the thread can end
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(10)
        pytest.fail("predict --out waited on a FIFO named .dcm")
    assert codes == [0], capsys.readouterr()
    rows = {Path(r["file"]).name: r for r in csv.DictReader(out.open(newline=""))}
    assert "not a regular file" in rows["scan.dcm"]["error"] and not rows["good.png"]["error"]
    assert read_dicom_identifiers(fifo) == dict.fromkeys(read_dicom_identifiers(fifo))


@pytest.mark.parametrize("workers", [1, 2])
def test_a_manifest_listing_a_file_twice_gets_one_row_per_manifest_row(model_dir, tmp_path, workers, capsys):
    for i in range(3):
        _write_png(tmp_path / "imgs" / f"x{i}.png", i)
    rows = [f"imgs/x{i}.png" for i in (0, 1, 0, 2, 0)] * 30  # repeats inside one batch and across batches
    (tmp_path / "list.csv").write_text("path\n" + "".join(f"{p}\n" for p in rows))
    out = tmp_path / "p.csv"
    code = main(["predict", str(model_dir), str(tmp_path / "list.csv"), "--out", str(out), "--workers", str(workers)])
    assert code == 0, capsys.readouterr()
    got = list(csv.DictReader(out.open(newline="")))
    assert Counter(Path(r["file"]).name for r in got) == Counter(Path(p).name for p in rows)
    assert all(not r["error"] for r in got)
    by_name: dict[str, set[str]] = {}
    for r in got:
        by_name.setdefault(Path(r["file"]).name, set()).add(r["probability"])
    assert all(len(p) == 1 for p in by_name.values()), by_name


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_streamed_out_never_follows_a_symlink_to_truncate_its_target(model_dir, tmp_path, suffix, capsys):
    image = _write_png(tmp_path / "in" / "a.png", 1)
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    link = tmp_path / f"p{suffix}"
    link.symlink_to(precious)
    assert main(["predict", str(model_dir), str(image), "--out", str(link)]) == 0, capsys.readouterr()
    assert precious.read_text() == "keep me\n"
    assert not link.is_symlink() and [r["file"] for r in read_results(link)] == [str(image)]
    # Resuming appends to the file in place: through a link it is refused, before anything is read or cut.
    link.unlink()
    link.symlink_to(precious)
    assert main(["predict", str(model_dir), str(image), "--out", str(link), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "symbolic link" in err and str(link) in err and "Traceback" not in err, err
    assert precious.read_text() == "keep me\n"
    dev_full = tmp_path / f"full{suffix}"
    dev_full.symlink_to("/dev/full")
    assert main(["predict", str(model_dir), str(image), "--out", str(dev_full)]) == 0
    assert Path("/dev/full").is_char_device() and not dev_full.is_symlink()


def test_a_write_error_while_streaming_is_one_line(model_dir, tmp_path, capsys):
    """The file system refuses the rows (here a file-size limit; ENOSPC takes the same path)."""
    import resource

    images = [_write_png(tmp_path / "in" / f"{i}.png", i) for i in range(3)]
    out = tmp_path / "p.jsonl"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100, hard))
    try:
        code = main(["predict", str(model_dir), *map(str, images), "--out", str(out), "--workers", "1"])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("pneumoscan: error:")]
    assert len(lines) == 1 and str(out) in lines[0] and "cannot write" in lines[0], err
