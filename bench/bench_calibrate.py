"""Site calibration on a small sample: can re-fitting on 40 of a site's images make the model worse?

Two kinds of draws, 20 of each by default, each calibrated with ``pneumoscan calibrate``'s fitting
(``fit_site_calibration``, with the model's own temperature and threshold) and scored, calibrated and
not, on the rest of the site's images (no patient of the sample among them, as ``evaluate`` of a
calibrated version does; the sensitivity where only the sample's own images leave the rest is printed too):

- **random**: 20 NORMAL and 20 PNEUMONIA patients (all their images) drawn at random;
- **easiest**: 20 NORMAL images drawn from the 40 lowest-scored ones and 20 PNEUMONIA images from the
  40 highest-scored ones, one per patient (the easy cases a good model meets often: the sample is
  usually separable).

Each image is scored once (the probabilities are cached in ``bench/out/``, keyed by the model file and
the images), so a rerun takes seconds. Prints, per kind, the mean and standard deviation over the draws,
and the checks: mean accuracy not below the uncalibrated model's, sensitivity >= 0.93 in at least 18 of
20 draws, no threshold >= 0.99, no probability saturated to 0 or 1::

    python bench/bench_calibrate.py                   # the bundled model
    python bench/bench_calibrate.py runs/latest --data ../shared/data/chest_xray/test --draws 20
    python bench/bench_calibrate.py --threshold 0.9   # a stored threshold too strict for the site

Research figures; pneumoscan is not a diagnostic device.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
from collections import Counter
from pathlib import Path

import numpy as np

METRICS = ("accuracy", "sensitivity", "specificity", "balanced_accuracy")
SENSITIVITY_FLOOR = 0.93


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default=None, help="run folder or model file (default: the bundled model)")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/chest_xray/test"))
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--per-class", type=int, default=20, help="patients per class in each sample")
    parser.add_argument("--easiest", type=int, default=40, help="the easiest-case draws pick from this many per class")
    parser.add_argument("--target-sensitivity", type=float, default=0.95)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--threshold", type=float, default=None,
                        help="use this stored threshold instead of the model's (a model whose threshold does not fit "
                             "the site: does calibration move it?)")
    parser.add_argument("--out", type=Path, default=Path("bench/out/calibrate.json"))
    args = parser.parse_args(argv)

    from pneumoscan.evaluation import metrics as M
    from pneumoscan.evaluation.calibrate import fit_site_calibration
    from pneumoscan.evaluation.operating import apply_temperature

    meta, scored, labels, patients, model_name = _scores(args.model, args.data, args.out.parent)
    temperature = float(meta.temperature or 1.0)
    if args.threshold is not None:
        from dataclasses import replace

        meta = replace(meta, threshold=args.threshold)
    raw = apply_temperature(scored, 1.0 / temperature)  # back to temperature 1
    rng = np.random.default_rng(0)
    draws = {"random": [_random_draw(rng, labels, patients, args.per_class) for _ in range(args.draws)],
             "easiest": [_easiest_draw(rng, scored, labels, patients, args.easiest, args.per_class) for _ in range(args.draws)]}
    print(f"{args.draws} draws of each kind, {args.per_class} images per class, from {args.data} ({len(labels)} images: "
          f"{int((labels == 0).sum())} NORMAL, {int(labels.sum())} PNEUMONIA); model {model_name} "
          f"(threshold {meta.threshold:.4f}, temperature {temperature:.3f}); target sensitivity {args.target_sensitivity:g}")
    results, verdicts = {}, []
    for kind, chosen in draws.items():
        rows = []
        for i, picked in enumerate(chosen):
            sample = np.isin(patients, patients[picked])  # the sample's patients: none of them in the rest
            rest = ~sample
            fitted = fit_site_calibration(labels[picked], raw[picked], patients[picked], args.target_sensitivity,
                                          resamples=args.resamples, seed=i, model_temperature=temperature,
                                          model_threshold=float(meta.threshold))
            calibrated = apply_temperature(raw[rest], fitted.temperature)
            row = {"draw": i, "sample_images": len(picked), "rest_images": int(rest.sum()),
                   "separable": fitted.separable, "threshold_source": fitted.threshold_source,
                   "temperature": fitted.temperature, "threshold_estimate": fitted.threshold_estimate}
            for name, probs, threshold in (("uncalibrated", scored[rest], float(meta.threshold)),
                                           ("calibrated", calibrated, fitted.threshold)):
                at = M.threshold_metrics(labels[rest], probs, threshold)
                row[name] = {m: float(at[m]) for m in METRICS}
                row[name]["ece"] = float(M.expected_calibration_error(labels[rest], probs))
                row[name]["threshold"] = float(threshold)
                row[name]["saturated"] = int(((probs <= 1e-6) | (probs >= 1 - 1e-6)).sum())
            # The rest without the sample's images only (their patients' other images kept): a milder split.
            images_only = np.ones(len(labels), dtype=bool)
            images_only[picked] = False
            for name, probs, threshold in (("uncalibrated", scored[images_only], float(meta.threshold)),
                                           ("calibrated", apply_temperature(raw[images_only], fitted.temperature),
                                            fitted.threshold)):
                row[name]["sensitivity_images_only"] = float(
                    M.threshold_metrics(labels[images_only], probs, threshold)["sensitivity"])
            rows.append(row)
        results[kind] = rows
        verdicts += _print_kind(kind, rows)
    print()
    for line in verdicts:
        print(line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"draws": results, "model": model_name, "data": str(args.data),
                                    "target_sensitivity": args.target_sensitivity}, indent=2))
    print(f"written {args.out}")
    return 0


def _scores(model: str | None, data: Path, cache_dir: Path):
    """(meta, probabilities, labels, patients, model name) of every labelled image of ``data``, scored once."""
    import pneumoscan
    from pneumoscan.data import load_dataset
    from pneumoscan.inference import resolve_model

    model_file = resolve_model(model).path
    name = "the bundled default" if model is None else str(model)
    samples = [s for s in load_dataset(data).samples if s.label is not None]
    key = hashlib.sha256(model_file.read_bytes())
    for s in samples:
        key.update(f"{Path(s.path).resolve()}|{s.label}|{s.patient_id}\n".encode())
    cache = cache_dir / f"calibrate-scores-{key.hexdigest()[:16]}.npz"
    classifier = pneumoscan.load(model_file)
    if cache.is_file():
        stored = np.load(cache)
        return classifier.meta, stored["probs"], stored["labels"], stored["patients"], name
    from pneumoscan.data import build_cache

    meta = classifier.meta
    images, kept = build_cache(samples, meta.image_size, meta.fit, progress=False).subset(None)
    probs = np.asarray(classifier.predict_proba(images), dtype=np.float64)
    labels = np.array([s.label for s in kept], dtype=np.int64)
    patients = np.array([s.patient_id for s in kept], dtype=str)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, probs=probs, labels=labels, patients=patients)
    return meta, probs, labels, patients, name


def _random_draw(rng, labels: np.ndarray, patients: np.ndarray, per_class: int) -> np.ndarray:
    """Whole patients of each class, drawn at random until the class has ``per_class`` patients (calibrate
    counts patients)."""
    picked = []
    for label in (0, 1):
        pool = sorted({p for p, y in zip(patients, labels, strict=True) if y == label})
        rng.shuffle(pool)
        for p in pool[:per_class]:
            picked.extend(np.flatnonzero((patients == p) & (labels == label)).tolist())
    return np.array(picked)


def _easiest_draw(rng, scored: np.ndarray, labels: np.ndarray, patients: np.ndarray, easiest: int,
                  per_class: int) -> np.ndarray:
    """``per_class`` of the ``easiest`` lowest-scored NORMAL and highest-scored PNEUMONIA images, each of
    its own patient (calibrate counts patients: its easiest image stands for each)."""
    def easiest_of(rows: np.ndarray) -> np.ndarray:
        _, first = np.unique(patients[rows], return_index=True)  # rows come easiest first
        return rows[np.sort(first)][:easiest]

    normal, pneumonia = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    normal = easiest_of(normal[np.argsort(scored[normal], kind="stable")])
    pneumonia = easiest_of(pneumonia[np.argsort(-scored[pneumonia], kind="stable")])
    return np.concatenate([rng.choice(normal, per_class, replace=False), rng.choice(pneumonia, per_class, replace=False)])


def _print_kind(kind: str, rows: list[dict]) -> list[str]:
    print(f"\n{kind} draws ({len(rows)}; rest of the site {min(r['rest_images'] for r in rows)}-"
          f"{max(r['rest_images'] for r in rows)} images)\n")
    print("| version | " + " | ".join(METRICS) + " | ECE | threshold |")
    print("|---|" + "---|" * (len(METRICS) + 2))
    means = {}
    for name in ("uncalibrated", "calibrated"):
        cells = []
        for m in (*METRICS, "ece", "threshold"):
            values = [r[name][m] for r in rows]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            means[(name, m)] = statistics.fmean(values)
            cells.append(f"{means[(name, m)]:.3f} ± {sd:.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    sources = Counter(r["threshold_source"] for r in rows)
    separable = sum(r["separable"] for r in rows)
    temperatures = [r["temperature"] for r in rows]
    estimates = [r["threshold_estimate"] for r in rows]
    print(f"\nthreshold kept (the model's own) in {sources['model']} draws, set by the sample in {sources['site']}; "
          f"separable samples {separable}; temperature {min(temperatures):.3f}-{max(temperatures):.3f}; the samples' "
          f"own estimates {min(estimates):.3f}-{max(estimates):.3f}")
    sensitive = sum(r["calibrated"]["sensitivity"] >= SENSITIVITY_FLOOR for r in rows)
    top = max(r["calibrated"]["threshold"] for r in rows)
    saturated = sum(r["calibrated"]["saturated"] for r in rows)
    accuracy_ok = means[("calibrated", "accuracy")] >= means[("uncalibrated", "accuracy")] - 1e-12
    return [
        f"{kind}: mean accuracy calibrated {means[('calibrated', 'accuracy')]:.4f} vs uncalibrated "
        f"{means[('uncalibrated', 'accuracy')]:.4f}: {'PASS' if accuracy_ok else 'FAIL'}",
        f"{kind}: sensitivity >= {SENSITIVITY_FLOOR} in {sensitive} of {len(rows)} draws (uncalibrated: "
        f"{sum(r['uncalibrated']['sensitivity'] >= SENSITIVITY_FLOOR for r in rows)}): "
        f"{'PASS' if sensitive >= 0.9 * len(rows) else 'FAIL'}",
        f"{kind}: the same where only the sample's images (not their patients' others) leave the rest: "
        f"{sum(r['calibrated']['sensitivity_images_only'] >= SENSITIVITY_FLOOR for r in rows)} of {len(rows)} "
        f"(uncalibrated: {sum(r['uncalibrated']['sensitivity_images_only'] >= SENSITIVITY_FLOOR for r in rows)}; "
        f"mean sensitivity {statistics.fmean(r['calibrated']['sensitivity_images_only'] for r in rows):.3f})",
        f"{kind}: highest calibrated threshold {top:.4f}, probabilities saturated (<= 1e-6 or >= 1 - 1e-6) "
        f"{saturated}: {'PASS' if top < 0.99 and saturated == 0 else 'FAIL'}",
    ]


if __name__ == "__main__":
    sys.exit(main())
