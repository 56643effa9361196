"""The ``pneumoscan`` command: thin argument parsing over the Python API, one module per command group.

Each module has ``register(subparsers)`` (built with :mod:`~pneumoscan.cli.commands`), which adds its sub-commands and sets ``func`` on them; the
function takes the parsed arguments and returns an exit code.
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Sequence

from pneumoscan import __version__
from pneumoscan.cli.commands import HelpFormatter, add_command
from pneumoscan.errors import PneumoscanError
from pneumoscan.provenance import DISCLAIMER

EXAMPLES = """\
examples:
  pneumoscan data inspect ../shared/data/chest_xray     # counts, leakage check, plots
  pneumoscan train                                      # default recipe on the default data
  pneumoscan evaluate runs/latest --data ROOT --split test
  pneumoscan predict chest.jpeg                         # the bundled default model, no training
  pneumoscan predict runs/latest chest.jpeg scans/
  pneumoscan explain runs/latest chest.jpeg
  pneumoscan export runs/latest --format onnx
  pneumoscan serve runs/latest/export/model.onnx
  pneumoscan models                                     # bundled and local models
  pneumoscan dicom listen runs/latest --port 11112 --forward PACS@10.0.0.5:104

""" + DISCLAIMER


def build_parser() -> argparse.ArgumentParser:
    from pneumoscan.cli import data, dicom, evaluate, infer, models, serve, train

    parser = argparse.ArgumentParser(
        prog="pneumoscan",
        description="Pneumonia detection on chest X-rays: data, training, evaluation, explanation, export, serving.",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pneumoscan {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for module in (data, train, evaluate, infer, serve, models, dicom):
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):
        # A file name that is not UTF-8 (b"caf\xe9.png") is printed as caf\xe9.png rather than crashing.
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except PneumoscanError as exc:
        print(f"pneumoscan: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pneumoscan: interrupted", file=sys.stderr)
        return 130


def run() -> None:
    """The console script and ``python -m pneumoscan``: :func:`main`, its code as the exit status."""
    code = main()
    # At exit the interpreter's cyclic collector walks every object torch and MONAI made: about 2 s after
    # a command that used PyTorch (measured: a one-image `predict --backend torch` left main in 7.0 s and
    # the process 1.9 s later; 0.3 s frozen). Every output is written and closed by now, so the collector
    # is frozen and the memory left to the operating system. Not in main(), which tests and scripts call
    # in a process that goes on.
    gc.freeze()
    sys.exit(code)


__all__ = ["HelpFormatter", "add_command", "build_parser", "main", "run"]


if __name__ == "__main__":
    run()
