"""`pneumoscan evaluate`, `pneumoscan calibrate` and `pneumoscan compare`."""

from __future__ import annotations

import argparse
from argparse import SUPPRESS

from pneumoscan.cli.commands import add_command


def register(subparsers) -> None:
    """Add ``evaluate`` and ``compare``."""
    ev = add_command(
        subparsers, "evaluate",
        "Evaluate a run (or an ensemble of runs) on a split: metrics with patient-bootstrap 95% CIs, "
        "the threshold stored at training (by default sens95-median on validation) and the other operating points chosen on "
        "validation, calibration, plots; writes report.html/.json/.md.",
        "pneumoscan evaluate runs/latest --data ~/data/chest_xray --split test --tta",
        _evaluate,
    )
    ev.add_argument("models", nargs="+", metavar="RUN_OR_MODEL",
                    help="run folder, model file, or default or fast (the bundled models); several are evaluated as an "
                         "ensemble (mean probability)")
    ev.add_argument("--data", default=SUPPRESS, help="dataset folder or CSV manifest (default: the run's split.csv, whose "
                    "test split is the data's own test split, such as the official Kermany test images, or for "
                    "data without one the 10 %% of patients training held out; else the default data)")
    ev.add_argument("--split", default=SUPPRESS, help="split to evaluate: train, val, test or all (default: test)")
    ev.add_argument("--bootstrap", type=int, default=SUPPRESS, metavar="N", help="bootstrap resamples (default: 1000)")
    ev.add_argument("--seed", type=int, default=SUPPRESS, help="bootstrap seed (default: 0)")
    ev.add_argument("--tta", action="store_true", default=SUPPRESS, help="test-time augmentation: mean with the flipped image")
    ev.add_argument("--calibrate", action="store_true", default=SUPPRESS,
                    help="temperature scaling fitted on the run's validation predictions")
    ev.add_argument("--gallery", type=int, default=SUPPRESS, metavar="N",
                    help="worst false positives and negatives shown with Grad-CAM, N of each (default: 4; 0: none)")
    ev.add_argument("--out", default=SUPPRESS, help="report folder (default: RUN/reports/<split>-<timestamp>/)")
    ev.add_argument("--config", default=None, help="options from a config.yaml written by an earlier evaluate")
    ev.add_argument("--device", default=SUPPRESS, help="torch device, e.g. cpu or cuda (default: best available)")

    cal = add_command(
        subparsers, "calibrate",
        "Fit a model to a new site on a labelled sample of the site's own images (at least 20 patients per class; "
        "duplicates, out-of-scope images and the run's own training images are not fitted on): a "
        "temperature bounded around the model's own, and a threshold for a target sensitivity, moved only where "
        "the sample shows the model's own misses it (with its bootstrap interval); writes a new model version "
        "beside the old one, which is never changed.",
        "pneumoscan calibrate runs/latest --data site_sample/ --target-sensitivity 0.95",
        _calibrate,
    )
    cal.add_argument("model", metavar="RUN_OR_MODEL", nargs="?", default="default",
                     help="run folder or model file to calibrate, or fast (default: the bundled default model; "
                          "a bundled model's calibrated versions go to runs/default/calibrated/, runs/fast/calibrated/)")
    cal.add_argument("--data", required=True, help="the site's labelled sample: a class-folder dataset or CSV manifest "
                     "(every labelled image is used; both classes, and a sample too small for a threshold is refused, "
                     "naming the minimum per class)")
    cal.add_argument("--target-sensitivity", type=float, default=0.95,
                     help="the sensitivity the threshold must reach; the model's own threshold is kept unless the "
                          "sample shows it misses the target, or that a higher one still reaches it")
    cal.add_argument("--out", default=None, help="folder of the new version (default: RUN/calibrated/<data>-<time>/)")
    cal.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="patient bootstrap resamples")
    cal.add_argument("--seed", type=int, default=0, help="bootstrap seed")

    cmp = add_command(
        subparsers, "compare",
        "Compare runs' evaluation reports side by side (terminal table, optional Markdown).",
        "pneumoscan compare runs/run-a runs/run-b --markdown comparison.md",
        _compare,
    )
    cmp.add_argument("runs", nargs="+", metavar="RUN_OR_REPORT",
                     help="run folder (its newest report), report folder or report.json")
    cmp.add_argument("--markdown", default=None, metavar="FILE", help="also write the table as Markdown")


