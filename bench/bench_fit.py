"""How a trained model sees full-size radiographs under each way of making them square.

    .venv/bin/python bench/bench_fit.py runs/latest

Scores the 150 full-resolution originals of ../shared/data/chest_xray_originals at the model's stored
threshold with fit = pad, stretch and crop. The Kermany training copies were stretched to 224 x 224 by
their re-publisher, so a model trained on them sees stretched anatomy; this measures what the other
fits cost. The originals are the same studies as some training images: compare the rows, not the
absolute figures. Never run by pytest.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

import pneumoscan

REPO = Path(__file__).resolve().parents[1]


def main(run: str = "runs/latest") -> None:
    files = sorted(str(p) for p in (REPO.parent / "shared" / "data" / "chest_xray_originals").glob("*/*"))
    labels = np.array([0 if "/NORMAL/" in f else 1 for f in files])
    model = pneumoscan.load(run)
    print(f"{len(files)} originals, model {model.meta.name} at {model.image_size}px (stored fit: {model.meta.fit}), "
          f"threshold {model.threshold:.3f}")
    print("fit       roc_auc  sensitivity  specificity")
    for fit in ("pad", "stretch", "crop"):
        model.meta.fit = fit
        probs = np.array([row.probability for row in model.predict(files)])
        positive = probs >= model.threshold
        print(f"{fit:8s}  {roc_auc_score(labels, probs):7.3f}  {positive[labels == 1].mean():11.3f}  "
              f"{(~positive[labels == 0]).mean():11.3f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
