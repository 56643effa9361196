"""Which DICOM instances pneumoscan scores, and the identifiers that travel with every result.

A PACS sends whatever is in a study: laterals, CT slices, reports, scanned documents. Only frontal chest
radiographs are scored; anything else gets a reason, never a probability.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import UID

from pneumoscan.inference.scope import header_reason

# The storage classes a chest radiograph arrives in. Others (CT, MR, SR, ...) are acknowledged and refused.
CHEST_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
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
        return f"out of scope: {reason}"
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        return "no pixel data"
    return None


def describe(ds: Dataset) -> str:
    """A short name for logs and error messages: the SOP Instance UID."""
    return f"instance {ds.get('SOPInstanceUID', '?')}"


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