def _evaluate(args: argparse.Namespace) -> int:
    from pneumoscan.config_files import from_dict, load_config
    from pneumoscan.evaluation import EvaluateConfig, evaluate

    # Options left out are SUPPRESSed (absent): the config file's or the dataclass's defaults apply.
    overrides = {k: getattr(args, k, None) for k in ("data", "split", "bootstrap", "seed", "tta", "calibrate", "out",
                                               "gallery", "device")}
    overrides["models"] = args.models
    if args.config:
        config = load_config(EvaluateConfig, args.config, **overrides)
    else:
        config = from_dict(EvaluateConfig, {k: v for k, v in overrides.items() if v is not None})
    result = evaluate(config)
    report = result.report
    stored_point = report.operating_points["stored"]
    threshold = f"stored threshold {stored_point['threshold']:.4f}"
    if "threshold_before_calibration" in stored_point:
        threshold = (f"stored threshold {stored_point['threshold_before_calibration']:.4f} "
                     f"({stored_point['threshold']:.4f} after temperature scaling)")
    print(f"{report.data['images']} images, {report.data['patients']} patients "
          f"(split {report.data['split']}); {threshold}")
    left_out = report.data.get("calibration_sample")
    if left_out and left_out["checked"]:
        from pneumoscan.evaluation.evaluate import left_out_text

        print(left_out_text(left_out))
    for metric in ("sensitivity", "specificity", "ppv", "npv", "balanced_accuracy"):
        print(f"  {metric:<18} {report.at('stored', metric)}")
    for metric in ("roc_auc", "pr_auc", "ece"):
        print(f"  {metric:<18} {report.free(metric)}")
    if "original" in report.points:
        site = report.site_calibration or {}
        print(f"before site calibration (threshold {report.threshold('original'):.4f}):")
        for metric in ("sensitivity", "specificity", "balanced_accuracy"):
            print(f"  {metric:<18} {report.at('original', metric)}")
        if site.get("ece"):
            print(f"  {'ece':<18} {site['ece']['original']:.3f} (calibrated: {site['ece']['calibrated']:.3f})")
    from pneumoscan.evaluation.subtype import summary_lines

    for line in summary_lines(report.subtype):
        print(line)
    for warning in report.warnings:
        print(f"WARNING: {warning}")
    print(f"report: {result.html}\n        {result.json}\n        {result.markdown}")
    print(report.disclaimer)
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from pneumoscan.evaluation.calibrate import calibrate

    result = calibrate(args.model, args.data, args.target_sensitivity, args.out, args.bootstrap, args.seed)
    c = result.calibration
    print(f"calibrated on {c.images} images of {c.patients} patients ({c.normal_patients} NORMAL, "
          f"{c.pneumonia_patients} PNEUMONIA; {c.normal} and {c.pneumonia} images), each patient weighing the same")
    for line in result.summary:
        print(f"  {line}")
    print(f"  on the sample itself (optimistic): sensitivity {c.sensitivity:.3f}, specificity {c.specificity:.3f}")
    print(f"new model version: {result.folder} (the original {result.original} is unchanged)")
    print(f"check it on other images of the site: pneumoscan evaluate {result.folder} --data SITE_TEST --split all")
    from pneumoscan.provenance import DISCLAIMER

    print(DISCLAIMER)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from pneumoscan.evaluation import compare

    print(compare(args.runs, markdown=args.markdown).to_text())
    if args.markdown:
        print(f"written: {args.markdown}")
    return 0
