"""Small synthetic inputs for the data tests: DICOMs written with pydicom, odd PNGs, broken files."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def asymmetric(height: int = 40, width: int = 60) -> np.ndarray:
    """Dark image with a bright top-left block and a mid-grey bottom-right block: any flip or transpose shows."""
    pixels = np.full((height, width), 20, np.uint8)
    pixels[: height // 4, : width // 4] = 250
    pixels[-height // 4:, -width // 4:] = 120
    return pixels


def write_dicom(
    path: Path, pixels: np.ndarray | None, *, photometric: str = "MONOCHROME2", bits_stored: int = 16,
    slope: float | None = None, intercept: float | None = None, window: tuple[float, float] | None = None,
    patient_id: str = "anon", sop_class: str = SecondaryCaptureImageStorage, sop_uid: str | None = None,
    accession: str | None = None, study_uid: str | None = None,
) -> Path:
    """A minimal valid DICOM file (with preamble and DICM marker); ``pixels`` None leaves out PixelData."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.Modality = patient_id, "CR"
    if accession is not None:
        ds.AccessionNumber = accession
    if study_uid is not None:
        ds.StudyInstanceUID = study_uid
    if pixels is not None:
        pixels = np.asarray(pixels, np.uint16)
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
        ds.PixelData = pixels.tobytes()
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept or 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` pixels but holds no pixel data (a bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def save(path: Path, pixels: np.ndarray, mode: str = "L", **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert(mode).save(path, **kwargs)
    return path


def truncated_jpeg(path: Path) -> Path:
    save(path, np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8), quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def textured(seed: int, size: int = 64) -> np.ndarray:
    """A random textured picture: two seeds are far apart in phash, a re-encoding stays close."""
    coarse = np.random.default_rng(seed).integers(0, 255, (16, 16), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC))
