"""What ``predict`` reads: files, folders and globs expanded once, and images given as bytes or pixels
named and split into single images (:func:`list_inputs`). The results it writes: :mod:`~pneumoscan.inference.results`."""

from __future__ import annotations

import glob
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from pneumoscan.data.image import IMAGE_SUFFIXES, is_dicom
from pneumoscan.errors import ImageReadError


def expand_inputs(items: Iterable[str | os.PathLike]) -> list[str]:
    """Files, folders and globs -> the list of files to score, in a stable order.

    A file named explicitly is always kept, whatever its type: if it is not an image it is reported on
    its own row rather than silently dropped. A folder is searched recursively for image files
    (by extension, plus extension-less DICOMs, which scanners often write); hidden files are skipped.
    A pattern that matches nothing, or a path that does not exist, is kept so that it is reported too.
    """
    return list(dict.fromkeys(iter_inputs(items)))  # a file given twice is scored once


def iter_inputs(items: Iterable[str | os.PathLike]) -> Iterator[str]:
    """:func:`expand_inputs` one file at a time, without removing repeats: a folder is walked as it is read."""
    for item in items:
        text = os.fsdecode(item)
        path = Path(text).expanduser()
        if path.is_dir():
            yield from _images_under(path)
        elif path.exists():
            yield str(path)
        elif glob.has_magic(text):
            matches = sorted(glob.glob(os.path.expanduser(text), recursive=True))
            if not matches:
                yield text
            for match in matches:
                yield from (_images_under(Path(match)) if Path(match).is_dir() else [match])
        else:
            yield text  # missing: read_image reports "cannot read file (No such file ...)"


def _images_under(folder: Path) -> Iterator[str]:
    """The image files under ``folder``, in a stable order, one at a time (a huge tree is never listed whole)."""
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = Path(root) / name
            suffix = path.suffix.lower()
            if suffix in IMAGE_SUFFIXES or (not suffix and _looks_like_dicom(path)):
                yield str(path)


def _looks_like_dicom(path: Path) -> bool:
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False  # opening a FIFO would wait for a writer; a device never ends
        with open(path, "rb") as fh:
            return is_dicom(fh.read(132))
    except OSError:
        return False




def pixels_of(image):
    """A torch tensor as a numpy array (any device); numpy arrays and PIL images pass through."""
    if hasattr(image, "detach") and hasattr(image, "cpu"):
        return image.detach().cpu().numpy()
    if isinstance(image, np.ndarray) or is_pil(image):
        return image
    if hasattr(image, "__array__"):
        return np.asarray(image)
    raise ImageReadError(f"<image>: cannot score a {type(image).__name__}; give a path, bytes, a PIL image, "
                         "a numpy array or a torch tensor")


def is_pil(value) -> bool:
    from PIL import Image

    return isinstance(value, Image.Image)


def split_batch(array, name: str) -> list[tuple[str, object]]:
    """One image or a batch of them, as (name, image) pairs: (H, W) and (H, W, C) are one image; (N, H, W),
    (N, H, W, C) and (N, C, H, W) are N (C = 1, 3 or 4). (3, H, W) and (4, H, W) are refused: one image
    with its channels first (ToTensor, MONAI) and three or four grey images look the same."""
    if is_pil(array):
        return [(getattr(array, "filename", "") or name, array)]
    channels = (1, 3, 4)
    if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in channels):
        return [(name, array)]
    if array.ndim == 3 and array.shape[0] in (3, 4):
        raise ImageReadError(_ambiguous(name, array.shape))
    if array.ndim == 3:
        return [(f"{name}[{i}]", a) for i, a in enumerate(array)]
    if array.ndim == 4 and array.shape[-1] in channels:
        return [(f"{name}[{i}]", a) for i, a in enumerate(array)]
    if array.ndim == 4 and array.shape[1] in channels:
        return [(f"{name}[{i}]", np.moveaxis(a, 0, -1)) for i, a in enumerate(array)]
    raise ImageReadError(f"{name}: an array of shape {tuple(array.shape)}; expected one image (H, W) or (H, W, C), "
                         "or a batch (N, H, W), (N, H, W, C) or (N, C, H, W), with C = 1, 3 or 4")


def _ambiguous(name: str, shape) -> str:
    count = shape[0]
    return (f"{name}: an array of shape {tuple(shape)} is either one image with its {count} channels first "
            f"(what ToTensor gives) or {count} grey images; give one image as (H, W, C) "
            f"(np.moveaxis(a, 0, -1), tensor.permute(1, 2, 0)) or (1, {count}, H, W), and several grey images "
            "as (N, H, W, 1) or a list")


class Inputs(list):
    """Images to score as ``(name, image)`` pairs, listed once by :func:`list_inputs`: ``predict`` takes
    them as they are (the CLI counts them first, for its progress bar, without listing them twice)."""


def list_inputs(sources, once: bool = False) -> Inputs:
    """What :meth:`~pneumoscan.inference.Classifier.predict` is given, as ``(name, image)`` pairs, one per
    image given: paths expanded as the CLI expands them (folders, globs), arrays split into images, bytes
    and PIL images named by position. With ``once`` (the command line), a file given twice (by name, or
    in a folder or glob) is listed once, as by :func:`expand_inputs`. :class:`Inputs` pass through."""
    if isinstance(sources, Inputs):
        return sources
    seen: set[str] | None = set() if once else None

    def one(value, label: str) -> list[tuple[str, object]]:
        if isinstance(value, str | os.PathLike):
            files = iter_inputs([value]) if seen is not None else expand_inputs([value])
            return [(f, f) for f in files if seen is None or (f not in seen and not seen.add(f))]  # type: ignore[func-returns-value]
        if isinstance(value, bytes | bytearray | memoryview):
            return [(f"<bytes{label}>", value)]
        return split_batch(pixels_of(value), f"<image{label}>")

    if isinstance(sources, str | os.PathLike | bytes | bytearray | memoryview) or is_pil(sources) \
            or hasattr(sources, "__array__") or hasattr(sources, "detach"):
        return Inputs(one(sources, ""))
    return Inputs(item for i, value in enumerate(sources) for item in one(value, f" {i}"))
