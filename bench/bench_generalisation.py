"""Generalisation of the default recipe: N seeds, each scored on new-site data and on held-out patients.

Each seed trains the default recipe (``pneumoscan train`` with no options, plus any ``--set``) on the
official train and val folders only, with 10 % of their patients held out as an in-distribution test
split. Every model is then evaluated, at the operating point stored at training and with patient
bootstrap intervals, on

- ``ROOT/test`` (the official test split: another distribution, a new site),
- its own held-out patients (in distribution),
- any further folders given with ``--extra``.

Nothing is chosen on any of them. Prints one table and writes ``generalisation.json`` beside it::

    python bench/bench_generalisation.py --seeds 3
    python bench/bench_generalisation.py --seeds 1 --set image_size=160 --set epochs=16

Not a diagnostic device: these are research figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

# As `pneumoscan train` does: OpenMP threads that spin while waiting burn a shared machine's cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

METRICS = ("roc_auc", "accuracy", "sensitivity", "specificity", "ece")
POINT_METRICS = ("accuracy", "sensitivity", "specificity")


def parse_set(items: list[str]) -> dict[str, object]:
    """``key=value`` pairs into TrainConfig overrides, typed like the field's default."""
    from pneumoscan.training.config import TrainConfig

    types = {f.name: type(f.default) for f in fields(TrainConfig)}
    out: dict[str, object] = {}
    for item in items:
        key, _, value = item.partition("=")
        key = key.replace("-", "_")
        if key not in types:
            raise SystemExit(f"--set {item}: {key!r} is not a training option")
        kind = types[key]
        if kind is bool:
            out[key] = value.lower() in ("1", "true", "yes", "on")
        elif kind in (int, float):
            out[key] = kind(value)
        elif value.lower() == "none":
            out[key] = None
        else:  # a str or an optional number (default None): the value's own form decides
            for convert in (int, float, str):
                try:
                    out[key] = convert(value)
                    break
                except ValueError:
                    continue
    return out


def train_only_view(root: Path, folder: Path) -> Path:
    """A folder that shows only ``root``'s train and val splits, so training holds out its own patients."""
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        if (root / split).is_dir() and not (folder / split).exists():
            (folder / split).symlink_to((root / split).resolve(), target_is_directory=True)
    return folder


def trained_seconds(run: Path) -> float:
    """Seconds of fitting the run's history records (its last ``wall_s``), NaN when absent."""
    import csv

    try:
        with open(run / "history.csv", newline="") as fh:
            walls = [float(r["wall_s"]) for r in csv.DictReader(fh) if r.get("wall_s")]
    except (OSError, KeyError, ValueError):
        return float("nan")
    return walls[-1] if walls else float("nan")


def evaluate_on(run: Path, data: Path | None, split: str, out: Path, bootstrap: int) -> dict:
    from pneumoscan.evaluation.evaluate import EvaluateConfig, evaluate

    config = EvaluateConfig(models=[str(run)], data=str(data) if data else None, split=split,
                            bootstrap=bootstrap, gallery=0, out=str(out))
    result = evaluate(config)
    report = result.report.to_dict()  # plain JSON types, as report.json holds them
    row = {}
    free, stored = report["metrics"]["threshold_free"], report["metrics"]["at"]["stored"]
    for metric in METRICS:
        entry = free.get(metric) or stored.get(metric)
        row[metric] = entry
    row["images"] = report["data"]["images"]
    row["threshold"] = report["operating_points"]["stored"]["threshold"]
    # Every operating point of the same model, and the ECE before its temperature: what each choice buys.
    row["points"] = {name: {m: at[m]["value"] for m in POINT_METRICS} for name, at in report["metrics"]["at"].items()}
    row["ece_temperature_1"] = ece_without_temperature(run, result.folder)
    return row


def ece_without_temperature(run: Path, report_dir: Path) -> float:
    import csv

    import numpy as np

    from pneumoscan.evaluation.metrics import expected_calibration_error
    from pneumoscan.evaluation.operating import apply_temperature
    from pneumoscan.models.artifact import read_meta
    from pneumoscan.runs import REPORT_PREDICTIONS

    with open(report_dir / REPORT_PREDICTIONS, newline="") as fh:
        rows = list(csv.DictReader(fh))
    labels = np.array([int(r["label"]) for r in rows])
    probs = np.array([float(r["probability"]) for r in rows])
    return expected_calibration_error(labels, apply_temperature(probs, 1.0 / float(read_meta(run).temperature or 1.0)))


def print_points(rows: list[dict]) -> None:
    """Mean ± sd over seeds of each operating point of the same models, and ECE at temperature 1."""
    print("\n| data | operating point | accuracy | sensitivity | specificity |\n|---|---|---|---|---|")
    uncalibrated = []
    for name in dict.fromkeys(r["data"] for r in rows):
        group = [r for r in rows if r["data"] == name and "points" in r]
        for point in dict.fromkeys(p for r in group for p in r["points"]):
            cells = []
            for m in POINT_METRICS:
                values = [r["points"][point][m] for r in group if r["points"].get(point, {}).get(m) is not None]
                cells.append(f"{statistics.fmean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0:.3f}"
                             if values else "–")
            print(f"| {name} | {point} | " + " | ".join(cells) + " |")
        eces = [r["ece_temperature_1"] for r in group if r.get("ece_temperature_1") is not None]
        if eces:
            uncalibrated.append(f"{name} {statistics.fmean(eces):.3f} ± "
                                f"{statistics.stdev(eces) if len(eces) > 1 else 0:.3f}")
    if uncalibrated:
        print("\nECE at temperature 1 (without the model's temperature): " + "; ".join(uncalibrated))


