"""``pneumoscan explain``: heatmap figures for the image files ``predict`` scores, and optionally the filters
and feature maps."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pneumoscan._io import atomic_write_bytes
from pneumoscan.errors import ImageReadError
from pneumoscan.explain.gradcam import DEFAULT_METHOD, METHODS
from pneumoscan.inference.classifier import Classifier, Prediction
from pneumoscan.provenance import DISCLAIMER


@dataclass
class ExplainResult:
    """What ``explain_images`` wrote, and the files it could not read or that are out of scope
    (``(file, reason)``)."""

    written: list[Path] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    layer: str = ""
    method: str = DEFAULT_METHOD
    predictions: list[Prediction] = field(default_factory=list)  # of the explained images, as predict gives them


def explain_images(model: str | os.PathLike | Classifier | None, images: list[str | os.PathLike],
                   out_dir: str | os.PathLike, *, filters: bool = False, layers: list[str] | None = None,
                   layer: str | None = None, method: str = DEFAULT_METHOD, alpha: float = 0.45) -> ExplainResult:
    """Write ``out_dir/<image>_gradcam.png`` for every image ``predict`` scores (radiograph beside its heatmap).

    Each image is decoded, screened by the scope gate and scored exactly as ``predict`` does (the same
    :class:`~pneumoscan.inference.Classifier`, ONNX preferred): the figure shows that probability, and an
    image ``predict`` refuses is skipped with predict's reason. With ``filters``, also ``out_dir/filters.png``
    (the first layer's filters) and, for the first explained image, ``out_dir/<image>_features_<layer>.png``
    for each of ``layers`` (default: first and last). ``layer`` and ``method`` override the heatmap's
    defaults (:class:`~pneumoscan.explain.Heatmaps`). Unreadable and refused files are skipped and listed.
    """
    from pneumoscan.explain.filters import feature_maps, first_layer_filters
    from pneumoscan.explain.gradcam import Heatmaps, is_flat
    from pneumoscan.explain.picture import explanation_picture
    from pneumoscan.inference import load

    classifier = model if isinstance(model, Classifier) else load(model, prefer_onnx=True)
    meta = classifier.meta
    # Gradients need the PyTorch weights: for an ONNX model, those beside it or in its run folder.
    maps = Heatmaps.of(classifier, layer=layer, method=method)
    network = classifier.torch_module().network if filters else None
    out = Path(out_dir)
    result = ExplainResult(layer=maps.layer, method=method)
    used: set[str] = set()
    first: tuple[str, np.ndarray] | None = None
    for source in images:
        name = os.fsdecode(source)
        try:
            image, reason = classifier.prepare(source)
        except ImageReadError as exc:  # unreadable, or a DICOM header the scope rules refuse
            result.failures.append((name, str(exc)))
            continue
        row = classifier.assess(image[None], [name], [reason])[0]
        if row.probability is None:  # out of scope, as predict says it
            result.failures.append((name, row.error or f"{name}: not scored"))
            continue
        pixels = np.clip(image[0] * 255.0 + 0.5, 0, 255).astype(np.uint8)
        stem = _unique(Path(name).stem, used)
        heat = maps(image[None])[0]
        shown = os.fsencode(Path(name).name).decode("utf-8", "backslashreplace")  # non-UTF-8 names: drawable
        title = (f"{shown}: p(pneumonia) = {row.probability:.3f}, {row.label} at threshold {meta.threshold:.3f}"
                 + (f"; {row.error}" if row.error else "") + "\n"
                 f"{METHODS[method]} of {meta.name} ({maps.layer}): where the evidence for PNEUMONIA is")
        caption = f"{METHODS[method]}" + (": flat map" if is_flat(heat) else "")
        png = _figure([(pixels, "radiograph (model input)"), (explanation_picture(pixels, heat, alpha=alpha), caption)],
                      title)
        result.written.append(atomic_write_bytes(out / f"{stem}_gradcam.png", png))
        result.predictions.append(row)
        first = first or (stem, pixels)
    if filters:
        grid = first_layer_filters(network)
        result.written.append(atomic_write_bytes(
            out / "filters.png", _figure([(grid, "")], f"{meta.name}: first convolution's filters")))
        if first is not None:
            for layer_name, grids in feature_maps(network, first[1], layers).items():
                png = _figure([(grids, "")], f"{first[0]}: feature maps of {layer_name} (most active channels)")
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
