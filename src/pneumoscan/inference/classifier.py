"""The user-facing predictor: load a model once, score files, arrays or uploads.

Two backends give the same numbers: eager PyTorch (run folders, ``.safetensors``, ``.ckpt``) and ONNX
Runtime (``.onnx`` from ``pneumoscan export``; see :mod:`pneumoscan.inference.onnx_backend`). This module
imports neither torch nor ONNX Runtime itself, so the ONNX path never loads torch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumoscan.data.image import read_image
from pneumoscan.data.radiograph import check_radiograph
from pneumoscan.errors import ConfigError, ImageReadError, reason

# Above this many files, predict() shows a progress bar (on stderr) unless told otherwise.
PROGRESS_MIN_FILES = 50


@dataclass(frozen=True)
class Prediction:
    """One image's result; ``error`` is set (and the rest empty) when the file could not be read."""

    source: str
    probability: float | None
    label: str | None
    threshold: float
    model: str
    version: str
    error: str | None = None


class Classifier:
    """A loaded model with its preprocessing contract and threshold (scikit-learn-like, no fitting)."""

    def __init__(self, backend, meta) -> None:
        self.backend = backend  # has .name and .logits(batch: float32 N x 1 x S x S) -> np.ndarray (N,)
        self.meta = meta

    @property
    def threshold(self) -> float:
        return float(self.meta.threshold)

    @property
    def image_size(self) -> int:
        return int(self.meta.image_size)

    def preprocess(self, source: str | os.PathLike | bytes, name: str | None = None) -> np.ndarray:
        """Decode one image into the model's input: float32 (1, S, S) in [0, 1].

        Raises :class:`ImageReadError` for a file that cannot be decoded, and for an image of the wrong
        kind (blank, or a colour picture rather than a radiograph), with the reason.
        """
        pixels = read_image(source, self.meta.image_size, self.meta.fit, name=name)
        check_radiograph(source, pixels, name)
        return (pixels.astype(np.float32) / 255.0)[None]

    def predict_proba(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Pneumonia probabilities for preprocessed images, shape (N, 1, S, S) float32 or (N, S, S) uint8."""
        images = np.asarray(images)
        if images.dtype == np.uint8:
            images = images.astype(np.float32) / 255.0
        if images.ndim == 3:
            images = images[:, None]
        out = [self.backend.logits(np.ascontiguousarray(images[i : i + batch_size], dtype=np.float32))
               for i in range(0, len(images), batch_size)]
        logits = np.concatenate(out) if out else np.zeros(0, np.float32)
        return 1.0 / (1.0 + np.exp(-logits / float(self.meta.temperature or 1.0)))

    def predict(
        self, sources: Iterable[str | os.PathLike], batch_size: int = 32, progress: bool | None = None
    ) -> list[Prediction]:
        """Score image files in batches, one row per file in the order given.

        A file that cannot be read, or is not a radiograph, gets a row with ``error`` and the rest are
        scored. ``progress`` shows a bar; ``None`` shows it for more than ``PROGRESS_MIN_FILES`` files.
        """
        sources = list(sources)
        if progress is None:
            progress = len(sources) > PROGRESS_MIN_FILES
        results: list[Prediction | None] = [None] * len(sources)
        pending: list[tuple[int, str, np.ndarray]] = []

        def flush() -> None:
            if pending:
                probs = self.predict_proba(np.stack([x for _, _, x in pending]), batch_size=batch_size)
                for (i, name, _), p in zip(pending, probs, strict=True):
                    results[i] = self.prediction(name, float(p))
                pending.clear()

        bar = _progress_bar(len(sources), progress)
        for i, source in enumerate(sources):
            name = os.fsdecode(source)
            try:
                pending.append((i, name, self.preprocess(source)))
            except ImageReadError as exc:
                results[i] = self._error_row(name, str(exc))
            except Exception as exc:  # noqa: BLE001 - a decoder bug on one file must not stop the others
                results[i] = self._error_row(name, f"{name}: unexpected error ({type(exc).__name__}: {exc})")
            if len(pending) >= batch_size:
                flush()
            bar.update()
        flush()
        bar.close()
        return [r for r in results if r is not None]

    def _error_row(self, name: str, error: str) -> Prediction:
        return Prediction(name, None, None, self.threshold, self.meta.name, self.meta.version, error)

    def prediction(self, name: str, probability: float) -> Prediction:
        """The row for one scored image: its label at the stored threshold, model name and version."""
        label = self.meta.class_names[int(probability >= self.threshold)]
        return Prediction(name, probability, label, self.threshold, self.meta.name, self.meta.version)


def _progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="scoring", unit="img", disable=not enabled, leave=False)


class TorchBackend:
    """Eager PyTorch on the best available device."""

    name = "torch"

    def __init__(self, model, device: str | None = None) -> None:
        import torch

        self.torch = torch
        try:
            self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
            self.model = model.to(self.device).eval()
        except (RuntimeError, AssertionError) as exc:  # an unknown device, or CUDA absent from this build
            raise ConfigError(f"--device {device}: not usable here ({reason(exc)}); use cpu") from None

    def logits(self, batch: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            out = self.model(self.torch.from_numpy(batch).to(self.device))
        return out.float().reshape(-1).cpu().numpy()


def load(path: str | os.PathLike, device: str | None = None, *, prefer_onnx: bool = False) -> Classifier:
    """Load a run folder, a ``.safetensors``/``.ckpt`` model, or an exported ``.onnx`` model.

    With ``prefer_onnx``, a run folder whose ``export/model.onnx`` holds the same metadata as its
    ``model.json`` is served by ONNX Runtime (no torch import: a fast start); otherwise by PyTorch.
    Raises :class:`~pneumoscan.errors.ModelFileError` for anything that is not one of our models; no
    file is ever unpickled.
    """
    path = Path(path).expanduser()
    if path.suffix.lower() == ".onnx":
        from pneumoscan.inference.onnx_backend import load_onnx

        return load_onnx(path, device=device)
    if prefer_onnx and device in (None, "cpu") and (exported := matching_export(path)) is not None:
        return exported
    from pneumoscan.models.artifact import load_model

    model, meta = load_model(path)
    return Classifier(TorchBackend(model, device), meta)


def matching_export(run: Path, threads: int | None = None) -> Classifier | None:
    """The run's ONNX export, loaded, if it is the export of this run's model (same metadata), else None.

    ``threads``: ONNX Runtime's threads per inference (None: its default).
    """
    import json

    from pneumoscan.errors import ModelFileError
    from pneumoscan.inference.onnx_backend import load_onnx

    onnx_file, meta_file = run / "export" / "model.onnx", run / "model.json"
    if not (run.is_dir() and onnx_file.is_file() and meta_file.is_file()):
        return None
    try:
        classifier = load_onnx(onnx_file, device="cpu", threads=threads)
        same = json.loads(classifier.meta.to_json()) == json.loads(meta_file.read_text(encoding="utf-8"))
    except (ModelFileError, OSError, ValueError):
        return None  # a broken export: the weights themselves are still there
    return classifier if same else None