def fmt(entry: dict | None) -> str:
    if not entry or entry.get("value") is None:
        return "–"
    low, high = entry.get("low"), entry.get("high")
    if low is None or high is None:
        return f"{entry['value']:.3f}"
    return f"{entry['value']:.3f} [{low:.3f}, {high:.3f}]"


def print_table(rows: list[dict]) -> dict:
    """Print the per-seed table and the mean ± sd per data set; return the summary."""
    print()
    print("| data | seed | ROC-AUC | accuracy | sensitivity | specificity | ECE | threshold | train s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['data']} | {r['seed']} | " + " | ".join(fmt(r[m]) for m in METRICS)
              + f" | {r['threshold']:.3f} | {r['train_s']:.0f} |")
    summary: dict = {}
    for name in dict.fromkeys(r["data"] for r in rows):
        group = [r for r in rows if r["data"] == name]
        summary[name] = {}
        for m in (*METRICS, "threshold"):
            values = [r[m]["value"] if isinstance(r[m], dict) else r[m] for r in group]
            values = [v for v in values if v is not None]
            if values:
                summary[name][m] = {"mean": statistics.fmean(values),
                                    "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                                    "min": min(values), "max": max(values)}
        print(f"| {name} | mean ± sd of {len(group)} | " + " | ".join(
            f"{summary[name][m]['mean']:.3f} ± {summary[name][m]['sd']:.3f}" if m in summary[name] else "–"
            for m in (*METRICS, "threshold")) + " | |")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path(os.environ.get("PNEUMOSCAN_DATA", "../shared/data/chest_xray")),
                        help="Kermany-style folder with train/, val/ and test/ (default ../shared/data/chest_xray)")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ...)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a training option of the default recipe (repeatable)")
    parser.add_argument("--extra", action="append", type=Path, default=[],
                        help="another labelled folder or manifest to evaluate on (repeatable)")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("bench/out/generalisation"))
    parser.add_argument("--no-heldout", action="store_true",
                        help="train on train+val without holding patients out (as `pneumoscan train` does)")
    parser.add_argument("--runs", nargs="+", type=Path, metavar="RUN",
                        help="evaluate these existing run folders of this bench instead of training")
    parser.add_argument("--combine", nargs="+", type=Path, metavar="JSON",
                        help="print one table from generalisation.json files of earlier runs (seeds run apart)")
    args = parser.parse_args(argv)
    if args.combine:
        rows = [row for path in args.combine for row in json.loads(path.read_text())["rows"]]
        order = list(dict.fromkeys(r["data"] for r in rows))
        rows.sort(key=lambda r: (order.index(r["data"]), r["seed"]))
        print_table(rows)
        print_points(rows)
        return 0

    from pneumoscan.training import TrainConfig, train

    root = args.root
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        print(f"{root}: needs train/ and test/ folders (the shared Kermany data)", file=sys.stderr)
        return 2
    overrides = parse_set(args.set)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    # The view stays beside the runs: their split.csv lists images through it, for later --runs.
    data = train_only_view(root, args.out / "view")
    jobs = args.runs or list(range(args.first_seed, args.first_seed + args.seeds))
    for job in jobs:
        if isinstance(job, Path):  # an earlier run of this bench: evaluate only
            from pneumoscan.config_files import load_config

            run, wall = job, trained_seconds(job)
            seed = load_config(TrainConfig, run / "config.yaml").seed
            held_out = load_config(TrainConfig, run / "config.yaml").test_fraction > 0
        else:
            seed, held_out = job, not args.no_heldout
            config = replace(TrainConfig(), **overrides, seed=seed, out=str(args.out / "runs"), progress=False,
                             data=str(data if held_out else root),
                             test_fraction=TrainConfig().test_fraction if held_out else 0.0)
            started = time.perf_counter()
            run = train(config)
            wall = time.perf_counter() - started
        targets = [("new site (test/)", root / "test", "all")]
        if held_out:
            targets.append(("held-out patients", None, "test"))
        targets += [(str(extra), extra, "all") for extra in args.extra]
        for name, folder, split in targets:
            report_dir = run / "reports" / re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
            row = evaluate_on(run, folder, split, report_dir, args.bootstrap)
            rows.append({"seed": seed, "data": name, "train_s": round(wall, 1), "run": str(run), **row})
            print(f"seed {seed} | {name:18s} | " + " | ".join(f"{m} {fmt(row[m])}" for m in METRICS)
                  + f" | thr {row['threshold']:.3f} | train {wall:.0f}s", flush=True)
    summary = print_table(rows)
    print_points(rows)
    from pneumoscan.provenance import library_versions

    result = {"overrides": overrides, "seeds": sorted({r["seed"] for r in rows}),
              "rows": rows, "summary": summary, "versions": library_versions(),
              "disclaimer": "research figures; pneumoscan is not a diagnostic device"}
    (args.out / "generalisation.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"\nwritten {args.out / 'generalisation.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
