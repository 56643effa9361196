"""Save and load trained models as safetensors with their metadata: never a pickle.

A model file is ``model.safetensors``: the weights, and in the safetensors header the JSON of
:class:`ModelMeta` (name, input contract, threshold, provenance). ``model.json`` beside it holds the same
metadata for people. :func:`load_model` accepts a run folder, a ``.safetensors`` file, or a Lightning
``.ckpt`` read with ``torch.load(weights_only=True)``; anything else is refused with a clear message.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pneumoscan._io import atomic_write, atomic_write_json
from pneumoscan.data.records import CLASS_NAMES
from pneumoscan.errors import ConfigError, ModelFileError, reason
from pneumoscan.runs import MODEL, MODEL_JSON, find_model_file, run_folder_of

if TYPE_CHECKING:  # torch is imported where it is used: ModelMeta must load without it (ONNX path)
    import torch
    from torch import nn

META_KEY = "pneumoscan"
MODEL_FILE = MODEL
CHECKPOINT_PREFIX = "model."  # the LightningModule holds the network as ``self.model``
# A model's input side. Far beyond what a chest radiograph needs, and a network built for more could
# need gigabytes before its weights are even read.
IMAGE_SIZES = range(8, 1025)
MEMBERS = range(1, 33)  # networks in an ensemble: each costs a full network's memory and time
# The operating points a model file stores (``ModelMeta.operating_points``; the threshold is one of them,
# by the training's rule) and how each is chosen, in the words of reports and model cards.
OPERATING_POINTS: dict[str, str] = {
    "youden": "maximises Youden's J (sensitivity + specificity - 1) on validation",
    "youden-median": "median over 200 bootstrap resamples of validation of the middle (in logit space) "
                     "of the score gap where Youden's J is maximal",
    "sens95": "highest threshold with sensitivity >= 0.95 on validation",
    "sens95-median": "median over 200 bootstrap resamples of validation of the highest threshold with "
                     "sensitivity >= 0.95",
    "spec95": "lowest threshold with specificity >= 0.95 on validation",
    "balanced": "probability 0.5 of a model trained class-balanced: the decision that weighs "
                "both classes equally, set by the training loss rather than by any validation image",
}

__all__ = ["META_KEY", "MODEL_FILE", "OPERATING_POINTS", "ModelMeta", "read_checkpoint", "find_model_file",
           "load_model", "read_meta", "run_folder_of", "save_model"]


@dataclass
class ModelMeta:
    """Everything needed to use a model correctly, stored inside the model file."""

    name: str  # registry name, e.g. "densenet121"
    image_size: int
    fit: str = "pad"  # how images are made square: pad, crop or stretch
    threshold: float = 0.5  # probability at or above which the label is PNEUMONIA (training's threshold rule)
    operating_points: dict[str, float] = field(default_factory=dict)  # e.g. {"youden": .., "sens95": ..}
    class_names: list[str] = field(default_factory=lambda: list(CLASS_NAMES))
    version: str = ""  # pneumoscan version that trained it
    run_id: str = ""
    created: str = ""
    val_metrics: dict[str, float] = field(default_factory=dict)
    temperature: float = 1.0  # logits are divided by this before the sigmoid (temperature scaling)
    members: int = 1  # an ensemble of this many networks in one model (mean logit)
    provenance: dict[str, Any] = field(default_factory=dict)  # config, versions, git commit, data hash
    # The scope gate's thresholds and how they were fitted (models.scope_gate); empty: the model has no gate.
    scope: dict[str, Any] = field(default_factory=dict)
    # The subtype head's calibration and operating point (models.subtype_meta); empty: no subtype head.
    subtype: dict[str, Any] = field(default_factory=dict)

    @property
    def preprocessing(self) -> dict[str, Any]:
        """The input contract: what a caller must feed the network."""
        return {"size": self.image_size, "fit": self.fit, "channels": 1, "layout": "NCHW",
                "dtype": "float32", "scale": "uint8 grayscale / 255 -> [0, 1]",
                "normalisation": "per image, inside the model"}

    def label(self, probability: float) -> str:
        """The class name for a pneumonia probability: PNEUMONIA at or above the stored threshold."""
        return self.class_names[int(probability >= self.threshold)]

    def subtype_label(self, viral_probability: float) -> str:
        """``bacterial``, ``viral`` or ``uncertain`` for the head's calibrated probability of viral
        (:func:`pneumoscan.models.subtype_meta.subtype_label`)."""
        from pneumoscan.models.subtype_meta import subtype_label

        return subtype_label(self.subtype, viral_probability)

    def to_dict(self) -> dict[str, Any]:
        """The fields as stored; a validation metric that was undefined (NaN: one class only) is left out,
        since a stored NaN would make the file unreadable (:meth:`from_dict` refuses it)."""
        data = asdict(self)
        data["val_metrics"] = {k: v for k, v in data["val_metrics"].items() if _is_number(v)}
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), default=str)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMeta:
        """Metadata from its JSON object; raises ``ValueError`` naming the first field that is missing,
        of the wrong type or out of range (unknown fields are ignored: newer versions may add some)."""
        if not isinstance(data, dict):
            raise ValueError(f"the metadata is a JSON {type(data).__name__}, not an object")
        known = {f for f in cls.__dataclass_fields__}
        for key in ("name", "image_size"):
            if key not in data:
                raise ValueError(f"field {key!r} is missing")
        for key, value in data.items():
            if key in _CHECKS:
                problem = _CHECKS[key](value)
                if problem:
                    raise ValueError(f"field {key!r} {problem}, not {_shown(value)}")
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_json(cls, text: str | bytes, source: str | os.PathLike) -> ModelMeta:
        """Parse and check the metadata stored in ``source``; a :class:`ModelFileError` naming the file and
        the field for anything wrong, never a bare ``JSONDecodeError`` or ``TypeError``."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise ModelFileError(f"{source}: invalid pneumoscan metadata: not JSON ({reason(exc)})") from None
        try:
            return cls.from_dict(data)
        except (ValueError, TypeError) as exc:
            raise ModelFileError(f"{source}: invalid pneumoscan metadata: {reason(exc)}") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _probability(value: Any) -> str | None:
    # Up to just above 1: a threshold above the highest validation probability (which can be 1.0) calls
    # nothing positive, and operating.py stores it as the next float after that probability.
    return None if _is_number(value) and 0.0 <= value <= 1.0 + 1e-6 else "must be a number from 0 to 1"


