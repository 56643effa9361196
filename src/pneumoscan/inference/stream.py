"""Score any number of files into a results file: streamed, in parallel, resumable after a kill.

The input list is read lazily (folders are walked as they are scored, manifests read row by row), files
are decoded in worker processes a bounded window ahead of the scorer, scored in batches by the
:class:`~pneumoscan.inference.Classifier` (ONNX Runtime for an exported model), and every batch is
appended to the output durably (:mod:`pneumoscan.inference.results`). Memory does not grow with the
number of inputs: only the resume keys (8 bytes of hash per row) and the window are held.
"""

from __future__ import annotations

import csv
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

from pneumoscan._io import csv_text
from pneumoscan.errors import ConfigError
from pneumoscan.inference.decoding import DecodedFile, decode_files
from pneumoscan.inference.inputs import iter_inputs
from pneumoscan.inference.results import ResultsWriter, require_pyarrow, row_key
from pneumoscan.inference.rows import Prediction, Source, file_stat

MANIFEST_SUFFIXES = (".csv", ".parquet")
# Rows per durable write (one write and one fsync): small enough that a kill loses little work, large
# enough that fsync does not slow the run. Parquet parts are larger (thousands of tiny files are slow to
# read). A slow run also writes whatever it has every FLUSH_EVERY_S seconds.
WRITE_ROWS, PARQUET_ROWS, FLUSH_EVERY_S = 256, 8192, 5.0
# Without a terminal, a progress line every this many seconds.
RATE_EVERY_S = 10.0


@dataclass(frozen=True)
class StreamSummary:
    """What a streamed run did: ``seen`` inputs, of which ``skipped`` were already in the output."""

    out: Path
    seen: int
    skipped: int
    scored: int
    failed: int
    existing: int  # rows the output held before this run (resume)
    seconds: float

    @property
    def rate(self) -> float:
        return (self.seen - self.skipped) / self.seconds if self.seconds > 0 else 0.0


def iter_sources(items: Iterable[str | os.PathLike]) -> Iterator[str]:
    """The files to score, one at a time: files, folders, globs, and manifests (``.csv`` / ``.parquet``
    with a ``path`` column, relative paths taken from the manifest's folder).

    A file given twice on the command line is scored once; a manifest's rows are kept as they are (a file
    on two rows gets two result rows), so that with one folder or manifest no list of paths is held at all.
    """
    items = [os.fsdecode(item) for item in items]
    seen: set[str] | None = set() if len(items) > 1 else None
    for path in chain.from_iterable(_manifest_paths(Path(i)) if _is_manifest(i) else iter_inputs([i]) for i in items):
        if seen is not None:
            if path in seen:
                continue
            seen.add(path)
        yield path


def _is_manifest(item: str) -> bool:
    return item.lower().endswith(MANIFEST_SUFFIXES) and Path(item).is_file()


def _manifest_paths(manifest: Path) -> Iterator[str]:
    base = manifest.parent
    if manifest.suffix.lower() == ".parquet":
        require_pyarrow(manifest)
        import pyarrow.parquet as pq

        try:
            source = pq.ParquetFile(manifest)
        except Exception as exc:  # noqa: BLE001 - pyarrow's own error types
            raise ConfigError(f"{manifest}: not a readable Parquet manifest ({exc})") from None
        if "path" not in source.schema_arrow.names:
            raise ConfigError(f"{manifest}: no 'path' column (has {', '.join(source.schema_arrow.names)})")
        for batch in source.iter_batches(columns=["path"], batch_size=4096):
            yield from (str(base / p) for p in batch.column(0).to_pylist() if p)
        return
    with open(manifest, encoding="utf-8", errors="surrogateescape", newline="") as fh:
        reader = csv.DictReader(fh)
        if "path" not in (reader.fieldnames or []):
            raise ConfigError(f"{manifest}: no 'path' column (has {', '.join(reader.fieldnames or []) or 'nothing'}); "
                              "a manifest lists one file per row under 'path'")
        yield from (str(base / csv_text(row["path"])) for row in reader if row.get("path"))


