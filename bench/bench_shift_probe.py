"""What moves a model's scores: the same labelled images under controlled acquisition changes.

Each probe changes every image the same way (framing: crop or pad the border; tone: gamma, histogram
equalisation, a darker or brighter black level; a horizontal flip) before the model's own preprocessing,
then prints ROC-AUC and, at the model's stored threshold, sensitivity and specificity, with the median
and 90th percentile of the NORMAL images' scores. A model that relies on framing or on the exposure curve
shows it here: its normal radiographs score higher when only the border or the tone curve changes::

    python bench/bench_shift_probe.py runs/latest --data ../shared/data/chest_xray/test

Research figures; pneumoscan is not a diagnostic device.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads burn a shared machine's cores


def _crop(share: float) -> Callable[[np.ndarray], np.ndarray]:
    def crop(a: np.ndarray) -> np.ndarray:
        h, w = a.shape
        dh, dw = int(h * share / 2), int(w * share / 2)
        return a[dh:h - dh, dw:w - dw]
    return crop


def _pad(share: float) -> Callable[[np.ndarray], np.ndarray]:
    def pad(a: np.ndarray) -> np.ndarray:
        h, w = a.shape
        return np.pad(a, ((int(h * share), int(h * share)), (int(w * share), int(w * share))))
    return pad


def _gamma(g: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda a: np.round(255.0 * (a / 255.0) ** g).astype(np.uint8)


def _equalize(a: np.ndarray) -> np.ndarray:
    from PIL import Image, ImageOps

    return np.asarray(ImageOps.equalize(Image.fromarray(a)))


PROBES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "as is": lambda a: a,
    "horizontal flip": lambda a: np.ascontiguousarray(a[:, ::-1]),
    "crop 10 % of the border": _crop(0.10),
    "crop 20 % of the border": _crop(0.20),
    "pad 8 % black border": _pad(0.08),
    "gamma 0.7 (brighter)": _gamma(0.7),
    "gamma 1.4 (darker)": _gamma(1.4),
    "histogram equalisation": _equalize,
    "black level -12": lambda a: np.clip(a.astype(np.int16) - 12, 0, 255).astype(np.uint8),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="run folder or model file")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/chest_xray/test"),
                        help="a class-folder dataset (NORMAL/, PNEUMONIA/)")
    parser.add_argument("--point", metavar="RULE",
                        help="decide at this stored operating point (e.g. sens95-median) instead of the stored "
                             "threshold, to compare models trained under different threshold rules")
    args = parser.parse_args(argv)

    from sklearn.metrics import roc_auc_score

    import pneumoscan
    from pneumoscan.data import load_dataset
    from pneumoscan.data.image import read_image

    if not args.data.is_dir():
        print(f"{args.data}: not a folder (the shared Kermany data?)", file=sys.stderr)
        return 2
    samples = [s for s in load_dataset(args.data).samples if s.label is not None]
    model = pneumoscan.load(args.model)
    labels = np.array([s.label for s in samples])
    images = [np.asarray(read_image(s.path)) for s in samples]  # full size, grey, before the model's resize
    threshold = model.threshold
    if args.point:
        points = model.meta.operating_points
        if args.point not in points:
            print(f"{args.model}: no stored point {args.point!r} (it has: {', '.join(points)})", file=sys.stderr)
            return 2
        threshold = points[args.point]
    print(f"{model!r}\n{len(samples)} images of {args.data}; threshold {threshold:.3f} "
          f"({args.point or 'stored'})\n")
    print("| probe | ROC-AUC | sensitivity | specificity | NORMAL median | NORMAL p90 | PNEUMONIA median |")
    print("|---|---|---|---|---|---|---|")
    for name, probe in PROBES.items():
        probs = np.asarray(model.predict_proba([probe(a) for a in images]), dtype=np.float64).reshape(-1)
        called = probs >= threshold
        normal, pneumonia = probs[labels == 0], probs[labels == 1]
        print(f"| {name} | {roc_auc_score(labels, probs):.3f} | {called[labels == 1].mean():.3f} | "
              f"{(~called[labels == 0]).mean():.3f} | {np.median(normal):.3f} | {np.quantile(normal, 0.9):.3f} | "
              f"{np.median(pneumonia):.3f} |", flush=True)
    print("\nResearch figures; pneumoscan is not a diagnostic device.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
