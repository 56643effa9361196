"""``pneumoscan explain``: heatmap figures for image files, and optionally the filters and feature maps."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pneumoscan._io import atomic_write_bytes
from pneumoscan.errors import ImageReadError
from pneumoscan.provenance import DISCLAIMER


@dataclass
class ExplainResult:
    """What ``explain_images`` wrote, and the files it could not read (``(file, reason)``)."""

    written: list[Path] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    layer: str = ""


def explain_images(model_path: str | os.PathLike | None, images: list[str | os.PathLike], out_dir: str | os.PathLike,
                   *, filters: bool = False, layers: list[str] | None = None, layer: str | None = None,
                   alpha: float = 0.45) -> ExplainResult:
    """Write ``out_dir/<image>_gradcam.png`` for every readable image (radiograph beside its heatmap).

    With ``filters``, also ``out_dir/filters.png`` (the first layer's filters) and, for the first readable
    image, ``out_dir/<image>_features_<layer>.png`` for each of ``layers`` (default: first and last).
    ``layer`` overrides the automatically chosen Grad-CAM target. Unreadable files are skipped and listed.
    """
    from pneumoscan.data.radiograph import read_radiograph
    from pneumoscan.explain.filters import feature_maps, first_layer_filters
    from pneumoscan.explain.gradcam import gradcam, overlay, target_layer
    from pneumoscan.inference.classifier import Classifier
    from pneumoscan.inference.model_files import resolve_model
    from pneumoscan.inference.torch_backend import TorchBackend

    # Gradients need the PyTorch weights: for an ONNX file, those beside it or in its run folder.
    model, meta = resolve_model(model_path).load_network()
    scorer = Classifier(TorchBackend(model, "cpu"), meta)  # the probability and label exactly as `predict`
    out = Path(out_dir)
    result = ExplainResult(layer=layer or target_layer(model, int(meta.image_size)))
    used: set[str] = set()
    first: tuple[str, np.ndarray] | None = None
    for source in images:
        name = os.fsdecode(source)
        try:
            pixels = read_radiograph(source, meta.image_size, meta.fit)
        except ImageReadError as exc:
            result.failures.append((name, str(exc)))
            continue
        stem = _unique(Path(name).stem, used)
        heat = gradcam(model, pixels[None], layer=result.layer)[0]
        row = scorer.prediction(name, float(scorer.predict_proba(pixels[None])[0]))
        probability, label = row.probability, row.label
        shown = os.fsencode(Path(name).name).decode("utf-8", "backslashreplace")  # non-UTF-8 names: drawable
        title = (f"{shown}: p(pneumonia) = {probability:.3f}, {label} at threshold {meta.threshold:.3f}\n"
                 f"Grad-CAM of {meta.name} ({result.layer}): where the evidence for PNEUMONIA is")
        png = _figure([(pixels, "radiograph (model input)"), (overlay(pixels, heat, alpha), "Grad-CAM")], title)
        result.written.append(atomic_write_bytes(out / f"{stem}_gradcam.png", png))
        first = first or (stem, pixels)
    if filters:
        grid = first_layer_filters(model)
        result.written.append(atomic_write_bytes(
            out / "filters.png", _figure([(grid, "")], f"{meta.name}: first convolution's filters")))
        if first is not None:
            for layer_name, maps in feature_maps(model, first[1], layers).items():
                png = _figure([(maps, "")], f"{first[0]}: feature maps of {layer_name} (most active channels)")
                safe = layer_name.replace(".", "-")
                result.written.append(atomic_write_bytes(out / f"{first[0]}_features_{safe}.png", png))
    return result


def _figure(panels: list[tuple[np.ndarray, str]], title: str) -> bytes:
    """Panels side by side with a title and the disclaimer, as PNG bytes (matplotlib, no display)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.9), squeeze=False)
    for ax, (image, caption) in zip(axes[0], panels, strict=True):
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(caption, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.text(0.5, 0.01, DISCLAIMER, ha="center", va="bottom", fontsize=6, wrap=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def _unique(stem: str, used: set[str]) -> str:
    candidate, n = stem, 1
    while candidate in used:
        n += 1
        candidate = f"{stem}-{n}"
    used.add(candidate)
    return candidate
