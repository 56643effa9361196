"""Batch prediction on a Ray cluster (or a local Ray): the same decoding and ONNX model as one machine.

A Ray Data pipeline: the file list (read by the driver) -> read and decode (CPU tasks, retried when a
worker dies) -> batched scoring in a pool of actors, each holding one ONNX Runtime session (CPU or GPU)
-> Parquet written by Ray, in the schema of :mod:`pneumoscan.inference.results`. A file that cannot be
read is a row with its reason, never a failed job. Needs the optional extra: ``pip install
'pneumoscan[ray]'``.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pneumoscan._io import _output_error, make_staging_folder
from pneumoscan.errors import ConfigError
from pneumoscan.inference import ray_watchdog
from pneumoscan.inference.results import remove_results_parts, results_folder_parts, results_schema, utf8
from pneumoscan.inference.rows import ID_COLUMNS, Source, file_stat, records

# Files per decoding task and images per scoring call: big enough that Ray's per-task cost is small.
DECODE_BATCH, SCORE_BATCH = 64, 256


@dataclass(frozen=True)
class RaySummary:
    """What a Ray run did, and on what."""

    out: Path
    seen: int
    scored: int
    failed: int
    seconds: float
    model: str
    operating_points: dict[str, float]
    nodes: int
    cpus: float

    @property
    def rate(self) -> float:
        return self.seen / self.seconds if self.seconds > 0 else 0.0


def decode_batch(batch, image_size: int, fit: str):
    """A Ray Data batch (Arrow: ``file``, ``fspath``, ``size``, ``mtime_ns``) -> ``file``, ``size``,
    ``mtime_ns``, each file's pixels (``S*S`` bytes, null when it failed), its error and its DICOM
    identifiers. ``fspath`` is the path's bytes: a name that is not UTF-8 still opens."""
    import pyarrow as pa

    from pneumoscan.inference.decoding import decode_file

    decoded = [decode_file(os.fsdecode(path), image_size, fit) for path in batch.column("fspath").to_pylist()]
    columns: dict[str, Any] = {name: batch.column(name) for name in ("file", "size", "mtime_ns")}
    columns["pixels"] = pa.array([None if d.pixels is None else d.pixels.tobytes() for d in decoded], pa.binary())
    columns["error"] = pa.array([d.error for d in decoded], pa.string())
    for column in ID_COLUMNS:
        columns[column] = pa.array([d.ids[column] for d in decoded], pa.string())
    return pa.table(columns)


class OnnxScorer:
    """A Ray actor's model: one ONNX Runtime session, loaded once, scoring decoded batches.

    Used through a subclass made by :func:`scorer_for`, which carries the model's bytes: nodes need no
    shared model path, and Ray can restart a lost actor from the class alone.
    """

    onnx_bytes: bytes = b""
    device: str | None = None

    def __init__(self) -> None:
        from pneumoscan.inference.onnx_backend import load_onnx

        # ONNX Runtime loads from a file.
        with tempfile.NamedTemporaryFile(suffix=".onnx") as tmp:
            tmp.write(self.onnx_bytes)
            tmp.flush()
            self.classifier = load_onnx(tmp.name, device=self.device)

    def __call__(self, batch):
        """Result rows (an Arrow table of the results schema) of a decoded batch, made as ``predict`` makes
        them: the scope gate applies, and an image out of scope gets its reason, no probability."""
        import numpy as np
        import pyarrow as pa

        size = self.classifier.image_size
        pixels = [np.frombuffer(p, np.uint8).reshape(size, size) for p in batch.column("pixels").to_pylist()
                  if p is not None]
        sources = [Source(row["file"], row["error"], None, {c: row[c] for c in ID_COLUMNS}, row["size"], row["mtime_ns"])
                   for row in batch.drop_columns(["pixels"]).to_pylist()]
        rows = self.classifier.assess(pixels, sources, batch_size=SCORE_BATCH)
        return pa.Table.from_pylist(records(rows), schema=results_schema())


def scorer_for(onnx_file: Path, device: str | None = None) -> type[OnnxScorer]:
    """An :class:`OnnxScorer` class holding ``onnx_file``'s bytes."""
    return type("OnnxScorer", (OnnxScorer,), {"onnx_bytes": onnx_file.read_bytes(), "device": device})