def _text(value: Any) -> str | None:
    return None if isinstance(value, str) else "must be text"


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _scope_problem(value: Any) -> str | None:
    from pneumoscan.models.scope_meta import problem

    return problem(value)


def _subtype_problem(value: Any) -> str | None:
    from pneumoscan.models.subtype_meta import problem

    return problem(value)


# field -> check returning what is wrong (None when the value is fine)
_CHECKS: dict[str, Any] = {
    "name": lambda v: None if isinstance(v, str) and v.strip() else "must be a model name",
    "image_size": lambda v: None if isinstance(v, int) and not isinstance(v, bool) and v in IMAGE_SIZES
    else f"must be a whole number of pixels from {IMAGE_SIZES.start} to {IMAGE_SIZES.stop - 1}",
    "fit": lambda v: None if v in ("pad", "crop", "stretch") else "must be pad, crop or stretch",
    "threshold": _probability,
    "operating_points": lambda v: None if isinstance(v, dict) and all(_probability(x) is None for x in v.values())
    else "must map names to probabilities from 0 to 1",
    # Label 0 is NORMAL and 1 PNEUMONIA everywhere (training, the threshold, SR codes): other names, or
    # these in another order, would put the wrong word on every image.
    "class_names": lambda v: None if v == list(CLASS_NAMES) else f"must be {json.dumps(list(CLASS_NAMES))}",
    "version": _text,
    "run_id": _text,
    "created": _text,
    "val_metrics": lambda v: None if isinstance(v, dict) and all(_is_number(x) for x in v.values())
    else "must map names to finite numbers",
    "temperature": lambda v: None if _is_number(v) and v > 0 else "must be a positive number",
    "members": lambda v: None if isinstance(v, int) and not isinstance(v, bool) and v in MEMBERS
    else f"must be a whole number of networks from {MEMBERS.start} to {MEMBERS.stop - 1}",
    "provenance": lambda v: None if isinstance(v, dict) else "must be an object",
    "scope": _scope_problem,
    "subtype": _subtype_problem,
}


