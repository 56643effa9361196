"""Site calibration on a small sample: does re-fitting the threshold on 40 of a site's images pay?

For each of N random draws, 20 NORMAL and 20 PNEUMONIA images (whole patients) are taken from the
site folder, ``pneumoscan calibrate``'s fitting (``fit_site_calibration``) runs on them, and the
calibrated and the uncalibrated model are both scored on the rest of the site's images (no patient of
the sample among them). Prints mean and standard deviation over the draws::

    python bench/bench_calibrate.py runs/latest --data ../shared/data/chest_xray/test --draws 20

Research figures; pneumoscan is not a diagnostic device.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

METRICS = ("accuracy", "sensitivity", "specificity", "balanced_accuracy")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="run folder or model file")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/chest_xray/test"))
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--target-sensitivity", type=float, default=0.95)
    parser.add_argument("--out", type=Path, default=Path("bench/out/calibrate.json"))
    args = parser.parse_args(argv)

    import pneumoscan
    from pneumoscan.data import build_cache, load_dataset
    from pneumoscan.evaluation import metrics as M
    from pneumoscan.evaluation.calibrate import fit_site_calibration
    from pneumoscan.evaluation.operating import apply_temperature

    classifier = pneumoscan.load(args.model)
    meta = classifier.meta
    samples = [s for s in load_dataset(args.data).samples if s.label is not None]
    images, kept = build_cache(samples, meta.image_size, meta.fit, progress=False).subset(None)
    scored = classifier.predict_proba(images)
    raw = apply_temperature(scored, 1.0 / float(meta.temperature or 1.0))  # back to temperature 1
    labels = np.array([s.label for s in kept])
    patients = np.array([s.patient_id for s in kept])
    rng = np.random.default_rng(0)
    rows = []
    for draw in range(args.draws):
        chosen: set[str] = set()
        for label in (0, 1):
            pool = sorted({p for p, y in zip(patients, labels, strict=True) if y == label})
            rng.shuffle(pool)
            count = 0
            for p in pool:
                if count >= args.per_class:
                    break
                chosen.add(p)
                count += int((patients == p).sum())
        sample = np.isin(patients, list(chosen))
        rest = ~sample
        fitted = fit_site_calibration(labels[sample], raw[sample], patients[sample], args.target_sensitivity,
                                      resamples=500, seed=draw)
        calibrated = apply_temperature(raw[rest], fitted.temperature)
        row = {"draw": draw, "sample_images": int(sample.sum()), "rest_images": int(rest.sum())}
        for name, probs, threshold in (("uncalibrated", scored[rest], meta.threshold),
                                       ("calibrated", calibrated, fitted.threshold)):
            at = M.threshold_metrics(labels[rest], probs, threshold)
            row[name] = {m: float(at[m]) for m in METRICS}
            row[name]["ece"] = float(M.expected_calibration_error(labels[rest], probs))
            row[name]["threshold"] = float(threshold)
        rows.append(row)
    print(f"{args.draws} draws of {args.per_class} images per class from {args.data} "
          f"({len(kept)} images); model {args.model}")
    print("| version | " + " | ".join(METRICS) + " | ECE | threshold |")
    print("|---|" + "---|" * (len(METRICS) + 2))
    summary = {}
    for name in ("uncalibrated", "calibrated"):
        summary[name] = {}
        for m in (*METRICS, "ece", "threshold"):
            values = [r[name][m] for r in rows]
            summary[name][m] = {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                                "min": min(values)}
        print(f"| {name} | " + " | ".join(f"{summary[name][m]['mean']:.3f} ± {summary[name][m]['sd']:.3f}"
                                          for m in (*METRICS, "ece", "threshold")) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "summary": summary, "model": str(args.model),
                                    "data": str(args.data), "target_sensitivity": args.target_sensitivity}, indent=2))
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
