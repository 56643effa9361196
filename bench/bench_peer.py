"""Score the Keras peer CNN on a test directory: ROC-AUC, accuracy, sensitivity, specificity, ECE.

Runs in the peer's own environment (TensorFlow), not pneumoscan's, and imports nothing from pneumoscan:

    /tmp/peer/bin/python bench/bench_peer.py TRAIN VAL TEST [epochs] [size] [--out FILE]

The peer script (``../shared/peers/seed_keras_baseline.py``) runs unchanged through ``runpy``; this
wrapper reads the test probabilities ``p``, labels ``y_true`` and file order (``test.file_paths``) it
leaves behind. Sensitivity and specificity are at the peer's threshold 0.5; ECE uses 10 equal-width
bins of the predicted probability. 95% intervals come from 1000 resamples of patients (Kermany file
names: ``person1449_bacteria_3745`` -> ``person1449_bacteria``, ``IM-0312-0001`` -> ``IM-0312``).
Prints one JSON line and writes it to --out (default bench/out/peer.json).

pneumoscan is a research tool, not a diagnostic device; neither is this peer.
"""

import json
import os
import re
import runpy
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".." / "shared" / "peers" / "seed_keras_baseline.py"


def patient(path):
    stem = Path(path).stem
    return stem.rsplit("_", 1)[0] if stem.startswith("person") else re.sub(r"-\d+$", "", stem)


def ece(y, p, bins=10):
    idx = np.minimum((p * bins).astype(int), bins - 1)
    return float(
        sum(
            (idx == b).mean() * abs(p[idx == b].mean() - y[idx == b].mean())
            for b in range(bins)
            if (idx == b).any()
        )
    )


def metrics(y, p):
    pred = p >= 0.5
    return {
        "auc": float(roc_auc_score(y, p)),
        "acc": float((pred == y).mean()),
        "sensitivity": float(pred[y == 1].mean()),
        "specificity": float((~pred[y == 0]).mean()),
        "ece": ece(y, p),
    }


def bootstrap(y, p, groups, n=1000, seed=0):
    rng, ids = np.random.default_rng(seed), np.unique(groups)
    rows = {g: np.flatnonzero(groups == g) for g in ids}
    draws = []
    for _ in range(n):
        i = np.concatenate([rows[g] for g in rng.choice(ids, len(ids))])
        if 0 < y[i].sum() < len(i):
            draws.append(metrics(y[i], p[i]))
    return {
        k: [round(float(np.percentile([d[k] for d in draws], q)), 4) for q in (2.5, 97.5)] for k in draws[0]
    }


def main(argv):
    out = Path("bench/out/peer.json")
    if "--out" in argv:
        i = argv.index("--out")
        out, argv = Path(argv[i + 1]), argv[:i] + argv[i + 2 :]
    sys.argv = [str(SCRIPT), *argv]
    t0 = time.perf_counter()
    g = runpy.run_path(str(SCRIPT), run_name="__main__")
    wall = time.perf_counter() - t0
    y, p = np.asarray(g["y_true"]).astype(int), np.asarray(g["p"], dtype=float)
    files = list(g["test"].file_paths)
    assert len(files) == len(y), (len(files), len(y))
    assert all((Path(f).parent.name == "PNEUMONIA") == bool(t) for f, t in zip(files, y, strict=True))
    groups = np.array([patient(f) for f in files])
    res = {
        "peer": "seed-keras-cnn",
        "test_dir": argv[2],
        "epochs": g["epochs"],
        "size": g["size"],
        "n_images": len(y),
        "n_patients": len(set(groups)),
        "wall_s": round(wall, 1),
        "train_s": round(g["train_s"], 1),
        **{k: round(v, 4) for k, v in metrics(y, p).items()},
        "ci95": bootstrap(y, p, groups),
    }
    line = json.dumps(res)
    print(line)
    os.makedirs(out.parent, exist_ok=True)
    out.write_text(line + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
