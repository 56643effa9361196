"""Fitting a model's scope gate: training-time work that reads training radiographs and saves the model
with the gate's statistics (:mod:`pneumoscan.models.scope_gate` fits them; :mod:`pneumoscan.inference.scope`
applies them at every entry point). ``train`` fits it at the end of a run; ``pneumoscan fit-scope`` gives
one to a model saved without it.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from pneumoscan._memory import keep_freed_memory
from pneumoscan.errors import ImageReadError


def fit_scope(model_path: str | os.PathLike, data: str | os.PathLike, *, out: str | os.PathLike | None = None,
              images: int = 3000, held_out: int = 1500, seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """Fit the scope gate of the model at ``model_path`` on the training radiographs of ``data`` and save
    the model with it (``out``: another folder; default: in place). Returns the ``ModelMeta.scope`` entry.

    ``data`` is any dataset :func:`pneumoscan.data.load_dataset` reads; its ``train`` split is used (all of
    it when it has no splits). ``images`` fit the statistics, ``held_out`` other ones set the thresholds.
    """
    from pneumoscan.data import load_dataset
    from pneumoscan.models import load_model, save_model
    from pneumoscan.models.artifact import find_model_file, run_folder_of

    keep_freed_memory()  # the fit's forward passes reuse their memory (see pneumoscan._memory)
    model, meta = load_model(model_path)
    index = load_dataset(data)
    samples = index.by_split("train") or list(index.samples)
    scope = fit_model_scope(model, meta, [s.path for s in samples], images=images, held_out=held_out, seed=seed,
                            progress=progress)
    meta = replace(meta, scope=scope)
    target = Path(out) if out is not None else (run_folder_of(model_path) if Path(model_path).is_dir()
                                                else find_model_file(model_path).parent)
    save_model(target, model, meta)
    return scope


def fit_model_scope(model: Any, meta: Any, paths: list, *, images: int = 3000, held_out: int = 1500, seed: int = 0,
                    progress: bool = False) -> dict[str, Any]:
    """Fit and attach the gate of ``model`` (in memory) from the training images ``paths``; returns the
    ``ModelMeta.scope`` entry (the caller saves the model with it)."""
    from pneumoscan.data.image import read_image

    chosen = [paths[i] for i in fit_choice(len(paths), images, held_out, seed)]
    decoded = []
    for path in chosen:
        try:
            decoded.append(read_image(path, int(meta.image_size), meta.fit))
        except ImageReadError:
            continue
        if progress and len(decoded) % 500 == 0:
            print(f"scope gate: {len(decoded)} of {len(chosen)} training images decoded", flush=True)
    pixels = np.stack(decoded) if decoded else np.zeros((0, meta.image_size, meta.image_size), np.uint8)
    return fit_scope_on_pixels(model, pixels, fit=meta.fit, images=images, held_out=held_out, seed=seed)


def fit_choice(count: int, images: int, held_out: int, seed: int) -> np.ndarray:
    """Which of ``count`` training images :func:`fit_model_scope` reads (the others the gate never sees)."""
    return np.random.default_rng(seed).permutation(count)[: images + held_out]


def fit_scope_on_pixels(model: Any, pixels: np.ndarray, *, fit: str, images: int = 3000, held_out: int = 1500,
                        seed: int = 0) -> dict[str, Any]:
    """:func:`fit_model_scope` for training images already decoded (uint8 (N, S, S), the model's input):
    ``held_out`` of them (fewer when there are not ``images`` more: at least a fifth) set the thresholds,
    up to ``images`` others fit."""
    from pneumoscan.models.scope_gate import attach, fit_gate

    order = np.random.default_rng(seed).permutation(len(pixels))
    n_held = min(held_out, max(len(pixels) - images, len(pixels) // 5))
    fit_part, held_part = order[n_held : n_held + images], order[:n_held]
    gate, info = fit_gate(model, pixels[np.sort(fit_part)], pixels[np.sort(held_part)], fit=fit, seed=seed)
    attach(model, gate.to(next(model.parameters()).device))
    info["seed"] = seed
    return info