def predict_ray(
    model: str | os.PathLike | None, sources: Iterable[str | os.PathLike], out: str | os.PathLike, *,
    address: str | None = None, actors: int | None = None, num_cpus: int | None = None, device: str | None = None,
    progress: bool | None = None, decode: Callable = decode_batch,
) -> RaySummary:
    """Score ``sources`` with ``model``'s ONNX export (None: the bundled model's) on Ray Data; write ``out``
    as a folder of Parquet files.

    ``address``: a running Ray cluster to join (``ray://...`` or ``HOST:PORT``); without it, joins the Ray
    this process already started, else starts a local one (``num_cpus``: its CPUs). ``actors``: scoring
    actors (default: a quarter of the cluster's CPUs, at least 1). ``device="cuda"`` gives each actor a
    GPU. ``decode`` is the per-batch decoding function (the default :func:`decode_batch`; a wrapper can add
    logging or faults). The output replaces ``out`` only once the whole job has succeeded, and only a
    results folder: a folder holding anything else is refused before any work (as the local engine does).
    """
    ray = _import_ray()
    from pneumoscan.inference.onnx_backend import load_onnx
    from pneumoscan.inference.stream import iter_sources

    sources = [os.fsdecode(source) for source in sources]
    onnx_file = _onnx_of(model)
    meta = load_onnx(onnx_file, device="cpu").meta  # refuses a file that is not one of ours, here, in one line
    out = Path(out)
    results_folder_parts(out)  # refuses, before any work, a folder that pneumoscan's results did not make
    start = time.perf_counter()
    items = []
    for path in iter_sources(sources):
        stat = file_stat(path)
        items.append({"file": utf8(path), "fspath": os.fsencode(path), "size": stat[0], "mtime_ns": stat[1]})
    if not items:
        raise ConfigError(f"no image files found in {' '.join(sources)}")

    staging = make_staging_folder(out)  # named so that a later run removes it if this one is killed
    started_here = _connect(ray, address, num_cpus, progress)
    # A local Ray outlives a driver killed with kill -9 in part (two agents hang): a watchdog ends them.
    watchdog = ray_watchdog.watch() if started_here else None
    # Ray's core installs a handler that answers SIGTERM with a native stack dump: a service manager or
    # `kill` stopping the run ends it as Ctrl-C does instead (staging removed, one line, exit 130).
    previous = _sigterm_as_interrupt()
    try:
        resources = ray.cluster_resources()
        cpus = float(resources.get("CPU", 1))
        nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
        import pyarrow as pa

        listing = pa.Table.from_pylist(items, schema=pa.schema([("file", pa.string()), ("fspath", pa.binary()),
                                                                ("size", pa.int64()), ("mtime_ns", pa.int64())]))
        ds = ray.data.from_arrow(listing).repartition(max(1, -(-len(items) // DECODE_BATCH)))
        # Ray Data retries a task whose worker died, and restarts a lost actor, by default. Decoding
        # runs as tasks on every CPU (a task pool of another size than the actor pool: Ray would
        # otherwise fuse decoding into the scoring actors and decode on their few CPUs only).
        scorers = actors or max(1, int(cpus) // 4)
        ds = ds.map_batches(decode, fn_kwargs={"image_size": int(meta.image_size), "fit": meta.fit},
                            batch_size=DECODE_BATCH, batch_format="pyarrow", num_cpus=1,
                            compute=ray.data.TaskPoolStrategy(size=max(int(cpus), scorers + 1)))
        ds = ds.map_batches(scorer_for(onnx_file, device), batch_size=SCORE_BATCH, batch_format="pyarrow",
                            compute=ray.data.ActorPoolStrategy(size=scorers),
                            num_cpus=1, num_gpus=1 if device == "cuda" else 0)
        ds.write_parquet(str(staging.resolve()))
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)  # a failed job leaves --out as it was, and no debris
        if isinstance(exc, OSError) and exc.errno is not None:  # a full disk, a read-only one: one line
            raise _output_error(out, exc) from None
        raise
    finally:
        if started_here:
            ray.shutdown()
        ray_watchdog.release(watchdog)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    _replace_folder(staging, out)
    import pyarrow.parquet as pq

    errors = pq.read_table(out, columns=["error"]).column("error")
    scored = errors.null_count  # a row without an error is a scored image
    return RaySummary(out, len(items), scored, len(errors) - scored, time.perf_counter() - start, meta.name,
                      dict(meta.operating_points), nodes, cpus)


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError("--engine ray needs Ray Data: pip install 'pneumoscan[ray]'") from None
    return ray


def _onnx_of(model: str | os.PathLike | None) -> Path:
    """The ONNX file to score with: ``model`` itself, a folder's export of the same model, or (None) the
    bundled model's."""
    from pneumoscan.inference.model_files import ONNXRUNTIME, resolve_model

    files = resolve_model(model, device="cpu", prefer_onnx=True)
    if files.backend != ONNXRUNTIME:
        raise ConfigError(f"{model}: --engine ray scores an exported ONNX model; run 'pneumoscan export {model}' first")
    return files.path


def _connect(ray, address: str | None, num_cpus: int | None, progress: bool | None) -> bool:
    """Join ``address`` or the running Ray, else start a local one; True when this call started it."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reporting, no prompt about it
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = bool(progress) or (progress is None and sys.stderr.isatty())
    # Ray Data logs its plan and "progress bars disabled" at INFO/WARNING; a failure still raises.
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    if ray.is_initialized():
        return False
    options: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False, "include_dashboard": False}
    if address:
        ray.init(address=address, **options)
    else:
        # A local Ray listens on this machine only.
        ray.init(num_cpus=num_cpus, _node_ip_address="127.0.0.1", **options)
    return True


def _sigterm_as_interrupt():
    """Make SIGTERM raise KeyboardInterrupt (main thread only); the previous handler, or None."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, signal.default_int_handler)


def _replace_folder(staging: Path, out: Path) -> None:
    """Put the finished Parquet folder at ``out`` by renaming; a previous results folder there is moved
    aside, then only its Parquet parts are deleted (checked again: it may have changed during the job)."""
    parts = results_folder_parts(out)
    if out.exists():
        old = make_staging_folder(out)
        try:
            os.replace(out, old)  # onto the new empty folder: a rename, atomic
        except OSError as exc:
            old.rmdir()
            raise _output_error(out, exc) from None
        os.replace(staging, out)
        remove_results_parts(old / part.name for part in parts)
        try:
            old.rmdir()
        except OSError:  # something appeared in it meanwhile: kept, under a name no later run removes
            os.replace(old, out.parent / f"{out.name}.previous-{time.strftime('%Y%m%d-%H%M%S')}")
    else:
        try:
            os.replace(staging, out)
        except OSError as exc:
            raise _output_error(out, exc) from None
