import os

import pytest

from pneumoscan._io import atomic_write, atomic_write_text


def test_a_write_that_fails_midway_leaves_the_old_file_whole_and_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")

    def torn_write(tmp):
        tmp.write_text("half of the new")
        raise KeyboardInterrupt  # a kill at the worst moment

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, torn_write)
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["report.json"]


def test_atomic_write_replaces_an_existing_file_and_creates_missing_folders(tmp_path):
    atomic_write_text(tmp_path / "a" / "b.txt", "old")
    atomic_write_text(tmp_path / "a" / "b.txt", "new")
    assert (tmp_path / "a" / "b.txt").read_text() == "new"
    assert os.listdir(tmp_path / "a") == ["b.txt"]


def test_atomically_written_files_get_the_usual_permissions_not_owner_only(tmp_path):
    mask = os.umask(0o022)
    os.umask(mask)
    written = atomic_write_text(tmp_path / "model.json", "{}")
    assert written.stat().st_mode & 0o777 == 0o666 & ~mask
