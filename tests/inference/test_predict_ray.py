"""`predict --engine ray`: a local Ray (2 CPUs) gives the single-machine results, bad files as rows, and
survives a worker killed mid-run. Needs Ray Data (the dev extra, or the ray extra for users)."""

from __future__ import annotations

import logging
import os
import signal
from collections import Counter
from pathlib import Path

import pytest

# Ray itself is imported by the fixture that starts it: importing it costs every test process a second,
# also where the inner loop (-m "not e2e") runs none of these tests.
pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed: pip install -e '.[dev]'")

import pneumoscan  # noqa: E402
from helpers.corpus import BAD_CASES, make_corpus  # noqa: E402
from pneumoscan.cli import main  # noqa: E402
from pneumoscan.inference.ray_engine import decode_batch, predict_ray  # noqa: E402
from pneumoscan.inference.results import read_results  # noqa: E402
from pneumoscan.inference.stream import iter_sources, predict_to_file  # noqa: E402

pytestmark = pytest.mark.e2e  # starts a Ray cluster and scores hundreds of real images

SHARED_IMAGES = 300


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (starting one takes seconds): 2 CPUs, on 127.0.0.1 only."""
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[dev]'")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(request, tmp_path_factory) -> Path:
    """A folder of 300 shared training radiographs (symlinks; synthetic images where the data is absent)
    and every file of the bad-input corpus."""
    folder = tmp_path_factory.mktemp("ray-inputs")
    try:
        shared = request.getfixturevalue("shared_data")
        files = sorted((shared / "chest_xray" / "train").glob("*/*.jpeg"))
        for path in files[:: len(files) // SHARED_IMAGES][:SHARED_IMAGES]:
            (folder / "images" / path.parent.name).mkdir(parents=True, exist_ok=True)
            (folder / "images" / path.parent.name / path.name).symlink_to(path)
    except pytest.skip.Exception:
        from helpers.synthetic import write_synthetic_image

        for i in range(SHARED_IMAGES):
            write_synthetic_image(folder / "images" / f"synthetic-{i:03d}.png", i % 2, seed=i, size=64)
    make_corpus(folder / "corpus")
    return folder


@pytest.fixture(scope="module")
def local_out(exported_run, inputs, tmp_path_factory) -> Path:
    """The single-machine results of the same inputs and model."""
    out = tmp_path_factory.mktemp("local") / "results.parquet"
    predict_to_file(pneumoscan.load(exported_run / "export" / "model.onnx"), [inputs], out, workers=1)
    return out


@pytest.fixture(scope="module")
def local_rows(local_out) -> dict[str, dict]:
    return _by_file(local_out)


def _by_file(out: Path) -> dict[str, dict]:
    rows = list(read_results(out))
    counts = Counter(row["file"] for row in rows)
    assert max(counts.values()) == 1, [f for f, n in counts.items() if n > 1][:3]  # every input at most once
    return {row["file"]: row for row in rows}


def test_ray_results_equal_the_single_machine_results_with_bad_files_as_rows(
    local_ray, exported_run, inputs, local_out, local_rows, tmp_path, capsys
):
    out = tmp_path / "ray.parquet"

    code = main(["predict", str(exported_run), str(inputs), "--engine", "ray", "--out", str(out)])

    assert code == 0 and "on Ray (1 node(s), 2 CPUs)" in capsys.readouterr().out
    assert pq.read_schema(next(out.glob("*.parquet"))).equals(pq.read_schema(next(local_out.glob("*.parquet"))),
                                                              check_metadata=False)
    ray_rows = _by_file(out)
    assert ray_rows.keys() == local_rows.keys() and len(ray_rows) >= SHARED_IMAGES + len(BAD_CASES)
    for file, local in local_rows.items():
        row = ray_rows[file]
        if local["error"]:
            assert row["error"] == local["error"] and row["probability"] is None
        else:
            assert row["error"] is None and row["probability"] == pytest.approx(local["probability"], abs=1e-5)
            assert (row["label"], row["size"], row["mtime_ns"]) == (local["label"], local["size"], local["mtime_ns"])
    assert sum(row["error"] is not None for row in ray_rows.values()) >= len(BAD_CASES)


def test_a_worker_killed_mid_run_is_retried_and_every_input_is_scored_once(
    local_ray, exported_run, inputs, local_rows, tmp_path
):
    marker = tmp_path / "killed-once"
    victim = sorted(local_rows)[len(local_rows) // 2]

    def decode_or_die(batch, image_size, fit):
        """Decoding, except that the first worker to meet ``victim`` kills itself (SIGKILL) mid-task."""
        if victim in batch.column("file").to_pylist():
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
                os.kill(os.getpid(), signal.SIGKILL)
            except FileExistsError:
                pass  # the retry: decode normally
        return decode_batch(batch, image_size, fit)

    out = tmp_path / "ray.parquet"
    summary = predict_ray(exported_run, [inputs], out, actors=1, decode=decode_or_die)

    assert marker.exists()  # a worker really died
    rows = _by_file(out)
    assert rows.keys() == local_rows.keys() and summary.seen == len(rows)
    assert rows[victim]["probability"] == pytest.approx(local_rows[victim]["probability"], abs=1e-5)
    assert len(list(iter_sources([inputs]))) == len(rows)


_HANGING_DRIVER = """
import sys, time
from pneumoscan.inference import ray_engine
from pneumoscan.cli import main

