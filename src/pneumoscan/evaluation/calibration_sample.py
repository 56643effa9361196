"""The images a site calibration may be fitted on: distinct, in scope, and new to the model.

A calibration sample is small, so a few images repeated, or images the model already knows, move its
threshold and temperature as far as many honest ones would. Before anything is fitted:

- **duplicates** (byte-identical files, and near duplicates by the perceptual hash and distance that
  ``data inspect`` uses, :func:`pneumoscan.data.inspect.near_duplicate_pairs`) count once: the first of
  each group is kept, the others are left out and listed; one radiograph given under both labels is refused;
- **out-of-scope images** (the scope rules and the model's learned gate, as ``predict`` applies them) and
  unreadable files are left out and listed;
- **the run's own training or validation images** (its ``split.csv``, by path or identical bytes) are
  refused: the model learned from them or was tuned on them, so a "site" version fitted on them describes
  no new site, and a calibration that quietly dropped them would hide that the sample was not what the
  user believed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pneumoscan.data.records import CLASS_NAMES, Sample
from pneumoscan.errors import DatasetError

_LISTED = 50  # excluded images listed by name in calibration.json; the counts are always complete


@dataclass
class SiteSample:
    """The images kept, the model's probabilities for them (its own temperature), and what was left out."""

    samples: list[Sample]
    probabilities: np.ndarray
    excluded: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # unreadable, duplicates, out_of_scope
    training_checked: str | None = None  # the split.csv the sample was checked against

    def counts(self) -> dict[str, int]:
        return {kind: len(rows) for kind, rows in self.excluded.items()}


def site_sample(data: str | os.PathLike, samples: list[Sample], classifier: Any, split_csv: Path | None
                ) -> SiteSample:
    """The trusted part of ``samples`` (labelled) scored by ``classifier`` (a loaded
    :class:`~pneumoscan.inference.Classifier`, scope check on); ``split_csv``: the model's run's
    ``split.csv`` (None: no run to check against). Raises :class:`DatasetError` naming ``data`` for a
    radiograph given under both labels or one of the run's training or validation images."""
    from pneumoscan.data._parallel import parallel_map
    from pneumoscan.data.inspect import HASH_DISTANCE, examine_image

    examined = list(parallel_map(examine_image, [str(s.path) for s in samples]))
    unreadable = [{"path": str(s.path), "reason": r["error"]} for s, r in zip(samples, examined, strict=True)
                  if "error" in r]
    readable = [(s, r) for s, r in zip(samples, examined, strict=True) if "error" not in r]
    if split_csv is not None:
        _refuse_training_images(data, readable, split_csv)
    scored, probabilities, out_of_scope, failed = _score_in_scope([s for s, _ in readable], classifier)
    # Duplicates among the images in scope: two drawings alike under two labels are not a labelling error.
    found = {str(s.path): r for s, r in readable}
    kept, duplicates = _distinct(data, [(s, found[str(s.path)]) for s in scored],
                                 HASH_DISTANCE)
    where = {id(s): i for i, s in enumerate(scored)}
    return SiteSample(kept, probabilities[[where[id(s)] for s in kept]],
                      {"duplicates": duplicates, "out_of_scope": out_of_scope, "unreadable": unreadable + failed},
                      str(split_csv) if split_csv is not None else None)


def _refuse_training_images(data, readable: list[tuple[Sample, dict]], split_csv: Path) -> None:
    from pneumoscan.data.manifest import load_manifest
    from pneumoscan.provenance import sha256_file

    trained = [s for s in load_manifest(split_csv, keep_missing=True).samples if s.split in ("train", "val")]
    paths = {os.path.abspath(s.path): s.split for s in trained}
    digests = {r["sha256"]: s for s, r in readable}
    sizes = {os.path.getsize(s.path) for s, _ in readable}
    found = [(s, paths[os.path.abspath(s.path)]) for s, _ in readable if os.path.abspath(s.path) in paths]
    # Copies elsewhere: only training files of a size found in the sample are hashed (a handful, not all).
    for t in trained:
        try:
            same_size = os.path.getsize(t.path) in sizes
        except OSError:  # moved away since training: only its name can match
            continue
        if same_size and (copy := digests.get(sha256_file(t.path))) is not None \
                and os.path.abspath(copy.path) not in paths:
            found.append((copy, t.split))
    if found:
        sample, part = found[0]
        raise DatasetError(
            f"{data}: {len(found)} image(s) of the sample are the model's own training or validation images "
            f"(listed in {split_csv}; e.g. {sample.path}, {'a copy of ' if os.path.abspath(sample.path) not in paths else ''}"
            f"a {part} image): a site calibration is fitted on images the model has not learned from or been "
            "tuned on; remove them from the sample")


