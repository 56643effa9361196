"""Look at a dataset before training on it: counts, patients, image sizes, unreadable files and leakage.

:func:`inspect_dataset` writes ``summary.json``, ``class_balance.png`` and ``samples.png`` into an output
folder; :func:`format_table` turns the summary into the plain-text table the CLI prints.

Leakage is checked three ways: a patient id in two splits, byte-identical files in two splits, and
near-duplicate images in two splits (a 256-bit perceptual hash, :func:`imagehash.phash` with
``hash_size=16``, within a Hamming distance). Near duplicates of *different* patients inside one split are reported too: a patient-level
split of that split could put them on both sides.
"""

from __future__ import annotations

import hashlib
import os
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pneumoscan import __version__
from pneumoscan._io import atomic_write, atomic_write_json, ensure_writable_dir
from pneumoscan.data._parallel import parallel_map
from pneumoscan.data.image import probe_image, read_file_bytes, read_image
from pneumoscan.data.records import CLASS_NAMES, SPLITS, Sample
from pneumoscan.errors import ImageReadError
from pneumoscan.provenance import DISCLAIMER

HASH_DISTANCE = 20
"""Default largest phash Hamming distance (of 256 bits) counted as a near duplicate.

Measured on the Kermany training images: re-encoding (JPEG quality 30, resized, brighter) moves an
image's hash by at most 12 bits, while the two closest radiographs of different patients among the
5,216 are 38 bits apart. The usual 64-bit phash cannot tell chest X-rays apart: it puts different
children at distance 2-4.
"""

_HASH_SIZE = 16  # 16 x 16 = 256 bits
_HASH_DECODE_SIZE = 64  # phash looks at 64 x 64 pixels: decoding larger only costs time
_LISTED = 50  # pairs and patients listed by name in the summary; the counts are always complete
_ALL = "all"


@dataclass
class InspectReport:
    """The summary (JSON-ready) and the files written."""

    summary: dict[str, Any]
    files: dict[str, Path]


def inspect_dataset(
    root: str | os.PathLike,
    out: str | os.PathLike = "reports/data-inspect",
    hash_distance: int = HASH_DISTANCE,
    workers: int | None = None,
    progress: bool = False,
    samples_per_class: int = 6,
) -> InspectReport:
    """Inspect the dataset at ``root`` and write the summary, class-balance chart and sample grid to ``out``.

    Unreadable files are listed, never raised. Every image is decoded once (in parallel) for its
    header, a SHA-256 of its bytes and its perceptual hash.
    """
    from pneumoscan.data.sources import load_dataset

    index = load_dataset(root)
    out = ensure_writable_dir(out)
    samples = index.samples
    results = list(parallel_map(examine_image, [str(s.path) for s in samples], workers, progress, desc="inspecting"))
    readable = [(s, r) for s, r in zip(samples, results, strict=True) if "error" not in r]
    summary: dict[str, Any] = {
        "disclaimer": DISCLAIMER,
        "root": str(index.root),
        "source": index.source,
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "pneumoscan": __version__,
        "notes": list(index.notes),
        "counts": _counts(samples),
        "patients": _patients(samples),
        "imbalance": {},
        "images": _image_stats([r for _, r in readable]),
        "unreadable": [{"path": str(s.path), "reason": r["error"]} for s, r in zip(samples, results, strict=True)
                       if "error" in r],
        "leakage": _leakage(readable, hash_distance),
    }
    for split, row in summary["counts"].items():
        low, high = min(row[c] for c in CLASS_NAMES), max(row[c] for c in CLASS_NAMES)
        summary["imbalance"][split] = round(high / low, 3) if low else None
    files = {
        "summary": out / "summary.json",
        "class_balance": out / "class_balance.png",
        "samples": out / "samples.png",
    }
    _plot_balance(summary, files["class_balance"])
    _plot_samples([s for s, _ in readable], files["samples"], samples_per_class)
    summary["files"] = {k: str(v) for k, v in files.items()}
    atomic_write_json(files["summary"], summary)
    return InspectReport(summary, files)


