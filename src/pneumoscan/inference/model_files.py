"""Which files make a model: the one answer for every entry point (``predict``, ``explain``, ``calibrate``,
``pneumoscan.load``, the server and the DICOM node).

A MODEL argument resolves to :class:`ModelFiles` (:func:`resolve_model`), which :func:`load` turns into a
:class:`~pneumoscan.inference.Classifier` that keeps them (``classifier.files``, ``.weights``, ``.card``):

- ``None`` or ``"default"``, and ``"fast"`` (the names ``pneumoscan models`` lists them by, from
  :data:`pneumoscan.bundled.MODELS`; ``./default`` and ``./fast`` are folders): a model bundled with the
  package (:mod:`pneumoscan.bundled`): its ``model.onnx`` on the CPU (ONNX Runtime, no torch import), its
  ``model.safetensors`` for another device; its card either way. Its own folder for what commands write
  about it (reports, exports, calibrated versions) is ``runs/<name>`` (:attr:`ModelFiles.run_folder`). A
  bundled model this installation lacks is a one-line :class:`ModelFileError` saying how to build it.
- an ``.onnx`` file: ONNX Runtime. Its PyTorch weights (Grad-CAM, :meth:`Classifier.torch_module`) are
  ``model.safetensors`` beside it or in its run folder (``RUN/export/model.onnx`` -> ``RUN/model.safetensors``);
  its card is the ``model_card.json`` beside it.
- a ``.safetensors`` or Lightning ``.ckpt`` file: PyTorch, as asked.
- a folder (a run, a site-calibrated version, an export folder, the bundled folder): its PyTorch weights
  (``model.safetensors``, else ``export/model.safetensors``). With ``prefer_onnx`` on the CPU, its ONNX
  model instead (a fast start, no torch): ``export/model.onnx``, else a ``model.onnx`` in the folder itself,
  while it holds the same metadata as the folder's ``model.json`` (an export made before the run was
  retrained or resumed is stale and ignored; :attr:`ModelFiles.note` says why).

int8 graphs (``model.int8.onnx`` beside ``model.onnx``, :func:`pneumoscan.runs.int8_file`) are used only when
asked for: by naming the file, or with ``backend="onnx-int8"`` (``--backend onnx-int8``), which takes the int8
graph of whatever MODEL names (the bundled model's, a folder's export's, the one beside an ``.onnx`` file) and
refuses when there is none, or when a folder's is not made from the folder's model. A folder, and the bundled
model, are scored by the float graph otherwise. An int8 graph's card is ``model_card.int8.json`` beside it.

:func:`is_model` says whether a command-line item names a model at all (by these same rules). Nothing here
exports, and no file is ever unpickled.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pneumoscan import runs
from pneumoscan.errors import ConfigError, ModelFileError

if TYPE_CHECKING:
    from pneumoscan.inference.classifier import Classifier
    from pneumoscan.models.artifact import ModelMeta

ONNXRUNTIME = "onnxruntime"
TORCH = "torch"
INT8 = "onnx-int8"  # the backend choice that asks for a model's int8 graph (pneumoscan.serving.quantize)
BACKENDS = ("auto", TORCH, INT8)
MODEL_SUFFIXES = (".onnx", ".safetensors", ".ckpt")  # the model files resolve_model loads


@dataclass(frozen=True)
class ModelFiles:
    """The files behind one MODEL argument."""

    path: Path  # the file loaded for predictions
    backend: str  # ONNXRUNTIME or TORCH
    weights: Path | None = None  # the PyTorch weights (Grad-CAM, torch_module); the loaded file for TORCH
    card: Path | None = None  # the model card (model_card.json) that describes this model, when there is one
    run_folder: Path | None = None  # the run the model belongs to (its evaluation reports complete a card)
    bundled: bool = False  # a model shipped with the package
    name: str | None = None  # the bundled model's name (a key of pneumoscan.bundled.MODELS); None for others
    note: str | None = None  # why a folder's ONNX export is not used (missing, stale, unreadable), else None

    def read_card(self) -> dict[str, Any] | None:
        """The model card as a dict; None when there is none. Raises :class:`ModelFileError` when the
        card is there but unreadable."""
        if self.card is None:
            return None
        try:
            card = json.loads(self.card.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelFileError(f"{self.card}: unreadable model card ({exc}); export the model again") from None
        if not isinstance(card, dict):
            raise ModelFileError(f"{self.card}: a model card must be a JSON object; export the model again")
        return card

    def load_network(self, purpose: str = "Grad-CAM") -> tuple[Any, ModelMeta]:
        """The PyTorch network (eval mode, CPU) and its metadata, which gradients need (Grad-CAM,
        fine-tuning); raises :class:`ModelFileError` naming what is missing (for ``purpose``) for an ONNX
        model without them."""
        if self.weights is None:
            raise ModelFileError(f"{self.path}: {purpose} needs the PyTorch weights and there is no {runs.MODEL} "
                                 "beside this ONNX model or in its run folder; pass the run folder instead")
        from pneumoscan.models.artifact import load_model  # imports torch: only here

        return load_model(self.weights)


def bundled_name(model: str | os.PathLike | None) -> str | None:
    """The bundled model ``model`` names: ``default`` for None, a name of :data:`pneumoscan.bundled.MODELS`
    as given (a folder of that name is given as ``./default``, ``./fast``), else None."""
    from pneumoscan.bundled import MODELS, NAME

    if model is None:
        return NAME
    return model if isinstance(model, str) and model in MODELS else None


def is_bundled(model: str | os.PathLike | None) -> bool:
    """Whether ``model`` means a bundled model (:func:`bundled_name`)."""
    return bundled_name(model) is not None


def is_model(item: str | os.PathLike) -> bool:
    """Whether ``item`` names a model rather than images: ``default``, a model file (by its suffix), or a
    folder holding what :func:`resolve_model` loads from one (``model.safetensors`` or an ONNX export;
    ``model.json`` alone is no model)."""
    if is_bundled(item):
        return True
    path = Path(os.fsdecode(item)).expanduser()
    if path.suffix.lower() in MODEL_SUFFIXES:
        return True
    loadable = (path / runs.MODEL, path / runs.EXPORT / runs.MODEL, runs.export_file(path), path / runs.ONNX)
    return path.is_dir() and any(file.is_file() for file in loadable)


def split_model_and_inputs(items: Sequence[str], model: str | None) -> tuple[str | None, list[str]]:
    """``[MODEL] PATH...`` -> (model or None for the bundled default, the image paths).

    The first item is the model when ``model`` is not given, more than one item is, and it names a
    model (:func:`is_model`); a model alone, with no image, is refused rather
    than scored as one.
    """
    items = list(items)
    if model is not None:
        return model, items
    if items and is_model(items[0]):
        if len(items) == 1:
            raise ConfigError(f"{items[0]}: this is a model; give the images to score after it "
                              f"(pneumoscan predict {items[0]} chest.jpeg)")
        return items[0], items[1:]
    return None, items


def resolve_model(model: str | os.PathLike | None = None, *, device: str | None = None,
                  prefer_onnx: bool = False, backend: str = "auto") -> ModelFiles:
    """The files behind ``model`` (see the module docstring); raises :class:`ModelFileError` when there is
    no model there. With ``prefer_onnx``, checking that an export matches loads it once (see :func:`load`,
    which keeps that session)."""
    return _resolve(model, device, prefer_onnx, None, backend)[0]


def load(model: str | os.PathLike | None = None, device: str | None = None, *, prefer_onnx: bool = False,
         scope_check: bool = True, threads: int | None = None, backend: str = "auto") -> Classifier:
    """The :class:`~pneumoscan.inference.Classifier` for ``model`` (a run folder, a ``.safetensors``/``.ckpt``
    model, an exported ``.onnx`` model, None / ``"default"``: the bundled model, or ``"fast"``: the bundled fast
    one), holding its :class:`ModelFiles`.

    ``prefer_onnx``: a folder is scored by its matching ONNX model when there is one (see the module
    docstring). ``scope_check=False`` scores images the scope gate would refuse (they are marked).
    ``threads``: ONNX Runtime's threads per inference (None: its default, one per core). ``backend="torch"``:
    PyTorch whatever the model (a bundled one's ``model.safetensors``, an ONNX file's weights beside it),
    never ONNX Runtime; ``"onnx-int8"``: the model's int8 graph; ``"auto"``: as above. Raises
    :class:`ModelFileError` for anything that is not one
    of our models, or for ``torch`` without PyTorch weights.
    """
    files, classifier = _resolve(model, device, prefer_onnx, threads, backend)
    if classifier is None:
        if files.backend == ONNXRUNTIME:
            from pneumoscan.inference.onnx_backend import load_onnx

            classifier = load_onnx(files.path, device=device, threads=threads)
        else:
            from pneumoscan.inference.classifier import Classifier
            from pneumoscan.inference.torch_backend import TorchBackend
            from pneumoscan.models.artifact import load_model  # imports torch: only on this path

            network, meta = load_model(files.path)
            classifier = Classifier(TorchBackend(network, device), meta)
    classifier.files = files
    classifier.scope_check = scope_check
    return classifier


def _resolve(model: str | os.PathLike | None, device: str | None, prefer_onnx: bool, threads: int | None,
             backend: str) -> tuple[ModelFiles, Classifier | None]:
    """(the files, the classifier when deciding already loaded it)."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if backend == INT8:
        return _int8(model), None
    if backend != TORCH:
        return _resolve_auto(model, device, prefer_onnx, threads)
    files = _resolve_auto(model, device, False, threads)[0]
    if files.backend == TORCH:
        return files, None
    if files.weights is None:
        raise ModelFileError(f"{files.path}: the torch backend needs the PyTorch weights and there is no "
                             f"{runs.MODEL} beside this ONNX model or in its run folder")
    return replace(files, path=files.weights, backend=TORCH), None


