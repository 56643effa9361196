"""DICOM files made from radiographs with pydicom: the chest radiographs a PACS sends, and what else it sends.

Good ones cover the decoding paths (MONOCHROME1 and 2, 12- and 16-bit, a VOI LUT, a window, 8-bit
Secondary Capture); the others are what a node must refuse with a reason (lateral, CT, SR, no pixels,
another body part, damaged pixel data).
"""

from __future__ import annotations

import io

import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CR = "1.2.840.10008.5.1.4.1.1.1"
DX = "1.2.840.10008.5.1.4.1.1.1.1"
SC = "1.2.840.10008.5.1.4.1.1.7"
CT = "1.2.840.10008.5.1.4.1.1.2"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"

GOOD = ("cr-mono2-12bit", "dx-mono1-16bit", "cr-voi-lut", "dx-window", "sc-8bit")
# name -> a word the refusal reason must contain
BAD = {"lateral": "lateral", "ct-slice": "CT Image Storage", "report": "Basic Text SR", "no-pixels": "no pixel data",
       "knee": "KNEE", "damaged-pixels": "pixel data"}


def study(patient_id: str = "PAT-0001", accession: str = "ACC-0001", date: str = "20261115") -> Dataset:
    """The patient and study attributes every instance of one study shares."""
    ds = Dataset()
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = patient_id, "Test^Child", "20200101", "F"
    ds.StudyInstanceUID, ds.AccessionNumber, ds.StudyID = generate_uid(), accession, "1"
    ds.StudyDate, ds.StudyTime, ds.ReferringPhysicianName = date, "101500", ""
    return ds


def instance(base: Dataset, sop_class: str, modality: str, number: int, pixels: np.ndarray | None = None,
             bits: int = 8, photometric: str = "MONOCHROME2", **attributes) -> Dataset:
    ds = Dataset()
    ds.update(base)
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = sop_class, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = generate_uid(), number, 1
    ds.Modality = modality
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        allocated = 8 if bits == 8 else 16
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = allocated, bits, bits - 1, 0
        ds.PixelData = pixels.astype(np.uint8 if allocated == 8 else np.uint16).tobytes()
    for key, value in attributes.items():
        setattr(ds, key, value)
    return ds


def encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def corpus(grays: list[np.ndarray], base: Dataset | None = None) -> dict[str, Dataset]:
    """One study: the five good instances (from ``grays``, 8-bit radiographs, cycled) and the six bad ones."""
    base = base if base is not None else study()
    g = [np.asarray(a, dtype=np.uint16) for a in grays]
    pick = lambda i: g[i % len(g)]  # noqa: E731
    chest = {"BodyPartExamined": "CHEST"}
    out: dict[str, Dataset] = {}
    out["cr-mono2-12bit"] = instance(base, CR, "CR", 1, pick(0) * 16, 12, ViewPosition="PA", **chest)
    out["dx-mono1-16bit"] = instance(base, DX, "DX", 2, (255 - pick(1)) * 257, 16, "MONOCHROME1",
                                     ViewPosition="AP", PresentationIntentType="FOR PRESENTATION", **chest)
    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 16]
    lut.LUTData = (np.sqrt(np.arange(4096) / 4095.0) * 65535).astype(np.uint16).tobytes()
    lut.LUTExplanation = "square root"
    out["cr-voi-lut"] = instance(base, CR, "CR", 3, pick(2) * 16, 12, ViewPosition="PA", VOILUTSequence=[lut], **chest)
    out["dx-window"] = instance(base, DX, "DX", 4, pick(3) * 200 + 1000, 16, ViewPosition="PA",
                                WindowCenter=26500, WindowWidth=51000, RescaleSlope=1, RescaleIntercept=0,
                                PresentationIntentType="FOR PRESENTATION", **chest)
    out["sc-8bit"] = instance(base, SC, "DX", 5, pick(4), 8, ConversionType="DI", **chest)
    out["lateral"] = instance(base, CR, "CR", 6, pick(0) * 16, 12, ViewPosition="LL", **chest)
    out["ct-slice"] = instance(base, CT, "CT", 7, pick(1) * 16, 12, RescaleSlope=1, RescaleIntercept=-1024,
                               ImageType=["ORIGINAL", "PRIMARY", "AXIAL"], **chest)
    report = instance(base, BASIC_TEXT_SR, "SR", 8, ValueType="CONTAINER", ContinuityOfContent="SEPARATE")
    out["report"] = report
    out["no-pixels"] = instance(base, CR, "CR", 9, ViewPosition="PA", **chest)
    out["knee"] = instance(base, CR, "CR", 10, pick(2) * 16, 12, ViewPosition="AP", BodyPartExamined="KNEE")
    damaged = instance(base, CR, "CR", 11, pick(3) * 16, 12, ViewPosition="PA", **chest)
    damaged.PixelData = damaged.PixelData[: len(damaged.PixelData) // 3]
    out["damaged-pixels"] = damaged
    return out