def predict_to_file(
    classifier, sources: Iterable[str | os.PathLike], out: str | os.PathLike, *, resume: bool = False,
    batch_size: int = 32, workers: int | None = None, progress: bool | None = None, report_failures: bool = False,
) -> StreamSummary:
    """Score every file of ``sources`` into ``out`` (``.csv``, ``.jsonl`` or ``.parquet``), batch by batch.

    With ``resume``, inputs already in ``out`` (same path, size and modification time, or same
    SOPInstanceUID) are skipped, so a killed run finishes with every input present exactly once.
    ``workers``: decoding processes (default: the usable cores, at most 8). ``progress``: a bar
    (``True``), nothing (``False``), or ``None``: a bar on a terminal, a rate line every 10 s otherwise.
    ``report_failures``: also print each file that could not be scored, with its reason, on stderr.
    """
    from pneumoscan.data._parallel import default_workers

    start = time.perf_counter()
    writer = ResultsWriter(out, resume=resume)
    meta = classifier.meta
    counts = {"seen": 0, "skipped": 0, "scored": 0, "failed": 0}
    # (size, mtime_ns, rows in flight) of each file between listing and writing. A manifest may list a
    # file on several rows: each row is scored and written, so the entry lives until its last row is out.
    stats: dict[str, list] = {}

    def release(path: str) -> tuple[int | None, int | None]:
        entry = stats[path]
        entry[2] -= 1
        if entry[2] == 0:
            del stats[path]
        return entry[0], entry[1]

    def jobs() -> Iterator[str]:
        for path in iter_sources(sources):
            counts["seen"] += 1
            stat = file_stat(path)
            if resume and writer.done(row_key(path, *stat)):
                counts["skipped"] += 1
                continue
            entry = stats.setdefault(path, [*stat, 0])  # held only while the file is in flight
            entry[2] += 1
            yield path

    ticker = _Ticker(progress, report_failures)
    batch: list[DecodedFile] = []
    written: list[Prediction] = []
    flush_rows = PARQUET_ROWS if writer.format == ".parquet" else WRITE_ROWS
    last_flush = time.monotonic()

    def score() -> None:
        sources = [Source(item.path, item.error, item.reason, item.ids, *release(item.path)) for item in batch]
        rows = classifier.assess([item.pixels for item in batch if item.pixels is not None], sources,
                                 batch_size=batch_size)
        for row in rows:
            if row.probability is None:
                counts["failed"] += 1
                ticker.failure(row.error or row.file)
            else:
                counts["scored"] += 1
        written.extend(rows)
        ticker.update(len(batch), counts)
        batch.clear()

    images_waiting = 0
    with writer:
        decoded = decode_files(jobs(), int(meta.image_size), meta.fit, workers or default_workers(),
                               scope_check=classifier.scope_check)
        for item in decoded:
            uid = item.ids.get("sop_instance_uid")
            if resume and uid and writer.done(None, uid):  # a DICOM scored before under another name
                counts["skipped"] += 1
                release(item.path)
                continue
            batch.append(item)
            images_waiting += item.pixels is not None
            if images_waiting >= batch_size:
                score()
                images_waiting = 0
            if len(written) >= flush_rows or (written and time.monotonic() - last_flush >= FLUSH_EVERY_S):
                writer.append(written)
                written.clear()
                last_flush = time.monotonic()
        if batch:
            score()
        writer.append(written)
    ticker.close()
    return StreamSummary(Path(out), counts["seen"], counts["skipped"], counts["scored"], counts["failed"],
                         writer.existing, time.perf_counter() - start)


class _Ticker:
    """A progress bar on a terminal, else a rate line on stderr every ``RATE_EVERY_S`` seconds."""

    def __init__(self, progress: bool | None, report_failures: bool = False) -> None:
        terminal = sys.stderr.isatty()
        self.report_failures = report_failures
        self.bar = None
        self.lines = progress is None and not terminal
        if progress or (progress is None and terminal):
            from tqdm.auto import tqdm

            self.bar = tqdm(desc="scoring", unit="img", leave=False)
        self.start = self.last = time.perf_counter()

    def update(self, n: int, counts: dict[str, int]) -> None:
        if self.bar is not None:
            self.bar.update(n)
        elif self.lines and (now := time.perf_counter()) - self.last >= RATE_EVERY_S:
            self.last = now
            done = counts["scored"] + counts["failed"]
            print(f"predict: {done:,} files scored or reported ({done / (now - self.start):,.0f}/s), "
                  f"{counts['failed']:,} could not be scored, {counts['skipped']:,} already done", file=sys.stderr)

    def failure(self, error: str) -> None:
        if self.report_failures:
            line = f"not scored: {error}"
            if self.bar is not None:
                self.bar.write(line, file=sys.stderr)
            else:
                print(line, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


__all__ = ["StreamSummary", "iter_sources", "predict_to_file"]
