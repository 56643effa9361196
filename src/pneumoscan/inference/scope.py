"""The scope gate: is this a frontal chest radiograph the model was made for? One rule set for every entry point.

``predict``, the Python API, the server, the DICOM node and ``dicom pull`` all ask this module, in order:

1. **What the file says** (:func:`header_reason`): a DICOM whose Modality is not a radiograph's (CR, DX or
   a DX-like one), whose BodyPartExamined names another body part, whose ViewPosition or ViewCodeSequence
   names a lateral or other non-frontal view, or whose PhotometricInterpretation cannot be a radiograph's.
   Only what a file states is held against it (a JPEG says nothing); the DICOM node also requires the
   chest to be named (``require_chest``), as a PACS sends every body part.
2. **What the pixels look like** (:func:`gate_reason`), from the gate every trained model carries
   (:mod:`pneumoscan.models.scope_gate`): the Mahalanobis distance of the network's penultimate features to the
   training radiographs'; a kind probe that refuses what is not one frontal chest radiograph filling the
   image (a viewer's screenshot, several radiographs in one image, one lung, a small radiograph on a
   canvas, a page of text); and an orientation probe that refuses a radiograph clearly rotated by 90, 180
   or 270 degrees, mirrored top-bottom or inverted. Each threshold keeps 99.8 % of held-out training
   radiographs. A model saved without a gate skips this step (:data:`NO_GATE_NOTE`).

Pixels that hold no radiograph at all (blank, a colour picture, a handful of grey levels, near-flat, NaN
or infinite values) are refused before any of this by decoding, for every entry point alike and whatever
the scope check (:mod:`pneumoscan.data.radiograph`, :mod:`pneumoscan.data.image`).

An image out of scope gets no probability and no label: its row's ``error`` says ``out of scope: <reason>``
with its score. With the check off (``--no-scope-check``, ``scope_check=False``) it is scored, and its
``error`` column says ``scope check off: ...`` beside the probability.
"""

from __future__ import annotations

import io
import os
import stat
from typing import TYPE_CHECKING, Any

import numpy as np

from pneumoscan.errors import ImageReadError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

OUT_OF_SCOPE = "out of scope"
CHECK_OFF = "scope check off"
NO_GATE_NOTE = ("this model carries no scope gate (saved before it existed): only the file and pixel rules apply; "
                "`pneumoscan fit-scope MODEL DATA` adds one")

# Radiograph modalities: computed and digital radiography, and conventional radiography (RG). The other
# DX-like ones name another body part (MG mammography, IO intra-oral, PX panoramic dental) and are refused,
# as is anything else (CT, MR, US, NM, PT, RTIMAGE, OT, ...).
RADIOGRAPH_MODALITIES = ("CR", "DX", "RG")
FRONTAL_VIEWS = ("PA", "AP")
LATERAL_VIEWS = ("LL", "RL", "LLD", "RLD", "LATERAL", "LAT")
# What a chest's BodyPartExamined says (DICOM PS3.16 CID 4031 and the spellings scanners write).
CHEST_PARTS = ("CHEST", "THORAX", "LUNG")
# SNOMED codes of ViewCodeSequence for frontal chest views (PS3.16 CID 4010), and their meanings' words.
FRONTAL_VIEW_CODES = {"R-10214": "postero-anterior", "R-10206": "antero-posterior", "399348003": "postero-anterior",
                      "272479003": "antero-posterior", "R-10202": "frontal", "R-102CD": "antero-posterior",
                      "399182000": "antero-posterior", "399214001": "postero-anterior"}
# Pseudo-colour cannot hold a radiograph. RGB and YBR can (a grey radiograph saved in colour by a secondary
# capture): they are decoded to grey and left to the learned check.
PHOTOMETRIC_NOT_RADIOGRAPH = ("PALETTE COLOR",)

class OutOfScopeError(ImageReadError):
    """The image decodes but is not a frontal chest radiograph the model was made for; the message says why."""