def save_model(folder: str | os.PathLike, model: nn.Module, meta: ModelMeta) -> Path:
    """Write ``folder/model.safetensors`` and ``folder/model.json`` atomically; return the weights' path."""
    from safetensors.torch import save_file

    folder = Path(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path = atomic_write(folder / MODEL_FILE, lambda tmp: save_file(state, str(tmp), metadata={META_KEY: meta.to_json()}))
    atomic_write_json(folder / MODEL_JSON, meta.to_dict())
    return path


def read_meta(path: str | os.PathLike) -> ModelMeta:
    """The metadata of a model file or run folder, without building the network."""
    file = find_model_file(path)
    if file.suffix == ".safetensors":
        return _safetensors_meta(file)
    return read_checkpoint(file)[1]


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[nn.Module, ModelMeta]:
    """Build the network named in the metadata and load its weights; the model is in eval mode."""
    from pneumoscan.models.registry import build_model

    file = find_model_file(path)
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        meta = _safetensors_meta(file)
        _check_weights(file, meta, _safetensors_shapes(file))
        try:
            state = load_file(str(file), device=str(map_location))
        except Exception as exc:  # safetensors raises its own error types
            raise ModelFileError(f"{file}: corrupt safetensors file ({exc})") from None
    else:
        state, meta, _ = read_checkpoint(file)
        _check_weights(file, meta, {key: tuple(getattr(value, "shape", ())) for key, value in state.items()})
    try:
        model = build_model(meta.name, meta.image_size, meta.members)
    except ConfigError as exc:  # a name this version does not know, a size the network cannot take
        raise ModelFileError(f"{file}: invalid pneumoscan metadata: {exc}") from None
    from pneumoscan.models.scope_gate import gate_for_state, gate_problem
    from pneumoscan.models.subtype_head import subtype_for_state, subtype_problem

    gate_for_state(model, state)  # a model fitted with a scope gate carries its statistics as scope.*
    subtype_for_state(model, state)  # and a subtype head its probe as subtype.*
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelFileError(
            f"{file}: the weights do not fit a {meta.name!r} network at {meta.image_size}px ({reason(exc)})"
        ) from None
    # a gate or a head the metadata claims runs, or the model is refused
    problem = gate_problem(model, meta.scope) or subtype_problem(model, meta.subtype)
    if problem:
        raise ModelFileError(f"{file}: {problem}")
    return model.to(map_location).eval(), meta


def _check_weights(file: Path, meta: ModelMeta, shapes: dict[str, tuple[int, ...]]) -> None:
    """The tensors in the file are exactly those of the network the metadata names (names, shapes,
    count), checked before that network is built: a few bytes of metadata must not allocate gigabytes."""
    from pneumoscan.models.registry import expected_weights

    try:
        expected = expected_weights(meta.name, meta.image_size, meta.members)
    except ConfigError as exc:  # a name this version does not know
        raise ModelFileError(f"{file}: invalid pneumoscan metadata: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a size the network cannot take
        raise ModelFileError(f"{file}: invalid pneumoscan metadata: a {meta.name!r} network cannot be built at "
                             f"{meta.image_size}px ({reason(exc)})") from None
    from pneumoscan.models.scope_gate import gate_shapes
    from pneumoscan.models.subtype_head import subtype_shapes

    # a scope gate's statistics and a subtype head's probe travel beside the network
    expected = {**expected, **gate_shapes(shapes), **subtype_shapes(shapes)}
    what = (f"{file}: the weights do not fit a {meta.name!r} network at {meta.image_size}px with "
            f"{meta.members} member{'s' if meta.members != 1 else ''} (as its metadata says)")
    missing = [key for key in expected if key not in shapes]
    unexpected = [key for key in shapes if key not in expected]
    if missing or unexpected:
        parts = [f"{len(missing)} of its {len(expected)} tensors missing ({missing[0]}, ...)" if missing else "",
                 f"{len(unexpected)} unexpected ({unexpected[0]}, ...)" if unexpected else ""]
        raise ModelFileError(f"{what}: the file holds {len(shapes)} tensors, "
                             f"{'; '.join(p for p in parts if p)}")
    for key, shape in expected.items():
        if tuple(shapes[key]) != shape:
            raise ModelFileError(f"{what}: {key} is {tuple(shapes[key])}, expected {shape}")


def _safetensors_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a safetensors file, read from its header (no tensor is loaded)."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as fh:
            return {key: tuple(fh.get_slice(key).get_shape()) for key in fh.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types
        raise ModelFileError(f"{file}: corrupt safetensors file ({reason(exc)})") from None


def _safetensors_meta(file: Path) -> ModelMeta:
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as fh:
            header = fh.metadata() or {}
    except Exception as exc:
        raise ModelFileError(f"{file}: not a safetensors file ({exc})") from None
    if META_KEY not in header:
        raise ModelFileError(f"{file}: a safetensors file without pneumoscan metadata; not one of our models")
    return ModelMeta.from_json(header[META_KEY], file)


def read_checkpoint(file: str | os.PathLike) -> tuple[dict[str, torch.Tensor], ModelMeta, int | None]:
    """A Lightning checkpoint written by pneumoscan's training, read without unpickling code:
    (the network's weights, its metadata, the epoch it was saved at)."""
    file = Path(file)
    if file.suffix not in (".ckpt", ".pt", ".pth"):
        raise ModelFileError(f"{file}: unknown model format; expected a run folder, .safetensors, .ckpt or .onnx")
    import torch

    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelFileError(
            f"{file}: refused: not a weights-only checkpoint, it would need unpickling arbitrary code ({reason(exc)})"
        ) from None
    if not isinstance(checkpoint, dict) or META_KEY not in checkpoint or "state_dict" not in checkpoint:
        raise ModelFileError(f"{file}: not a pneumoscan checkpoint (no {META_KEY!r} metadata)")
    if not isinstance(checkpoint[META_KEY], str | bytes):
        raise ModelFileError(f"{file}: invalid pneumoscan metadata: not JSON text")
    meta = ModelMeta.from_json(checkpoint[META_KEY], file)
    state = {k.removeprefix(CHECKPOINT_PREFIX): v for k, v in checkpoint["state_dict"].items()
             if k.startswith(CHECKPOINT_PREFIX)}
    epoch = checkpoint.get("epoch")
    return state, meta, int(epoch) if isinstance(epoch, int) else None
