"""Which DICOM instances pneumoscan scores, and the identifiers that travel with every result.

A PACS sends whatever is in a study: laterals, CT slices, reports, scanned documents. Only frontal chest
radiographs are scored; anything else gets a reason, never a probability.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import UID

from pneumoscan.inference.scope import header_reason, message

# The storage classes a chest radiograph arrives in. Others (CT, MR, SR, ...) are acknowledged and refused.
CHEST_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
}
# The transfer syntaxes a chest radiograph is accepted in: uncompressed, deflated and every compression a
# CR/DX archive uses (decoded by pydicom with pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg and pyjpegls).
CHEST_TRANSFER_SYNTAXES = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian",
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2.1.99": "Deflated Explicit VR Little Endian",
    "1.2.840.10008.1.2.2": "Explicit VR Big Endian (retired)",
    "1.2.840.10008.1.2.4.50": "JPEG Baseline (Process 1)",
    "1.2.840.10008.1.2.4.51": "JPEG Extended (Process 2 and 4)",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless, Non-Hierarchical (Process 14)",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14, SV1)",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Lossy (Near-Lossless)",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Image Compression (Lossless Only)",
    "1.2.840.10008.1.2.4.91": "JPEG 2000 Image Compression",
    "1.2.840.10008.1.2.5": "RLE Lossless",
}


@dataclass(frozen=True)
class Identifiers:
    """The source's identifiers that a worklist row and every derived object carry."""

    patient_id: str
    accession_number: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str

    @classmethod
    def of(cls, ds: Dataset) -> Identifiers:
        return cls(*(str(ds.get(keyword, "") or "") for keyword in (
            "PatientID", "AccessionNumber", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
            "SOPClassUID")))


def refusal(ds: Dataset) -> str | None:
    """Why ``ds`` is not scored (not a frontal chest radiograph), or None when it is one.

    BodyPartExamined must say CHEST: an unlabelled radiograph may be a hand or a knee, and a pneumonia
    probability for those would look as confident as any other.
    """
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class not in CHEST_SOP_CLASSES:
        name = UID(sop_class).name if sop_class else "none"
        return f"not a radiograph: SOP class {name}"
    reason = header_reason(ds, require_chest=True)  # the scope gate's rules, one rule set for every entry point
    if reason is not None:
        return message(None, reason)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        return "no pixel data"
    return None


# PS3.5 9.1: components of digits without leading zeros (a lone 0 allowed), joined by dots, <= 64 chars.
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def is_valid_uid(value: object) -> bool:
    """Whether ``value`` follows the UI grammar (digits and dots, at most 64 characters)."""
    return isinstance(value, str) and len(value) <= 64 and _UID.fullmatch(value) is not None


def file_stem(uid: object) -> str:
    """A file name for an object named by ``uid``: the UID itself when it is a valid one, else
    ``invalid-uid-`` and a hash of it. Whatever a sender puts in a UID (``..``, ``/``, a newline, NUL,
    200 characters, nothing) never becomes a path."""
    text = str(uid if uid is not None else "")
    if is_valid_uid(text):
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"invalid-uid-{digest}"


def shown_uid(uid: object) -> str:
    """``uid`` for a log line or a message: as is when valid, else quoted with its control characters
    escaped (a newline in a UID must not forge a second log line) and cut to 80 characters."""
    text = str(uid if uid is not None else "")
    if is_valid_uid(text):
        return text
    quoted = ascii(text)
    return quoted if len(quoted) <= 80 else quoted[:77] + "..."


def describe(ds: Dataset) -> str:
    """A short name for logs and error messages: the SOP Instance UID (escaped when it is not a UID)."""
    uid = ds.get("SOPInstanceUID")
    return f"instance {shown_uid(uid)}" if uid else "an instance without a SOP Instance UID"


def printable(text: str) -> str:
    """``text`` for a log line: as is when printable, else quoted with its control characters escaped."""
    return text if text.isprintable() else ascii(text)


def encode(ds: Dataset) -> bytes:
    """``ds`` as a DICOM file in memory (preamble, file meta, data set), what ``read_image`` decodes."""
    from pydicom import dcmwrite
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    if not getattr(ds, "file_meta", None) or "TransferSyntaxUID" not in ds.file_meta:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", "")
        meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", "")
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()
