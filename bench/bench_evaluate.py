"""Evaluation end to end: load + decode, infer, bootstrap, plots, Grad-CAM gallery, report.

    .venv/bin/python bench/bench_evaluate.py                   # the figures of docs/benchmarks.md: 624 images
    .venv/bin/python bench/bench_evaluate.py --images 100      # a quick check

Target: 624 images (the size of the official Kermany test split: 234 normal, 390 pneumonia)
evaluated end to end, with 1,000 patient-bootstrap resamples, in at most 20 s on 2 cores. The images are
real, from ../shared/data/chest_xray/train (the official test split is not in the shared folder); the model
is a freshly initialised network (default: the training recipe's mini-resnet at 128 px): its scores are
poor, but the work done is that of a trained one. The decoding cache is cold (a fresh temporary folder) so loading is measured too.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "chest_xray" / "train",
                        help="folder with NORMAL/ and PNEUMONIA/ to draw the images from")
    parser.add_argument("--images", type=int, default=624, help="images evaluated (3/8 normal, 5/8 pneumonia)")
    parser.add_argument("--val", type=int, default=200, help="validation images for the run (not timed)")
    parser.add_argument("--model", default="mini-resnet", help="registry name (default: the training recipe's)")
    parser.add_argument("--size", type=int, default=128, help="input size (default: the training recipe's)")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--gallery", type=int, default=4)
    parser.add_argument("--tta", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (data links, run, report)")
    args = parser.parse_args()
    if not (args.data / "NORMAL").is_dir():
        sys.exit(f"{args.data}: no NORMAL/ folder; pass --data with the Kermany train folder")

    work = Path(tempfile.mkdtemp(prefix="bench-evaluate-"))
    os.environ["PNEUMOSCAN_CACHE"] = str(work / "cache")  # cold cache: decoding is part of the figure
    import numpy as np
    import torch

    import pneumoscan
    from pneumoscan.data import kermany_patient_id
    from pneumoscan.evaluation import EvaluateConfig, evaluate
    from pneumoscan.evaluation import intervals as I
    from pneumoscan.evaluation import metrics as M
    from pneumoscan.models import build_model
    from pneumoscan.models.artifact import ModelMeta, save_model

    # Test images from the end of each sorted class folder, validation from the start.
    n_normal = round(args.images * 234 / 624)
    counts = {"NORMAL": n_normal, "PNEUMONIA": args.images - n_normal}
    val_files: list[tuple[Path, int]] = []
    for label, cls in enumerate(("NORMAL", "PNEUMONIA")):
        files = sorted((args.data / cls).glob("*.jpeg"))
        (work / "data" / "test" / cls).mkdir(parents=True)
        for f in files[-counts[cls]:]:
            (work / "data" / "test" / cls / f.name).symlink_to(f)
        val_files += [(f, label) for f in files[: args.val // 2]]

    torch.manual_seed(0)
    run = work / "run"
    save_model(run, build_model(args.model, args.size),
               ModelMeta(name=args.model, image_size=args.size, threshold=0.5, run_id="bench"))
    probs = [p.probability for p in pneumoscan.load(run).predict([f for f, _ in val_files])]
    rows = [f"{f},{kermany_patient_id(f.stem)},{y},{p:.6f}" for (f, y), p in zip(val_files, probs, strict=True)]
    (run / "val_predictions.csv").write_text("path,patient_id,label,probability\n" + "\n".join(rows) + "\n")
    split = [f"{f},{y},{kermany_patient_id(f.stem)},val" for f, y in val_files]
    (run / "split.csv").write_text("path,label,patient_id,split\n" + "\n".join(split) + "\n")

    start = time.perf_counter()
    result = evaluate(EvaluateConfig(models=[str(run)], data=str(work / "data"), split="test",
                                     bootstrap=args.bootstrap, gallery=args.gallery, tta=args.tta,
                                     out=str(work / "report")))
    total = time.perf_counter() - start

    # The bootstrap alone, as the report computes it (weights + every metric at 4 thresholds).
    data = result.report["data"]
    preds = [line.split(",") for line in (result.folder / "predictions.csv").read_text().splitlines()[1:]]
    labels = np.array([int(r[2]) for r in preds])
    scores = np.array([float(r[3]) for r in preds])
    patients = np.array([r[1] for r in preds])
    t0 = time.perf_counter()
    I.estimates(labels, scores, {"a": 0.3, "b": 0.5, "c": 0.7, "d": 0.9},
                M.patient_bootstrap_weights(patients, args.bootstrap, 0))
    boot_only = time.perf_counter() - t0

    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}, "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)")
    print(f"evaluated {data['images']} images ({data['patients']} patients), model {args.model} at {args.size}px, "
          f"{args.bootstrap} bootstrap resamples, gallery {args.gallery}, TTA {args.tta}")
    for phase, seconds in result.report["timings_s"].items():
        print(f"  {phase:<11} {seconds:7.2f} s")
    print(f"  {'write':<11} {total - sum(result.report['timings_s'].values()):7.2f} s")
    print(f"end to end: {total:.2f} s (target <= 20 s on 2 cores)")
    print(f"bootstrap alone ({args.bootstrap} patient resamples x {data['images']} images, 12 metrics "
          f"at 4 thresholds): {boot_only * 1000:.0f} ms")
    if args.keep:
        print(f"report: {result.html}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
