"""`pneumoscan train`: every option of :class:`TrainConfig` as a flag, plus --config, --resume, --list-models."""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing

from pneumoscan.cli.commands import add_command

EXAMPLE = ("pneumoscan train --epochs 12    # the default recipe (EfficientNet-Lite0 from ImageNet, 128 px); "
           "then: pneumoscan evaluate runs/latest")


def register(subparsers) -> None:
    """Add ``train``; its flags are generated from the fields of :class:`TrainConfig`."""
    from pneumoscan.training.config import TrainConfig

    command = add_command(subparsers, "train", "train a model (default recipe on the default data) into a run folder",
                          EXAMPLE, run)
    command.add_argument("--config", metavar="YAML", help="start from a saved config (e.g. RUN/config.yaml); "
                         "flags given as well override it")
    command.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its last checkpoint "
                         "(a run folder or a .ckpt); --epochs and --max-time may extend it")
    command.add_argument("--list-models", action="store_true", help="list the registered models and exit")
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        kind = _base_type(hints[field.name])
        text = field.metadata["help"]
        if "default" not in text and field.default is not None:  # None: the flag left out means "not set"
            text += f" (default: {field.default})"
        # SUPPRESS: a flag left out is absent from the namespace, so --config values are not overridden
        options = {"dest": field.name, "default": argparse.SUPPRESS, "help": text}
        if kind is bool:
            command.add_argument(flag, action=argparse.BooleanOptionalAction, **options)
        else:
            command.add_argument(flag, type=kind, choices=field.metadata.get("choices"), **options)


def _base_type(hint: object) -> type:
    # "int | None" -> int; the CLI never needs to spell None (leaving a flag out means "default")
    if isinstance(hint, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint  # type: ignore[return-value]


def run(args: argparse.Namespace) -> int:
    # Before torch loads OpenMP: on a shared CPU, spinning OpenMP threads wait for cores that other
    # processes hold and a training step gets 10-20x slower (measured, see docs/training.md).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from pneumoscan.config_files import from_dict, load_config
    from pneumoscan.training import TrainConfig, train

    if args.list_models:
        from pneumoscan.models import available_models

        for name, description in available_models().items():
            print(f"{name:18s} {description}")
        return 0
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    given = {name: getattr(args, name) for name in names if hasattr(args, name)}
    if args.resume:
        from pneumoscan.training.run import run_config

        extend = {k: v for k, v in given.items() if k in ("epochs", "max_time")}
        train(dataclasses.replace(run_config(args.resume), **extend), resume=args.resume)
        return 0
    config = load_config(TrainConfig, args.config, **given) if args.config else from_dict(TrainConfig, given)
    train(config)
    return 0