def _resolve_auto(model: str | os.PathLike | None, device: str | None, prefer_onnx: bool,
                  threads: int | None) -> tuple[ModelFiles, Classifier | None]:
    name = bundled_name(model)
    if name is not None:
        return _bundled(name, device), None
    path = Path(model).expanduser()
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        if not path.is_file():
            raise ModelFileError(f"{path}: no such ONNX model file")
        return _onnx(path, runs.run_folder_of(path)), None
    if not path.is_dir():
        weights = runs.find_model_file(path)  # raises a clear ModelFileError when there is none
        return ModelFiles(weights, TORCH, weights, None, runs.run_folder_of(weights)), None
    note = None
    if prefer_onnx and device in (None, "cpu"):
        onnx = _candidate_export(path)
        if onnx is None:
            note = f"{runs.EXPORT}/{runs.ONNX} is missing"
        else:
            classifier, note = _matching(onnx, path, threads)
            if classifier is not None:
                return _onnx(onnx, path), classifier
    weights = runs.find_model_file(path)
    # No card: an export's one describes the exported model, which is not this one.
    return ModelFiles(weights, TORCH, weights, None, path, note=note), None


def _bundled(name: str, device: str | None) -> ModelFiles:
    from pneumoscan.bundled import NAME, folder

    where = folder(name)
    onnx, weights = where / runs.ONNX, where / runs.MODEL
    if not onnx.is_file():
        build = "python bench/build_default_model.py" + ("" if name == NAME else f" --which {name}")
        instead = "give a run folder or an exported .onnx" + ("" if name == NAME else f", or {NAME}")
        raise ModelFileError(f"the {name} model is not in this installation: {where} has no {runs.ONNX}; "
                             f"{instead}, or build it with {build}")
    card = where / runs.CARD_JSON  # it describes both files
    files = _onnx(onnx, Path(runs.RUNS_DIR) / name)
    files = replace(files, card=card if card.is_file() else None, bundled=True, name=name)
    return files if device in (None, "cpu") else replace(files, path=weights, backend=TORCH)


