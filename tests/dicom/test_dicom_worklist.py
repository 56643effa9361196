"""The DICOM worklist: appended one line per instance, its cost flat however long the list, crash-safe,
and one line per instance whatever a sender puts in its identifiers."""

from __future__ import annotations

import csv
import json
import os
import random

from pneumoscan.dicom.instances import Identifiers
from pneumoscan.dicom.processing import Outcome
from pneumoscan.dicom.worklist import WORKLIST_COLUMNS, Worklist


def _outcome(n: int, sop_uid: str | None = None, patient_id: str = "PAT-1") -> Outcome:
    ids = Identifiers(patient_id, f"ACC-{n}", "1.2.3", "1.2.3.4", sop_uid or f"1.2.3.4.{n}", "1.2.840.10008.5.1.4.1.1.1")
    if n % 5 == 0:
        return Outcome(ids, "PACS@10.0.0.5", "2026-12-07T10:00:00+0000", reason="out of scope: a lateral view")
    return Outcome(ids, "PACS@10.0.0.5", "2026-12-07T10:00:00+0000", probability=random.Random(n).random(),
                   label="PNEUMONIA", threshold=0.5, sr_file=f"out/sr/1.2.3.4.{n}.dcm", model="seed-cnn",
                   version="1.0")


def _written_bytes() -> int:
    """Bytes this process has passed to write() so far (Linux's /proc/self/io)."""
    with open("/proc/self/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("wchar:"))


def _rows(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_adding_an_instance_writes_one_line_however_long_the_worklist(tmp_path):
    worklist = Worklist(tmp_path)
    inode = os.stat(tmp_path / "worklist.csv").st_ino
    for n in range(1500):
        worklist.add(_outcome(n))
    # 100 more instances on a list of 1,500: what is written is those 100 lines, not the list again
    # (rewriting it after each one wrote about 100 x 1,500 rows of CSV and JSON).
    size, before = os.stat(tmp_path / "worklist.csv").st_size, _written_bytes()
    for n in range(1500, 1600):
        worklist.add(_outcome(n))
    appended = os.stat(tmp_path / "worklist.csv").st_size - size
    assert _written_bytes() - before < 2 * appended < 100 * 1024
    assert os.stat(tmp_path / "worklist.csv").st_ino == inode  # appended to, never replaced
    assert not (tmp_path / "worklist.json").exists()
    assert len(_rows(tmp_path / "worklist.csv")) == 1600

    worklist.finish()
    rows = _rows(tmp_path / "worklist.csv")
    scored = [float(r["probability"]) for r in rows if r["status"] == "scored"]
    assert len(rows) == 1600 and scored == sorted(scored, reverse=True) and len(scored) == 1280
    assert len(json.loads((tmp_path / "worklist.json").read_text())["results"]) == 1600


def test_a_torn_last_line_from_a_crash_is_dropped_and_the_other_rows_kept(tmp_path):
    worklist = Worklist(tmp_path)
    for n in range(1, 4):
        worklist.add(_outcome(n))
    del worklist
    with open(tmp_path / "worklist.csv", "ab") as fh:
        fh.write(b"0.9,PNEUMONIA,0.5,,PAT-9,ACC")  # a kill in the middle of a write
    again = Worklist(tmp_path)
    again.add(_outcome(4))
    again.add(_outcome(2))  # received again: its row replaces the first one at the end of the session
    again.finish()
    rows = _rows(tmp_path / "worklist.csv")
    assert sorted(r["accession_number"] for r in rows) == ["ACC-1", "ACC-2", "ACC-3", "ACC-4"]
    assert list(rows[0]) == list(WORKLIST_COLUMNS)


def test_a_nul_or_a_newline_from_a_sender_never_reaches_the_worklist_as_such(tmp_path):
    worklist = Worklist(tmp_path)
    worklist.add(_outcome(1, sop_uid="1.2.3\x00.4", patient_id="PAT\nFORGED,ROW"))
    worklist.add(_outcome(2))
    data = (tmp_path / "worklist.csv").read_bytes()
    assert b"\x00" not in data and data.count(b"\n") == 3  # the header and one line per instance
    row = _rows(tmp_path / "worklist.csv")[0]
    assert row["sop_instance_uid"] == "'1.2.3\\x00.4'" and row["patient_id"] == "'PAT\\nFORGED,ROW'"
    worklist.finish()
    data = (tmp_path / "worklist.csv").read_bytes() + (tmp_path / "worklist.json").read_bytes()
    assert b"\x00" not in data and b"\\u0000" not in data


def test_a_worklist_linked_elsewhere_is_never_written_through(tmp_path):
    target = tmp_path / "elsewhere.csv"
    target.write_text("keep\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "worklist.csv").symlink_to(target)
    Worklist(tmp_path / "out").add(_outcome(1))
    assert target.read_text() == "keep\n"
    # The link is replaced by a file of its own, as every write of the project replaces a link.
    assert not (tmp_path / "out" / "worklist.csv").is_symlink()
    assert [r["accession_number"] for r in _rows(tmp_path / "out" / "worklist.csv")] == ["ACC-1"]
