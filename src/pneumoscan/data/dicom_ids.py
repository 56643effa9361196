"""The identifiers that tie a scored DICOM back to its patient and study, read from the header only.

One function for every place that needs them (prediction outputs, a worklist, a DICOM node), so the
columns are named and read the same way everywhere.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from pneumoscan.data.dicom_image import read_dicom_header
from pneumoscan.data.image import is_dicom, open_regular_file

# Output column -> DICOM keyword.
DICOM_ID_COLUMNS: dict[str, str] = {
    "patient_id": "PatientID",
    "accession_number": "AccessionNumber",
    "study_instance_uid": "StudyInstanceUID",
    "sop_instance_uid": "SOPInstanceUID",
}
# Raster formats never hold a DICOM header: no need to open them a second time.
_NOT_DICOM_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


def read_dicom_identifiers(source: str | os.PathLike | bytes) -> dict[str, str | None]:
    """PatientID, AccessionNumber, StudyInstanceUID and SOPInstanceUID of a DICOM file or its bytes.

    Keys are :data:`DICOM_ID_COLUMNS`' column names; a value is ``None`` when the element is absent or
    empty, and every value is ``None`` for a file that is not DICOM or cannot be read (decoding reports
    why; identifiers are never the reason a file fails). Reads the header only, never the pixels.
    """
    empty: dict[str, str | None] = dict.fromkeys(DICOM_ID_COLUMNS)
    try:
        if isinstance(source, bytes | bytearray | memoryview):
            stream = io.BytesIO(bytes(source))
        else:
            if Path(source).suffix.lower() in _NOT_DICOM_SUFFIXES:
                return empty
            # The decoder's own check: a FIFO or a device is refused here too, never opened to wait.
            stream = open_regular_file(source)
        with stream:
            if not is_dicom(stream.read(132)):
                return empty
            stream.seek(0)
            ds, _ = read_dicom_header(stream, "DICOM identifiers")
            values = {column: ds.get(keyword) for column, keyword in DICOM_ID_COLUMNS.items()}
    except Exception:  # noqa: BLE001 - a damaged header: the decoder names the problem on the row
        return empty
    return {column: (str(value).strip() or None) if value is not None else None for column, value in values.items()}
