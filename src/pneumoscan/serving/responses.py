"""The server's answers, as OpenAPI documents them: every result row carries the columns of the one results
schema (:class:`~pneumoscan.inference.rows.Prediction`, with the same values as ``predict`` gives), plus
what only an HTTP answer has (the echoed file name, the backend, the latency, a heatmap)."""

from __future__ import annotations

import logging
import typing
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, create_model

from pneumoscan.errors import ModelFileError
from pneumoscan.inference.model_card import build_model_card
from pneumoscan.inference.rows import COLUMNS, Prediction
from pneumoscan.provenance import DISCLAIMER

if TYPE_CHECKING:
    from pneumoscan.inference import Classifier

log = logging.getLogger("pneumoscan.serving")

# What OpenAPI says of the schema's columns; a column without a line here is documented by its name.
_DESCRIBED = {
    "file": "the uploaded file's name, echoed (never used as a path)",
    "probability": "probability of pneumonia, 0 to 1; none when the image could not be scored",
    "label": "PNEUMONIA when probability >= threshold, else NORMAL",
    "subtype": "for a PNEUMONIA answer of a model with a subtype head: bacterial, viral or uncertain (the "
               "calibrated probability of viral below, at or above, or inside the model's uncertain band); none "
               "otherwise. An image pattern, not a microbiological diagnosis",
    "viral_probability": "for a PNEUMONIA answer of a model with a subtype head: the calibrated probability, 0 to "
                         "1, that the pneumonia is viral rather than bacterial; none otherwise",
    "model": "architecture name",
    "version": "pneumoscan version that trained the model",
    "error": "why this file could not be scored ('out of scope: <reason>' for an image that is not a frontal "
             "chest radiograph); with scope_check=false, 'scope check off: ...' beside the probability",
    "size": "the upload's size in bytes",
    "mtime_ns": "always empty: an upload has no modification time",
}


def _row_fields() -> dict[str, Any]:
    hints = typing.get_type_hints(Prediction)
    return {name: (hints[name] | None, Field(None, description=_DESCRIBED.get(name))) for name in COLUMNS}


# The results schema as a response model: its fields follow Prediction's.
ResultRow: type[BaseModel] = create_model("ResultRow", **_row_fields())


class Explanation(BaseModel):
    method: str = Field(description="how the heatmap was computed")
    overlay_png_base64: str = Field(description="PNG: the heatmap over the image as the model sees it")
    image_png_base64: str = Field(description="PNG: the image as the model sees it (square, model size)")


class PredictResponse(ResultRow):  # type: ignore[misc,valid-type]
    filename: str = Field(description="the uploaded file's name, echoed (never used as a path)")
    backend: str = Field(description="onnxruntime or torch")
    latency_ms: float = Field(description="server time for this request after the upload: queue, decoding, inference")
    explanation: Explanation | None = None
    note: str | None = Field(None, description="with scope_check=false: 'scope check off: ...' for an image the "
                                               "scope gate would have refused")
    disclaimer: str = DISCLAIMER


class BatchItem(ResultRow):  # type: ignore[misc,valid-type]
    filename: str = Field(description="the uploaded file's name, echoed (never used as a path)")
    note: str | None = Field(None, description="with scope_check=false: 'scope check off: ...' for an image the "
                                               "scope gate would have refused")

    @classmethod
    def of(cls, row: Prediction) -> BatchItem:
        """One upload's result row, with its file name and (when it was scored) its note."""
        return cls(**row.record(), filename=row.file, note=row.error if row.probability is not None else None)


class BatchResponse(BaseModel):
    results: list[BatchItem]
    threshold: float
    model: str
    version: str
    backend: str
    latency_ms: float
    disclaimer: str = DISCLAIMER


def error_doc(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"example": {"detail": "a one-line message: what and how to fix"}}}}


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: error_doc("malformed multipart body or too many files"),
    413: error_doc("upload over the size limit"),
    415: error_doc("not an image (JPEG, PNG, TIFF, BMP, WEBP or DICOM), or not multipart/form-data"),
    422: error_doc("an image that cannot be decoded (corrupt, truncated, decompression bomb), an image out of "
                    "scope ('out of scope: <reason>': not a frontal chest radiograph), or a missing field"),
    503: error_doc("model not loaded yet, or too many requests waiting"),
}


def served_card(classifier: Classifier) -> dict[str, Any]:
    """The model card for ``GET /v1/model``: the one written for the model (``classifier.card``) when there
    is one, else one built the same way from its metadata (and its run's reports); always with the
    disclaimer and a ``serving`` section (what is served and how, which the page reads)."""
    try:
        card = classifier.card
    except ModelFileError as exc:
        log.warning("%s; serving a card built from the model's metadata", exc)
        card = None
    meta, files = classifier.meta, classifier.files
    card = dict(card) if card is not None else build_model_card(meta, files.run_folder if files else None)
    card.setdefault("disclaimer", DISCLAIMER)
    card["serving"] = {
        "model": meta.name,
        "version": meta.version,
        "file": files.path.name if files else None,  # the name only: the server's folders are nobody's business
        "backend": classifier.backend_name,
        "threshold": float(meta.threshold),
        "explain": classifier.explainable,
    }
    return card