def format_table(summary: dict[str, Any]) -> str:
    """The summary as a plain-text report for a terminal."""
    lines = [f"dataset: {summary['root']} ({summary['source']})", ""]
    header = (f"{'':<7}{'images':^29}{'patients':^29}\n"
              f"{'split':<7}{'NORMAL':>9}{'PNEUMONIA':>11}{'total':>9}{'NORMAL':>9}{'PNEUMONIA':>11}{'total':>9}"
              f"{'imbalance':>11}")
    lines += [header, "-" * len(header.splitlines()[-1])]
    for split, row in summary["counts"].items():
        ratio = summary["imbalance"].get(split)
        pat = summary["patients"][split]
        lines.append(f"{split:<7}{row['NORMAL']:>9,}{row['PNEUMONIA']:>11,}{row['total']:>9,}"
                     f"{pat['NORMAL']:>9,}{pat['PNEUMONIA']:>11,}{pat['total']:>9,}"
                     f"{(f'{ratio:.2f}:1' if ratio else 'n/a'):>11}")
    most = max((p["max_images_per_patient"] for p in summary["patients"].values()), default=0)
    lines.append(f"(imbalance = majority / minority images; up to {most} images per patient)")
    images = summary["images"]
    if images["count"]:
        w, h = images["width"], images["height"]
        lines += ["", f"sizes: width {w['min']}-{w['max']} (median {w['median']}), "
                      f"height {h['min']}-{h['max']} (median {h['median']}); "
                      f"modes: {', '.join(f'{k} {v:,}' for k, v in images['modes'].items())}"]
    bad = summary["unreadable"]
    lines.append(f"unreadable files: {len(bad)}")
    lines += [f"  {b['path']}: {b['reason']}" for b in bad[:10]]
    if len(bad) > 10:
        lines.append(f"  ... and {len(bad) - 10} more (see summary.json)")
    leak = summary["leakage"]
    lines += ["", "leakage check:",
              f"  patients in more than one split:          {leak['patients_in_several_splits']['count']:,}",
              f"  identical files in more than one split:   {leak['exact_duplicates_across_splits']['count']:,}",
              f"  near duplicates across splits (phash<={leak['hash_distance']}): "
              f"{leak['near_duplicates_across_splits']['count']:,}",
              f"  near duplicates within a split, different patients: "
              f"{leak['near_duplicates_within_split']['count']:,}"]
    for pair in leak["near_duplicates_across_splits"]["pairs"][:5]:
        lines.append(f"    {pair['a']} ~ {pair['b']} (distance {pair['distance']})")
    for patient in leak["patients_in_several_splits"]["patients"][:5]:
        lines.append(f"    patient {patient['patient_id']}: {patient['splits']}")
    if summary["notes"]:
        lines += ["", "notes:"] + [f"  {n}" for n in summary["notes"]]
    return "\n".join(lines)


def examine_image(path: str) -> dict[str, Any]:
    """Header, byte hash and perceptual hash of one file, or {"error": reason}."""
    import imagehash
    from PIL import Image

    try:
        info = probe_image(path)  # also refuses oversized files and wrong extensions, naming the file
        data = read_file_bytes(path)  # read once for the pixels and the byte hash
        pixels = read_image(data, _HASH_DECODE_SIZE, "stretch", name=path)
        digest = hashlib.sha256(data).hexdigest()
    except ImageReadError as exc:
        return {"error": str(exc).removeprefix(f"{path}: ")}
    except Exception as exc:  # noqa: BLE001 - one odd file must not stop the inspection of thousands
        return {"error": f"unexpected decoding error ({type(exc).__name__}: {exc})"}
    bits = imagehash.phash(Image.fromarray(pixels), hash_size=_HASH_SIZE).hash
    phash = np.packbits(bits.reshape(-1)).tobytes().hex()  # str(ImageHash) does this bit by bit in Python
    return {"width": info.width, "height": info.height, "mode": info.mode, "format": info.format,
            "sha256": digest, "phash": phash}


