"""Options of a command as a dataclass, saved as YAML next to every output and loadable again."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pneumoscan._io import atomic_write_text
from pneumoscan.errors import ConfigError, reason

T = TypeVar("T")


def to_dict(config: Any) -> dict[str, Any]:
    """A plain, YAML-safe dict of a (possibly nested) dataclass: paths become strings."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, os.PathLike):
            return str(value)
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    return plain(config)


def save_config(config: Any, path: str | os.PathLike) -> Path:
    return atomic_write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))


def load_config(cls: type[T], path: str | os.PathLike, **overrides: Any) -> T:
    """Read a YAML file written by :func:`save_config` into ``cls``; unknown keys are an error."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({reason(exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value")
    return from_dict(cls, {**data, **{k: v for k, v in overrides.items() if v is not None}}, source=str(path))


def from_dict(cls: type[T], data: dict[str, Any], source: str = "config") -> T:
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown option(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    return cls(**data)