def _distinct(data, readable: list[tuple[Sample, dict]], hash_distance: int
              ) -> tuple[list[Sample], list[dict[str, Any]]]:
    """The first image of each group of duplicates, and the others as rows saying of which and how."""
    from pneumoscan.data.inspect import near_duplicate_pairs

    parent = list(range(len(readable)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    how: dict[int, str] = {}
    for i, j, distance in near_duplicate_pairs([r["phash"] for _, r in readable], hash_distance):
        identical = readable[i][1]["sha256"] == readable[j][1]["sha256"]
        how.setdefault(j, "identical bytes" if identical else f"near duplicate (perceptual hash distance {distance})")
        a, b = root(i), root(j)
        if a != b:
            parent[max(a, b)] = min(a, b)  # the group's first image stays its root
    kept, duplicates = [], []
    for i, (sample, _) in enumerate(readable):
        first = readable[root(i)][0]
        if first.label != sample.label:
            raise DatasetError(f"{data}: {first.path} ({CLASS_NAMES[first.label]}) and {sample.path} "
                               f"({CLASS_NAMES[sample.label]}) are the same radiograph ({how.get(i, 'duplicates')}) "
                               "under two labels; correct the labels")
        if root(i) == i:
            kept.append(sample)
        else:
            duplicates.append({"path": str(sample.path), "duplicate_of": str(first.path),
                               "how": how.get(i, "near duplicate")})
    return kept, duplicates


def _score_in_scope(samples: list[Sample], classifier: Any
                    ) -> tuple[list[Sample], np.ndarray, list[dict[str, Any]], list[dict[str, Any]]]:
    """Decode and score as ``predict`` does: (scored samples, probabilities, out of scope, unreadable)."""
    from pneumoscan.data._parallel import default_workers
    from pneumoscan.inference import scope
    from pneumoscan.inference.decoding import decode_files

    meta = classifier.meta
    paths = list(dict.fromkeys(str(s.path) for s in samples))  # a file listed twice is decoded once
    verdict: dict[str, tuple[float | None, str | None]] = {}
    ready = []
    for item in decode_files(paths, int(meta.image_size), meta.fit, default_workers()):
        if item.pixels is not None:
            ready.append(item)
        else:
            verdict[item.path] = (None, item.error)
    if ready:
        rows = classifier.assess(np.stack([d.pixels for d in ready]), [d.path for d in ready], [d.reason for d in ready])
        verdict |= {d.path: (row.probability, row.error) for d, row in zip(ready, rows, strict=True)}
    used, probabilities, out_of_scope, unreadable = [], [], [], []
    for sample in samples:
        probability, error = verdict[str(sample.path)]
        if probability is not None:
            used.append(sample)
            probabilities.append(probability)
        else:  # the scope rules and the gate say "out of scope"; anything else is a file that cannot be read
            scoped = f": {scope.OUT_OF_SCOPE}: " in (error or "")
            (out_of_scope if scoped else unreadable).append({"path": str(sample.path), "reason": error})
    return used, np.asarray(probabilities, dtype=np.float64), out_of_scope, unreadable


def listed(excluded: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """What was left out, for ``calibration.json``: each kind's count and its first images."""
    return {kind: {"count": len(rows), "images": rows[:_LISTED]} for kind, rows in excluded.items()}


def describe(excluded: dict[str, list[dict[str, Any]]]) -> str | None:
    """One line on what was left out, or None when nothing was."""
    words = {"duplicates": "duplicate(s) of another image of the sample", "out_of_scope": "out of scope",
             "unreadable": "unreadable"}
    parts = [f"{len(rows)} {words[kind]}" for kind, rows in excluded.items() if rows]
    return f"left out of the sample: {', '.join(parts)}" if parts else None
