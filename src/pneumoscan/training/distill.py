"""Knowledge distillation: a student learns from a teacher's calibrated probabilities and the labels.

The teacher is any model pneumoscan loads (a run folder, a ``.safetensors``/``.ckpt``/``.onnx`` model with
its weights, or ``default``: the bundled model), or several whose probabilities are averaged. It scores the
very batch the student sees, after augmentation, inside the training step (in eval mode, without
gradients), so the soft target always describes the image being learned from.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pneumoscan.errors import ModelFileError, PneumoscanError

DEFAULT_TEACHER = "default"  # the model bundled with the package


def teacher_names(spec: str) -> list[str]:
    """The models named by ``--teacher`` (comma-separated), in order; empty names are left out."""
    return [name.strip() for name in spec.split(",") if name.strip()]


def soft_targets(labels: torch.Tensor, teacher: torch.Tensor | None, weight: float,
                 smoothing: float = 0.0) -> torch.Tensor:
    """The training target of each image: ``weight * teacher + (1 - weight) * label``.

    ``smoothing`` applies to the hard label only (``label * (1 - s) + s / 2``), as in training without a
    teacher: the teacher's probability is already soft, and smoothing it too would pull every target
    towards 0.5 twice. Without a teacher (``None``) this is the smoothed label.
    """
    hard = labels * (1.0 - smoothing) + 0.5 * smoothing if smoothing else labels
    if teacher is None:
        return hard
    return weight * teacher.to(hard.dtype) + (1.0 - weight) * hard


class Teacher(nn.Module):
    """One or more calibrated models (:meth:`Classifier.torch_module`) whose mean probability is the target.

    ``forward(images)`` takes the student's float batch ``(N, 1, H, W)`` in [0, 1] and returns ``(N,)``
    probabilities: each model resizes the batch to its own image size (by its fit) and divides its logit by
    its temperature, so what the student learns is the teacher's calibrated probability. Frozen: never
    trained, always in eval mode, run without gradients.
    """

    def __init__(self, models: list[nn.Module], record: list[dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.models = nn.ModuleList(models)
        self.record = record or []  # what was loaded, for the run's provenance
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Teacher:
        # Lightning puts every module in training mode each epoch: the teacher's batch norm and dropout
        # must keep their inference behaviour.
        return super().train(False)

    def __deepcopy__(self, memo: dict[int, Any]) -> Teacher:
        # Weight averaging (EMA) copies the LightningModule; a frozen teacher needs no second copy.
        return self

    def summary(self) -> str:
        """One line: ``teacher: NAME (network, size px), ...``."""
        return "teacher: " + ", ".join(f"{r['teacher']} ({r['name']}, {r['image_size']}px)" for r in self.record)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        probabilities = [torch.sigmoid(model(images).float()).reshape(-1) for model in self.models]
        return torch.stack(probabilities).mean(dim=0)


def score_images(teacher: Teacher, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """The teacher's probability of each uint8 image ``(N, S, S)``, un-augmented, as float32 ``(N,)``
    (``--distill-view original``: computed once before training)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    teacher = teacher.to(device)
    scores = [teacher(torch.from_numpy(images[i : i + batch_size]).to(device).float().div_(255.0)[:, None]).cpu()
              for i in range(0, len(images), batch_size)]
    return torch.cat(scores).numpy() if scores else np.zeros(0, np.float32)


def load_teacher(spec: str) -> Teacher:
    """The :class:`Teacher` of ``--teacher`` ``spec`` (CPU; the training step moves it to the batch's device).

    Raises :class:`ModelFileError` naming the teacher for a path that holds no model, or for an ONNX model
    without its PyTorch weights.
    """
    from pneumoscan.inference import load
    from pneumoscan.provenance import sha256_file

    names = teacher_names(spec)
    if not names:
        raise ModelFileError(f"--teacher {spec!r}: names no model; give a run folder, a model file or "
                             f"{DEFAULT_TEACHER!r}")
    models, record = [], []
    for name in names:
        try:
            # No scope gate: the teacher scores augmented training batches, never a user's file.
            classifier = load(None if name == DEFAULT_TEACHER else name, device="cpu", scope_check=False,
                              backend="torch")  # its torch module is what is held: no ONNX session
            module = classifier.torch_module()
        except PneumoscanError as exc:
            raise ModelFileError(f"--teacher {name}: {exc}") from None
        meta, weights = classifier.meta, classifier.weights
        models.append(module)
        record.append({"teacher": name, "weights": _recorded_path(weights, classifier), "sha256": sha256_file(weights) if weights else None,
                       "name": meta.name, "image_size": int(meta.image_size), "fit": meta.fit,
                       "temperature": float(meta.temperature or 1.0), "run_id": meta.run_id,
                       "created": meta.created, "version": meta.version})
    return Teacher(models, record)


def _recorded_path(weights, classifier) -> str:
    """How a teacher's weights are named in the student's provenance: a bundled model's by its place in the
    package (a student shipped in the package must carry no machine's paths), another's as given."""
    files = classifier.files
    if weights is not None and files is not None and files.bundled:
        from pneumoscan.bundled import BUNDLED_DIR

        return Path(os.path.relpath(weights, BUNDLED_DIR.parent.parent)).as_posix()
    return str(weights)


def same_teacher(teacher: Teacher, provenance_file: str | os.PathLike) -> None:
    """Raise :class:`ModelFileError` when a resumed run's teacher files are not the ones it started with
    (``provenance.json`` records their SHA-256): the rest of the run would learn from another model."""
    try:
        before = json.loads(Path(provenance_file).read_text(encoding="utf-8")).get("teacher") or {}
    except (OSError, ValueError):
        return  # nothing recorded to compare with
    recorded = [(m.get("teacher"), m.get("sha256")) for m in before.get("models", [])]
    now = [(m["teacher"], m["sha256"]) for m in teacher.record]
    if recorded and recorded != now:
        changed = ", ".join(name for (name, digest), (_, old) in zip(now, recorded, strict=False) if digest != old)
        raise ModelFileError(f"--teacher {changed or teacher.record[0]['teacher']}: not the model this run started "
                             f"with (its files changed since; see {provenance_file}); start a new run")
