"""`pneumoscan models`: the models this installation can use right away, bundled and local."""

from __future__ import annotations

import os

from pneumoscan.cli import add_command


def register(subparsers) -> None:
    """Add ``models``."""
    command = add_command(subparsers, "models", "List the bundled default model, the trained runs under --runs and their "
                          "site-calibrated versions.",
                          "pneumoscan models --runs runs/", run)
    command.add_argument("--runs", metavar="DIR", default="runs", help="folder holding the run folders")


def run(args) -> int:
    from pneumoscan.inference.catalog import list_models
    from pneumoscan.provenance import DISCLAIMER

    entries = list_models(args.runs)
    if not entries:
        print(f"no models: this installation has no bundled model and {args.runs}/ holds no trained run "
              "(pneumoscan train makes one)")
        return 1
    width = max(32, *(len(e.name) for e in entries))
    print(f"{'name':<{width}}  {'kind':<10}  {'network':<16}  {'size':>4}  {'threshold':>9}  {'val AUC':>7}  onnx  path")
    for e in entries:
        auc = f"{e.val_auc:.4f}" if e.val_auc is not None else "-"
        path = e.path if e.kind == "bundled" else os.path.relpath(e.path)
        print(f"{e.name:<{width}}  {e.kind:<10}  {e.network:<16}  {e.image_size:>4}  {e.threshold:>9.4f}  {auc:>7}  "
              f"{'yes' if e.onnx else 'no':<4}  {path}")
    print("\nuse one: pneumoscan predict [MODEL] chest.jpeg (no MODEL, or default: the bundled model); "
          "pneumoscan.load(MODEL) in Python")
    print(DISCLAIMER)
    return 0
