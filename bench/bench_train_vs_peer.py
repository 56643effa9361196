"""Time to quality: pneumoscan's default recipe and the Keras peer, side by side, on one patient-level split.

    .venv/bin/python bench/bench_train_vs_peer.py                    # full: ~10 min peer + ~7 min pneumoscan
    .venv/bin/python bench/bench_train_vs_peer.py --skip-peer        # only pneumoscan from scratch: time to 0.98
    .venv/bin/python bench/bench_train_vs_peer.py --limit 300 --peer-epochs 1 -- --epochs 1   # check it works

The split: 10% of patients (per class) are held out as test and 10% are the validation
set, both with ``pneumoscan.data.split_by_patient``. pneumoscan reads it as a manifest (``--split source``),
the peer as symlinked class folders. The peer runs unchanged through ``bench/peer_epoch_auc.py``, which
records its validation AUC after each epoch. Both are timed from the start of fitting (``wall_s``); the
whole-process time, which adds imports and for pneumoscan the one-off decoding into the cache (a fresh
cache folder is used), is reported too. Prints a table and a JSON line, writes ``auc_vs_time.png``.
Arguments after ``--`` go to ``pneumoscan train``. Never run by pytest.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TARGET = 0.98


def build_split(root: Path, out: Path, seed: int, limit: int | None) -> dict[str, list]:
    from pneumoscan.data import load_dataset, split_by_patient
    from pneumoscan.data.manifest import write_manifest

    index = load_dataset(root)
    # The same split `pneumoscan train` makes: 10% of patients held out as test, 10% as validation.
    pool = [s.with_split(None) for s in index.samples if s.split != "test"]
    split = split_by_patient(pool, val_fraction=0.1, seed=seed, test_fraction=0.1)
    splits = {name: [s for s in split if s.split == name] for name in ("train", "val", "test")}
    if limit:
        rng = np.random.default_rng(seed)
        splits = {k: [v[i] for i in sorted(rng.choice(len(v), min(limit, len(v)), replace=False))]
                  for k, v in splits.items()}
    write_manifest([s for v in splits.values() for s in v], out / "split.csv")
    for split, samples in splits.items():  # the peer reads class folders
        for s in samples:
            folder = out / "peer_data" / split / ("PNEUMONIA" if s.label else "NORMAL")
            folder.mkdir(parents=True, exist_ok=True)
            link = folder / Path(s.path).name
            n = 1
            while link.exists() or link.is_symlink():
                link, n = folder / f"{n}-{Path(s.path).name}", n + 1
            link.symlink_to(Path(s.path).resolve())
    return splits


def first_time_at(curve: list[tuple[float, float]], target: float) -> float | None:
    return next((t for t, auc in curve if auc >= target), None)


def auc_at(curve: list[tuple[float, float]], seconds: float) -> float | None:
    before = [auc for t, auc in curve if t <= seconds]
    return max(before) if before else None


def run_peer(args, out: Path) -> dict:
    data = out / "peer_data"
    command = [args.peer_python, str(REPO / "bench" / "peer_epoch_auc.py"), str(args.peer_script),
               str(data / "train"), str(data / "val"), str(data / "test"), str(args.peer_epochs), str(args.peer_size)]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    total = time.perf_counter() - start
    (out / "peer.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        sys.exit(f"the peer failed (see {out / 'peer.log'}):\n{proc.stderr[-2000:]}")
    epochs = [json.loads(line.split(" ", 1)[1]) for line in proc.stdout.splitlines() if line.startswith("PEER_EPOCH ")]
    final = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    kept = min(epochs, key=lambda e: e["val_loss"])  # the peer keeps its best checkpoint by validation loss
    return {"curve": [(e["wall_s"], e["val_auc"]) for e in epochs], "process_s": total, "final": final,
            "kept_epoch": kept["epoch"], "kept_val_auc": kept["val_auc"],
            # the peer's own train_s includes our per-epoch scoring; its last corrected wall time does not
            "fit_s": epochs[-1]["wall_s"]}


def run_pneumoscan(args, out: Path) -> dict:
    env = {**os.environ, "PNEUMOSCAN_CACHE": str(out / "cache")}
    env.pop("PNEUMOSCAN_RUN_DIR", None)
    name = f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    command = [sys.executable, "-m", "pneumoscan", "train", "--data", str(out / "split.csv"), "--split", "source",
               "--out", str(out / "runs"), "--run-name", name, "--no-progress", *args.train_args]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    total = time.perf_counter() - start
    (out / "pneumoscan.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        sys.exit(f"pneumoscan train failed (see {out / 'pneumoscan.log'}):\n{proc.stderr[-2000:]}")
    run = out / "runs" / name
    with open(run / "history.csv", newline="") as fh:
        history = list(csv.DictReader(fh))
    meta = json.loads((run / "model.json").read_text())
    return {"run": str(run), "curve": [(float(r["wall_s"]), float(r["val_auc"])) for r in history],
            "process_s": total, "fit_s": float(history[-1]["wall_s"]), "val": meta["val_metrics"], "meta": meta}


def heldout_metrics(run: str, samples: list) -> dict:
    import pneumoscan
    from pneumoscan.training.metrics import binary_summary

    model = pneumoscan.load(run)
    predictions = model.predict([str(s.path) for s in samples])
    labels = np.array([s.label for s, p in zip(samples, predictions, strict=True) if p.probability is not None])
    probs = np.array([p.probability for p in predictions if p.probability is not None])
    return {"at_threshold": binary_summary(labels, probs, model.threshold), "at_0.5": binary_summary(labels, probs, 0.5)}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pneumoscan.provenance import DISCLAIMER

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, style in (("pneumoscan", "-o"), ("peer", "-s")):
        if name in results:
            t, auc = zip(*results[name]["curve"], strict=True)
            ax.plot(t, auc, style, ms=4, label=f"{name} ({results[name]['label']})")
    ax.axhline(TARGET, color="gray", lw=0.8, ls="--")
    ax.set_xlabel("training wall time (s, from the start of fitting)")
    ax.set_ylabel("validation ROC-AUC (patient-level split)")
    ax.set_ylim(max(0.5, ax.get_ylim()[0]), 1.0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.text(0.5, 0.005, DISCLAIMER, ha="center", fontsize=5, wrap=True)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "chest_xray")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "train_vs_peer")
    parser.add_argument("--peer-python", default="/tmp/peer/bin/python")
    parser.add_argument("--peer-script", type=Path, default=REPO.parent / "shared" / "peers" / "seed_keras_baseline.py")
    parser.add_argument("--peer-epochs", type=int, default=10)
    parser.add_argument("--peer-size", type=int, default=150)
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--limit", type=int, help="at most this many images per split (quick check)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("train_args", nargs="*", help="after --: extra options for pneumoscan train")
    args = parser.parse_args()
    out = args.out / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    splits = build_split(args.data, out, args.seed, args.limit)
    print("split: " + ", ".join(f"{k} {len(v)} images / {len({s.patient_id for s in v})} patients"
                                  for k, v in splits.items()) + f"; load average {os.getloadavg()[0]:.1f}")
    results: dict = {}
    if not args.skip_peer:
        peer = run_peer(args, out)
        peer["label"] = f"Keras seed CNN, {args.peer_epochs} epochs at {args.peer_size}px"
        results["peer"] = peer
        print(f"peer: fit {peer['fit_s']:.0f}s without our AUC scoring, {peer['final']['train_s']:.0f}s with it (process {peer['process_s']:.0f}s), kept epoch {peer['kept_epoch']} "
              f"val AUC {peer['kept_val_auc']:.4f}; held-out {json.dumps(peer['final'])}")
    ours = run_pneumoscan(args, out)
    ours["label"] = f"{ours['meta']['name']} at {ours['meta']['image_size']}px"
    ours["heldout"] = heldout_metrics(ours["run"], splits["test"])
    results["pneumoscan"] = ours
    val = ours["val"]
    print(f"pneumoscan: fit {ours['fit_s']:.0f}s (process {ours['process_s']:.0f}s), best epoch {val['best_epoch']}: "
          f"val AUC {val['auc']:.4f} acc {val['accuracy']:.4f} sens {val['sensitivity']:.4f} "
          f"spec {val['specificity']:.4f} (threshold {val['threshold']:.3f}, Youden on validation)")
    t98 = first_time_at(ours["curve"], TARGET)
    print(f"pneumoscan: first validation AUC >= {TARGET}: " + (f"{t98:.0f}s after the start of fitting" if t98
                                                                else "not reached"))
    h = ours["heldout"]["at_threshold"]
    print(f"pneumoscan held-out: AUC {h['auc']:.4f} acc {h['accuracy']:.4f} sens {h['sensitivity']:.4f} "
          f"spec {h['specificity']:.4f} ({h['images']} images)")
    summary = {"pneumoscan_fit_s": ours["fit_s"], "pneumoscan_val": val, "pneumoscan_time_to_0.98_s": t98,
               "pneumoscan_heldout": ours["heldout"], "load_average": os.getloadavg()[0]}
    if "peer" in results:
        peer = results["peer"]
        target = peer["kept_val_auc"]
        reach = first_time_at(ours["curve"], target)
        at_equal = auc_at(ours["curve"], peer["fit_s"])
        summary.update({"peer_fit_s": peer["fit_s"], "peer_kept_val_auc": target, "peer_heldout": peer["final"],
                        "pneumoscan_time_to_peer_auc_s": reach, "pneumoscan_auc_at_peer_time": at_equal,
                        "time_ratio": reach / peer["fit_s"] if reach else None})
        peer_aucs = [auc for _, auc in peer["curve"]]
        targets = {"kept": target, "final-epoch": peer_aucs[-1], "best": max(peer_aucs)} if peer_aucs else {}
        for name, value in targets.items():
            when = first_time_at(ours["curve"], value)
            summary[f"pneumoscan_time_to_peer_{name}_auc_s"] = when
            print(f"pneumoscan reaches the peer's {name} validation AUC {value:.4f} after "
                  + (f"{when:.0f}s = {when / peer['fit_s']:.2f} of the peer's {peer['fit_s']:.0f}s" if when
                     else "never"))
        print(f"at the peer's {peer['fit_s']:.0f}s: best validation AUC pneumoscan {at_equal}, "
              f"peer {max(peer_aucs) if peer_aucs else None}")
    plot(results, out / "auc_vs_time.png")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"figure: {out / 'auc_vs_time.png'}")
    print(json.dumps(summary, default=str))


if __name__ == "__main__":
    main()