def hang(batch, image_size, fit):
    time.sleep(600)

ray_engine.predict_ray.__kwdefaults__["decode"] = hang  # a job that never ends: it is stopped from outside
sys.exit(main(["predict", sys.argv[1], "--engine", "ray", "--out", sys.argv[2]]))
"""


def _start_hanging_run(tmp_path, images, out):
    """`predict --engine ray` in a process of its own, once its job runs: (process, its Ray's processes)."""
    import subprocess
    import sys
    import time

    psutil = pytest.importorskip("psutil", reason="psutil comes with Ray")
    script = tmp_path / "driver.py"
    script.write_text(_HANGING_DRIVER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(pneumoscan.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, str(script), str(images), str(out)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    driver = psutil.Process(process.pid)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        children = driver.children(recursive=True)
        names = " ".join(" ".join(c.cmdline()) for c in children if c.is_running())
        if "ray::DashboardAgent" in names and "MapBatches(hang)" in names:
            return process, [(c, c.create_time()) for c in children]
        assert process.poll() is None, process.communicate()
        time.sleep(1)
    process.kill()
    pytest.fail("the Ray job did not start within 180 s")


def _gone(ray_processes, within_s: float) -> list[str]:
    import time

    deadline = time.monotonic() + within_s
    while True:
        alive = [" ".join(p.cmdline())[:60] for p, started in ray_processes
                 if p.is_running() and p.status() != "zombie" and p.create_time() == started]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(1)


def test_a_killed_or_terminated_driver_leaves_no_ray_process_and_no_staging_folder(inputs, tmp_path):
    """kill -9 of the driver: every process of its local Ray ends (two agents would hang otherwise) and
    the next run removes its staging folder; SIGTERM: one line, exit 130, nothing left either."""
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted((inputs / "images").rglob("*"))[:4]:
        if path.is_file():
            (images / path.name).symlink_to(path)
    out = tmp_path / "results.parquet"
    killed, ray_processes = _start_hanging_run(tmp_path, images, out)
    [staging] = tmp_path.glob(".results.parquet.*.tmp")
    killed.kill()
    killed.communicate()
    assert _gone(ray_processes, 60) == []
    assert staging.is_dir()  # nothing could remove it at the moment of the kill

    terminated, ray_processes = _start_hanging_run(tmp_path, images, out)
    assert not staging.exists()  # the next run removed the dead run's staging folder
    terminated.send_signal(signal.SIGTERM)
    _, err = terminated.communicate(timeout=60)
    assert terminated.returncode == 130 and err.strip().splitlines()[-1] == "pneumoscan: interrupted", err[-2000:]
    assert "*** SIGTERM received" not in err  # no native stack dump
    assert _gone(ray_processes, 30) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["driver.py", "images"]


def test_replacing_an_earlier_results_folder_deletes_only_its_parts(local_ray, exported_run, inputs, local_out,
                                                                      tmp_path):
    import shutil

    out = tmp_path / "results.parquet"
    shutil.copytree(local_out, out)  # an earlier run's results: pneumoscan's own parts
    old_parts = sorted(p.name for p in out.iterdir())
    few = tmp_path / "few"
    few.mkdir()
    for path in sorted((inputs / "images").rglob("*.*"))[:3]:
        (few / path.name).symlink_to(path.resolve())

    summary = predict_ray(exported_run, [few], out)

    assert summary.seen == 3 and len(list(read_results(out))) == 3
    assert not set(old_parts) & {p.name for p in out.iterdir()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["few", "results.parquet"]  # no staging, no old folder
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
