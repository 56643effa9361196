"""The user-facing predictor: load a model once, score files, arrays or uploads."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumoscan.data.image import read_image
from pneumoscan.errors import ImageReadError


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
        self.backend = backend  # has .logits(batch: float32 N x 1 x S x S) -> np.ndarray (N,)
        self.meta = meta

    @property
    def threshold(self) -> float:
        return float(self.meta.threshold)

    @property
    def image_size(self) -> int:
        return int(self.meta.image_size)

    def preprocess(self, source: str | os.PathLike | bytes, name: str | None = None) -> np.ndarray:
        """Decode one image into the model's input: float32 (1, S, S) in [0, 1]."""
        pixels = read_image(source, self.meta.image_size, self.meta.fit, name=name)
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

    def predict(self, sources: Iterable[str | os.PathLike], batch_size: int = 32) -> list[Prediction]:
        """Score image files; a file that cannot be read gets a row with ``error`` and the rest go on."""
        results: list[Prediction] = []
        pending: list[tuple[str, np.ndarray]] = []

        def flush() -> None:
            if pending:
                probs = self.predict_proba(np.stack([x for _, x in pending]))
                results.extend(self._row(name, float(p)) for (name, _), p in zip(pending, probs, strict=True))
                pending.clear()

        for source in sources:
            name = str(source)
            try:
                pending.append((name, self.preprocess(source)))
            except ImageReadError as exc:
                flush()
                results.append(Prediction(name, None, None, self.threshold, self.meta.name, self.meta.version,
                                          str(exc)))
            if len(pending) >= batch_size:
                flush()
        flush()
        return results

    def _row(self, name: str, probability: float) -> Prediction:
        label = self.meta.class_names[int(probability >= self.threshold)]
        return Prediction(name, probability, label, self.threshold, self.meta.name, self.meta.version)


class TorchBackend:
    """Eager PyTorch on the best available device."""

    def __init__(self, model, device: str | None = None) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()

    def logits(self, batch: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            out = self.model(self.torch.from_numpy(batch).to(self.device))
        return out.float().reshape(-1).cpu().numpy()


def load(path: str | os.PathLike, device: str | None = None) -> Classifier:
    """Load a run folder, a ``.safetensors``/``.ckpt`` model, or an exported ``.onnx`` model."""
    path = Path(path).expanduser()
    if path.suffix.lower() == ".onnx":
        from pneumoscan.inference.onnx_backend import load_onnx

        return load_onnx(path)
    from pneumoscan.models.artifact import load_model

    model, meta = load_model(path)
    return Classifier(TorchBackend(model, device), meta)