def near_duplicate_pairs(phashes: list[str], hash_distance: int = HASH_DISTANCE) -> Iterator[tuple[int, int, int]]:
    """``(i, j, distance)`` for every pair ``i < j`` of :func:`examine_image` perceptual hashes (hex) within
    ``hash_distance`` bits: near duplicates, byte-identical files included."""
    hashes = np.frombuffer(b"".join(bytes.fromhex(h) for h in phashes), dtype=">u8")
    hashes = hashes.astype(np.uint64).reshape(len(phashes), _HASH_SIZE * _HASH_SIZE // 64)
    block = 256  # every pair, in blocks so memory stays small
    for start in range(0, len(hashes), block):
        distance = np.bitwise_count(hashes[start:start + block, None, :] ^ hashes[None, :, :]).sum(axis=2)
        rows, cols = np.nonzero(distance <= hash_distance)
        for i, j in zip(rows + start, cols, strict=True):
            if j > i:
                yield int(i), int(j), int(distance[i - start, j])


def _split_name(sample: Sample) -> str:
    return sample.split or _ALL


def _ordered(splits: set[str]) -> list[str]:
    return sorted(splits, key=lambda s: SPLITS.index(s) if s in SPLITS else len(SPLITS))


def _counts(samples: list[Sample]) -> dict[str, dict[str, int]]:
    table: dict[str, dict[str, int]] = {}
    for split in _ordered({_split_name(s) for s in samples}):
        rows = [s for s in samples if _split_name(s) == split]
        table[split] = {name: sum(1 for s in rows if s.label == i) for i, name in enumerate(CLASS_NAMES)}
        table[split]["total"] = len(rows)
    return table


def _patients(samples: list[Sample]) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for split in _ordered({_split_name(s) for s in samples}):
        rows = [s for s in samples if _split_name(s) == split]
        per_class = {name: len({s.patient_id for s in rows if s.label == i}) for i, name in enumerate(CLASS_NAMES)}
        patients = Counter(s.patient_id for s in rows)
        labels: dict[str, set[int | None]] = defaultdict(set)
        for s in rows:
            labels[s.patient_id].add(s.label)
        table[split] = {**per_class, "total": len(patients),
                        "in_both_classes": sum(1 for v in labels.values() if len(v) > 1),
                        "max_images_per_patient": max(patients.values(), default=0)}
    return table


def _image_stats(results: list[dict[str, Any]]) -> dict[str, Any]:
    if not results:
        return {"count": 0}

    def spread(key: str) -> dict[str, float]:
        values = [r[key] for r in results]
        return {"min": min(values), "median": statistics.median(values), "max": max(values)}

    sizes = Counter(f"{r['width']}x{r['height']}" for r in results)
    return {"count": len(results), "width": spread("width"), "height": spread("height"),
            "most_common_sizes": dict(sizes.most_common(5)),
            "modes": dict(Counter(r["mode"] for r in results).most_common()),
            "formats": dict(Counter(r["format"] for r in results).most_common())}


def _leakage(readable: list[tuple[Sample, dict[str, Any]]], hash_distance: int) -> dict[str, Any]:
    samples = [s for s, _ in readable]
    # Patients seen in several splits.
    splits_of: dict[str, Counter[str]] = defaultdict(Counter)
    for s in samples:
        if s.split is not None:
            splits_of[s.patient_id][s.split] += 1
    shared = sorted(p for p, c in splits_of.items() if len(c) > 1)
    # Byte-identical files in several splits.
    by_digest: dict[str, list[Sample]] = defaultdict(list)
    for s, r in readable:
        by_digest[r["sha256"]].append(s)
    exact_groups = [g for g in by_digest.values() if len({x.split for x in g}) > 1]
    across: list[dict[str, Any]] = []
    within: list[dict[str, Any]] = []
    n_across = n_within = 0
    for i, j, distance in near_duplicate_pairs([r["phash"] for _, r in readable], hash_distance):
        a, b = samples[i], samples[j]
        pair = {"a": str(a.path), "b": str(b.path), "distance": distance,
                "patients": [a.patient_id, b.patient_id], "splits": [a.split, b.split]}
        if a.split != b.split:
            n_across += 1
            if len(across) < _LISTED:
                across.append(pair)
        elif a.patient_id != b.patient_id:
            n_within += 1
            if len(within) < _LISTED:
                within.append(pair)
    return {
        "hash_distance": hash_distance,
        "patients_in_several_splits": {
            "count": len(shared),
            "patients": [{"patient_id": p, "splits": dict(splits_of[p])} for p in shared[:_LISTED]],
        },
        "exact_duplicates_across_splits": {
            "count": len(exact_groups),
            "groups": [[str(x.path) for x in g] for g in exact_groups[:_LISTED]],
        },
        "near_duplicates_across_splits": {"count": n_across, "pairs": across},
        "near_duplicates_within_split": {"count": n_within, "pairs": within},
    }


def _footer(fig) -> None:
    fig.text(0.5, 0.005, DISCLAIMER, ha="center", va="bottom", fontsize=6, wrap=True, color="0.35")


def _save(fig, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def _plot_balance(summary: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, safe in any thread

    splits = list(summary["counts"])
    fig = Figure(figsize=(8, 4))
    for k, (key, title) in enumerate((("counts", "images"), ("patients", "patients"))):
        ax = fig.add_subplot(1, 2, k + 1)
        x = np.arange(len(splits))
        for c, (name, colour) in enumerate(zip(CLASS_NAMES, ("tab:blue", "tab:red"), strict=True)):
            values = [summary[key][s][name] for s in splits]
            bars = ax.bar(x + (c - 0.5) * 0.38, values, 0.38, label=name, color=colour)
            ax.bar_label(bars, fontsize=7)
        ax.set_xticks(x, splits)
        ax.set_title(f"{title} per class")
        ax.legend(fontsize=7)
    fig.suptitle(f"class balance: {summary['root']}", fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    _footer(fig)
    _save(fig, path)


def _plot_samples(samples: list[Sample], path: Path, per_class: int) -> None:
    from matplotlib.figure import Figure

    per_class = max(1, per_class)
    fig = Figure(figsize=(1.6 * per_class, 1.9 * len(CLASS_NAMES) + 0.3))
    for row, name in enumerate(CLASS_NAMES):
        pool = [s for s in samples if s.label == row]
        # Evenly spaced through the (sorted) list: shows the variety, and is the same every run.
        picks = [pool[int(i * len(pool) / per_class)] for i in range(min(per_class, len(pool)))]
        for col in range(per_class):
            ax = fig.add_subplot(len(CLASS_NAMES), per_class, row * per_class + col + 1)
            ax.set_axis_off()
            if col < len(picks):
                try:
                    ax.imshow(read_image(picks[col].path, 128, "pad"), cmap="gray", vmin=0, vmax=255)
                except ImageReadError:
                    continue
                ax.set_title(f"{name}\n{picks[col].path.name[:26]}", fontsize=6)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    _footer(fig)
    _save(fig, path)