def _onnx(onnx: Path, run_folder: Path | None) -> ModelFiles:
    weights = next((w for w in (onnx.parent / runs.MODEL, onnx.parent.parent / runs.MODEL) if w.is_file()), None)
    card = onnx.parent / runs.card_names(onnx)[0]
    return ModelFiles(onnx, ONNXRUNTIME, weights, card if card.is_file() else None, run_folder)


def _int8(model: str | os.PathLike | None) -> ModelFiles:
    """The files of ``model``'s int8 graph (see the module docstring); :class:`ModelFileError` when it has none."""
    make = "make it with 'pneumoscan export MODEL --int8'"
    if is_bundled(model):
        files = _resolve_auto(model, None, False, None)[0]  # the bundled float graph, in its package folder
        # Shipped beside the float graph, or made here by `pneumoscan export NAME --int8` in its run folder.
        made = [runs.int8_file(files.path), runs.int8_file(runs.export_file(files.run_folder))]
        meta_file = files.path.parent / runs.MODEL_JSON
        int8 = next((f for f in made if f.is_file() and not _stale_int8(f, meta_file)), None)
        if int8 is None:
            raise ModelFileError(f"{made[1]}: this bundled model has no int8 graph; use the float one (no --backend) "
                                 f"or make it with 'pneumoscan export {model or 'default'} --int8 --int8-data DATA'")
        return replace(_onnx(int8, files.run_folder), bundled=True, name=files.name, weights=files.weights)
    path = Path(model).expanduser()
    if path.suffix.lower() == ".onnx":
        int8 = runs.int8_file(path)
        if not int8.is_file():
            raise ModelFileError(f"{int8}: no int8 graph beside {path.name}; {make}")
        return _onnx(int8, runs.run_folder_of(int8))
    if not path.is_dir():
        raise ModelFileError(f"{path}: an int8 graph is an ONNX file; give the run folder or its {runs.EXPORT}/"
                             f"{runs.int8_file(runs.ONNX).name}")
    export = _candidate_export(path)
    int8 = runs.int8_file(export if export is not None else runs.export_file(path))
    if not int8.is_file():
        raise ModelFileError(f"{path}: no int8 graph ({int8.relative_to(path)} is missing); {make}")
    why = _stale_int8(int8, path / runs.MODEL_JSON)
    if why:
        raise ModelFileError(f"{int8}: {why}; {make}")
    return _onnx(int8, path)