def message(name: str | None, reason: str) -> str:
    """The ``error`` of a refused image: ``<name>: out of scope: <reason>`` (without a name, where the
    instance is named elsewhere, as on the DICOM node's worklist: ``out of scope: <reason>``)."""
    return f"{name}: {OUT_OF_SCOPE}: {reason}" if name else f"{OUT_OF_SCOPE}: {reason}"


def check_off_message(name: str, reason: str) -> str:
    """The ``error`` of an image scored with the check off that the gate would have refused."""
    return f"{name}: {CHECK_OFF}: scored although {OUT_OF_SCOPE}: {reason}"


# -- 1. what the file says -----------------------------------------------------------------------------------
def header_reason(ds: Dataset, require_chest: bool = False) -> str | None:
    """Why the DICOM header of ``ds`` says it is not a frontal chest radiograph, or None.

    An absent attribute counts against the file only with ``require_chest`` (the DICOM node: a PACS sends
    every study, so the chest must be named there).
    """
    modality = _text(ds, "Modality")
    if modality and modality not in RADIOGRAPH_MODALITIES:
        return f"DICOM Modality {modality}, not a radiograph ({' or '.join(RADIOGRAPH_MODALITIES[:2])})"
    if require_chest and not modality:
        return "DICOM Modality missing; only CR and DX radiographs are scored"
    body_part = _text(ds, "BodyPartExamined")
    if body_part and body_part not in CHEST_PARTS:
        return f"DICOM BodyPartExamined {body_part}, not CHEST"
    if require_chest and not body_part:
        return "DICOM BodyPartExamined missing, not CHEST"
    view = _text(ds, "ViewPosition")
    if view and view not in FRONTAL_VIEWS:
        kind = "a lateral view" if view in LATERAL_VIEWS else "not a frontal view"
        return f"DICOM ViewPosition {view} ({kind}); only frontal (PA or AP) views are scored"
    view_code = _view_code(ds)
    if view_code is not None:
        return f"DICOM ViewCodeSequence {view_code}, not a frontal (PA or AP) view"
    photometric = _text(ds, "PhotometricInterpretation")
    if photometric in PHOTOMETRIC_NOT_RADIOGRAPH:
        return f"DICOM PhotometricInterpretation {photometric} (pseudo-colour); a radiograph is MONOCHROME1 or MONOCHROME2"
    return None


def _text(ds: Dataset, keyword: str) -> str:
    try:
        value = ds.get(keyword, "")
    except Exception:  # noqa: BLE001 - a damaged element reads as absent: decoding reports real damage
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        value = "\\".join(str(v) for v in value)
    return str(value or "").strip().upper()


def _view_code(ds: Dataset) -> str | None:
    """The first ViewCodeSequence item as ``code (meaning)`` when it names a non-frontal view, else None."""
    try:
        items = ds.get("ViewCodeSequence") or []
        if not items:
            return None
        item = items[0]
        code, meaning = str(item.get("CodeValue", "") or ""), str(item.get("CodeMeaning", "") or "")
    except Exception:  # noqa: BLE001 - as _text
        return None
    words = meaning.lower().replace("-", "").replace(" ", "")
    if code in FRONTAL_VIEW_CODES or any(w in words for w in ("posteroanterior", "anteroposterior", "frontal")):
        return None
    return f"{code} ({meaning})" if meaning else code or None


def file_reason(source: str | os.PathLike | bytes, data: bytes | None = None) -> str | None:
    """:func:`header_reason` of ``source`` when it is a DICOM (only the header is read), else None."""
    from pneumoscan.data.image import is_dicom

    try:
        if data is None:
            if isinstance(source, bytes | bytearray | memoryview):
                data = bytes(source)
            else:
                if not stat.S_ISREG(os.stat(source).st_mode):
                    return None  # a FIFO would wait for a writer, a device never ends: decoding refuses them
                with open(source, "rb") as fh:
                    data = fh.read(132)
                    if not is_dicom(data):
                        return None
                    fh.seek(0)
                    return _header_of(fh)
        if not is_dicom(data[:132]):
            return None
        return _header_of(io.BytesIO(data))
    except OSError:
        return None  # decoding reads the file too and reports what is wrong with it


