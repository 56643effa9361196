"""`pneumoscan models`: the models this installation can use right away, bundled and local."""

from __future__ import annotations

import os

from pneumoscan.cli import add_command


def register(subparsers) -> None:
    """Add ``models``."""
    command = add_command(subparsers, "models", "List the bundled models (default, fast) with their new-site figures and "
                          "speed from their cards, then the trained runs under --runs and their site-calibrated versions.",
                          "pneumoscan models --runs runs/", run)
    command.add_argument("--runs", metavar="DIR", default="runs", help="folder holding the run folders")


def run(args) -> int:
    from pneumoscan.inference.catalog import list_models
    from pneumoscan.provenance import DISCLAIMER

    _print_bundled()
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
    print("\nuse one: pneumoscan predict [MODEL] chest.jpeg (no MODEL, or default: the bundled default model; "
          "fast: the bundled fast one); pneumoscan.load(MODEL) in Python")
    print(DISCLAIMER)
    return 0


def _print_bundled() -> None:
    """The bundled models side by side, so that a user can choose: each card's figures on the official
    test half (a site never trained on) and the speed its build measured."""
    from pneumoscan.inference.catalog import bundled_choices

    choices = bundled_choices()
    shown = [c for c in choices if c.installed]
    if shown:
        images = {c.images for c in shown} - {None}
        on = f"{images.pop()} images of " if len(images) == 1 else ""
        print(f"bundled models: figures from each model's card, on {on}the official test half chest_xray/test (a "
              "site never trained on), 95 % patient-bootstrap intervals, at the stored threshold; speed in "
              "images/s with ONNX Runtime")
        print(f"{'name':<8}  {'network':<18}  {'size':>4}  {'ROC-AUC':<21}  {'sensitivity':>11}  {'specificity':>11}  "
              f"{'images/s':>8}")
        for c in shown:
            rate = f"{c.images_per_second:,.0f}" if c.images_per_second is not None else "-"
            print(f"{c.name:<8}  {c.network or '?':<18}  {c.image_size or 0:>4}  {_interval(c.roc_auc):<21}  "
                  f"{_value(c.sensitivity):>11}  {_value(c.specificity):>11}  {rate:>8}")
    for c in choices:
        if not c.installed:
            print(f"{c.name}: {c.why_not}")
            continue
        speed = c.speed_how or "speed not measured yet"
        print(f"  {c.name}: {c.purpose}{'; PROVISIONAL build (see its card)' if c.provisional else ''}; {speed}")
    print()


def _interval(figure: tuple[float, float, float] | None) -> str:
    return f"{figure[0]:.3f} [{figure[1]:.3f}, {figure[2]:.3f}]" if figure else "-"


def _value(figure: tuple[float, float, float] | None) -> str:
    return f"{figure[0]:.3f}" if figure else "-"