def _stale_int8(int8: Path, meta_file: Path) -> str | None:
    """Why the int8 graph is not made from the model of ``meta_file`` (a ``model.json``: the digest of the
    float metadata the graph records differs from its digest), or None when it is (or there is no such file)."""
    from pneumoscan.inference.onnx_backend import INT8_KEY, read_onnx_meta

    if not meta_file.is_file():
        return None
    try:
        import onnx as onnx_lib

        proto = onnx_lib.load(str(int8), load_external_data=False)
        meta = read_onnx_meta({p.key: p.value for p in proto.metadata_props}, int8)
        made_from = (meta.provenance.get(INT8_KEY) or {}).get("float_model")
        same = made_from == meta_digest(json.loads(meta_file.read_text(encoding="utf-8")))
    except Exception as exc:  # onnx raises protobuf's DecodeError and its own types
        return f"unreadable ({exc})"
    return None if same else f"stale: not made from the model of {meta_file}"


def meta_digest(meta: dict[str, Any]) -> str:
    """The SHA-256 of a model's metadata (as ``model.json`` holds it), whatever its key order: what ties an
    int8 graph to the float model it was made from."""
    import hashlib

    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode("utf-8")).hexdigest()


def folder_export(folder: str | os.PathLike) -> tuple[Path | None, str | None]:
    """(the ONNX model a folder is scored with under ``prefer_onnx``, or None; why not), from the ONNX
    file's metadata alone (no ONNX Runtime session): what ``pneumoscan models`` shows."""
    from pneumoscan.inference.onnx_backend import read_onnx_meta

    folder = Path(folder)
    onnx = _candidate_export(folder)
    if onnx is None:
        return None, f"{runs.EXPORT}/{runs.ONNX} is missing"
    try:
        import onnx as onnx_lib

        proto = onnx_lib.load(str(onnx), load_external_data=False)
        meta = read_onnx_meta({p.key: p.value for p in proto.metadata_props}, onnx)
    except Exception as exc:  # onnx raises protobuf's DecodeError and its own types
        return None, f"{onnx.relative_to(folder)} is unreadable ({exc})"
    why = _stale(meta, onnx, folder)
    return (None, why) if why else (onnx, None)


def _candidate_export(folder: Path) -> Path | None:
    """The folder's ONNX file that ``prefer_onnx`` considers: ``export/model.onnx``, else ``model.onnx``."""
    return next((f for f in (runs.export_file(folder), folder / runs.ONNX) if f.is_file()), None)


def _stale(meta: ModelMeta, onnx: Path, folder: Path) -> str | None:
    """Why the ONNX model with ``meta`` is not the folder's model (it does not hold the same metadata as the
    folder's ``model.json``), or None when it is (or the folder has no ``model.json``)."""
    meta_file = folder / runs.MODEL_JSON
    if not meta_file.is_file():
        return None
    try:
        same = json.loads(meta.to_json()) == json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        same = False
    return None if same else f"{onnx.relative_to(folder)} is stale (it does not match {runs.MODEL_JSON})"


def _matching(onnx: Path, folder: Path, threads: int | None) -> tuple[Classifier | None, str | None]:
    """(the folder's ONNX model, loaded, when it is the folder's model (:func:`_stale`), else None; why not)."""
    from pneumoscan.inference.onnx_backend import load_onnx

    try:
        classifier = load_onnx(onnx, device="cpu", threads=threads)
    except ModelFileError as exc:
        return None, f"{onnx.relative_to(folder)} is unreadable ({exc})"
    why = _stale(classifier.meta, onnx, folder)
    return (None, why) if why else (classifier, None)