def _header_of(fh) -> str | None:
    """:func:`header_reason` of the DICOM stream ``fh`` (header only; a deflated file inflated no further than
    a header's worth). None for a file without pixel data: decoding says so, which matters more."""
    import warnings

    from pneumoscan.data.dicom_image import read_dicom_header

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds, has_pixels = read_dicom_header(fh, "scope")
            if not has_pixels:  # the header ran to the end: no pixel data follows
                return None
    except Exception:  # noqa: BLE001 - decoding reports an unreadable header with its reason
        return None
    return header_reason(ds)


# -- 2. the learned gate -------------------------------------------------------------------------------------
def has_gate(meta: Any) -> bool:
    scope = getattr(meta, "scope", None) or {}
    return "distance_threshold" in scope and "orientation_threshold" in scope


# What to send instead, by the rule that refused: advice that fits what was sent.
SEND_RADIOGRAPH = "send one frontal chest radiograph, as the scanner or PACS exports it"
SEND_WHOLE = "send the radiograph itself, alone and filling the image (its DICOM, or the image exported from the viewer)"
SEND_UPRIGHT = "send the upright, non-inverted radiograph"


def gate_reason(meta: Any, output: np.ndarray) -> str | None:
    """Why the gate's ``output`` for one image (the distance, each orientation's log-probability, then each
    kind's: :mod:`pneumoscan.models.scope_meta`) puts it out of scope, or None. One reason, the first rule
    that refuses: unlike the training radiographs (with the likeliest kind when the kind probe has one), not
    one frontal radiograph filling the frame, not upright; the advice fits that reason. Where the kind and
    orientation probes both refuse, the surer one (the larger lead over upright, over one radiograph) names
    it: a radiograph sent upside down is not told it looks like several radiographs, nor a collage that it
    looks mirrored."""
    from pneumoscan.models.scope_meta import ORIENTATIONS, kinds_of, output_width, refusals

    scope = meta.scope
    values = np.asarray(output, np.float64).reshape(-1)
    if len(values) != output_width(scope):
        raise ValueError(f"the scope gate gave {len(values)} values per image, its metadata describes {output_width(scope)}")
    refused = {rule: bool(hit[0]) for rule, hit in refusals(values[None], scope).items()}
    kinds = kinds_of(scope)
    kind_logp = values[1 + len(ORIENTATIONS):]
    likeliest = kinds[1 + int(np.argmax(kind_logp[1:]))] if kinds and np.isfinite(kind_logp).all() else None
    if refused["distance"]:
        distance, limit = float(values[0]), float(scope["distance_threshold"])
        looks = f"; looks like {likeliest}" if likeliest and refused.get("kind") else ""
        return (f"unlike the training radiographs (scope distance {distance:.1f}, {distance / limit:.2f} x the "
                f"threshold {limit:.1f}){looks}; {SEND_RADIOGRAPH}")
    logp = values[1:1 + len(ORIENTATIONS)]
    if refused["orientation"] and not (refused.get("kind") and _lead(kind_logp) >= _lead(logp)):
        which = 1 + int(np.argmax(logp[1:])) if np.isfinite(logp).all() else 0
        shown = f"looks {ORIENTATIONS[which]}" if which else "not upright"
        return f"{shown} (p(upright) {np.exp(logp[0]):.3f}, p({ORIENTATIONS[which]}) {np.exp(logp[which]):.3f}); {SEND_UPRIGHT}"
    if refused.get("kind"):
        return (f"looks like {likeliest or 'something else'}, not one frontal chest radiograph filling the image "
                f"(p {np.exp(kind_logp[0]):.3f}, threshold {np.exp(float(scope['kind_threshold'])):.3f}); {SEND_WHOLE}")
    return None


def _lead(logp: np.ndarray) -> float:
    """How much likelier a probe's likeliest refused class is than its first (upright; one radiograph), in
    log-odds; -inf when the values are not finite (the other probe names the reason)."""
    return float(np.max(logp[1:]) - logp[0]) if np.isfinite(logp).all() else float("-inf")
