"""Results as DICOM objects a radiologist's viewer shows: a Comprehensive SR and a Grad-CAM screenshot.

Both are built with highdicom, which checks the modules it writes, and both keep the source's patient and
study, so that the PACS files them with the radiograph they describe. Their UIDs are derived from the
source instance and the model: scoring the same instance with the same model again replaces the result
in the PACS instead of adding a copy.
"""

from __future__ import annotations

import copy
import datetime as dt
import io
import threading

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from pneumoscan import __version__
from pneumoscan.inference.classifier import Prediction
from pneumoscan.provenance import DISCLAIMER

MANUFACTURER = "pneumoscan"
# Concepts without a standard code use a private coding scheme ("99" prefix, as the standard reserves).
SCHEME = "99PNEUMOSCAN"
REPORT_TITLE = Code("18748-4", "LN", "Diagnostic imaging report")
PROBABILITY = Code("PS001", SCHEME, "Probability of pneumonia")
THRESHOLD = Code("PS002", SCHEME, "Operating threshold")
LABEL = Code("PS003", SCHEME, "Label at the operating threshold")
FINDING = Code("121071", "DCM", "Finding")
PNEUMONIA = Code("233604007", "SCT", "Pneumonia")
NO_PNEUMONIA = Code("PS004", SCHEME, "Pneumonia not detected")
# The subtype of a PNEUMONIA answer (inference.rows.Prediction.subtype), as SNOMED CT findings where one exists.
SUBTYPE = Code("PS005", SCHEME, "Pneumonia subtype")
SUBTYPE_VALUES = {"bacterial": Code("53084003", "SCT", "Bacterial pneumonia"),
                  "viral": Code("75570004", "SCT", "Viral pneumonia"),
                  "uncertain": Code("373068000", "SCT", "Undetermined")}
VIRAL_PROBABILITY = Code("PS006", SCHEME, "Probability that the pneumonia is viral")
ALGORITHM_NAME = Code("111001", "DCM", "Algorithm Name")
ALGORITHM_VERSION = Code("111003", "DCM", "Algorithm Version")
COMMENT = Code("121106", "DCM", "Comment")
SOURCE = Code("260753009", "SCT", "Source")
NO_UNITS = Code("1", "UCUM", "no units")
SR_SERIES_NUMBER = 9901
OVERLAY_SERIES_NUMBER = 9902
SR_DESCRIPTION = "pneumoscan result - NOT FOR DIAGNOSIS"
OVERLAY_SIZE = 512  # px, the overlay's longest side
OVERLAY_DESCRIPTION = "pneumoscan Grad-CAM - NOT FOR DIAGNOSIS"


def _uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=[str(part) for part in parts])


def _model_identity(meta) -> tuple[str, str, str]:
    return meta.name, meta.version or "", meta.run_id or ""


def sr_content(source: Dataset, prediction: Prediction, meta) -> list:
    """What the SR says about ``source``: the content items of its root container, in order (the finding,
    the probability, the label and threshold, the model, the disclaimer, the image it is about). A new
    statement of every SR is one more item here; nothing else changes."""
    import highdicom as hd

    positive = prediction.label == meta.class_names[-1]
    relation = hd.sr.RelationshipTypeValues.CONTAINS
    return [
        hd.sr.CodeContentItem(FINDING, PNEUMONIA if positive else NO_PNEUMONIA, relationship_type=relation),
        hd.sr.NumContentItem(PROBABILITY, float(prediction.probability), NO_UNITS, relationship_type=relation),
        hd.sr.TextContentItem(LABEL, str(prediction.label), relationship_type=relation),
        hd.sr.NumContentItem(THRESHOLD, float(prediction.threshold), NO_UNITS, relationship_type=relation),
        *subtype_items(prediction, relation),
        hd.sr.TextContentItem(ALGORITHM_NAME, meta.name, relationship_type=relation),
        hd.sr.TextContentItem(ALGORITHM_VERSION, _version(meta), relationship_type=relation),
        hd.sr.TextContentItem(COMMENT, DISCLAIMER, relationship_type=relation),
        hd.sr.ImageContentItem(SOURCE, source.SOPClassUID, source.SOPInstanceUID, relationship_type=relation),
    ]


def structured_report(source: Dataset, prediction: Prediction, meta) -> Dataset:
    """A Comprehensive SR with the probability, label, threshold, model and disclaimer for ``source``.

    ``source`` is the scored instance (its pixels may be absent: only its identifiers are used); the SR
    is in its study, in a series of pneumoscan results, and references it as evidence and as the
    image the finding is about.

    The SR is highdicom's (:func:`highdicom_report`), made without its per-instance cost: highdicom builds
    the parts that depend on the model only once per model (:func:`_shell`), and each instance gets what
    depends on it filled in here, by the same highdicom calls where highdicom has a rule (the patient and
    study modules, the acquisition equipment): its constructor looks every module up in the standard's
    tables and deep-copies its evidence per SR. ``tests/dicom/test_dicom_results.py`` checks both give
    the same SR.
    """
    import highdicom as hd
    from pydicom.dataset import FileMetaDataset
    from pydicom.valuerep import DA, TM

    shell = _shell(meta)
    header = _header(source)
    # An object of highdicom's class, for its rule of which patient and study attributes a result copies.
    target = object.__new__(type(shell))
    Dataset.__init__(target, _elements(shell))
    target.copy_patient_and_study_information(header)
    sr = Dataset(target)  # a plain data set holding those elements (given a Dataset, pydicom shares them)
    if "SpecificCharacterSet" in header:
        sr.SpecificCharacterSet = header.SpecificCharacterSet
    else:
        sr.pop("SpecificCharacterSet", None)
    sr.ContributingEquipmentSequence = [*_acquisition_equipment(header), *shell.ContributingEquipmentSequence]
    sr.SeriesInstanceUID = _uid("sr-series", source.StudyInstanceUID, *_model_identity(meta))
    sr.SOPInstanceUID = _uid("sr", source.SOPInstanceUID, *_model_identity(meta))
    sr.InstanceNumber = int(source.get("InstanceNumber") or 1)
    now = dt.datetime.now()
    sr.InstanceCreationDate = sr.ContentDate = DA(now.date())
    sr.InstanceCreationTime = sr.ContentTime = TM(now.time())
    sr.CurrentRequestedProcedureEvidenceSequence = [_evidence(source)]
    sr.ContentSequence = hd.sr.ContentSequence(sr_content(source, prediction, meta))
    sr.file_meta = FileMetaDataset(_elements(shell.file_meta))
    sr.preamble = shell.preamble  # written by whoever encodes it as a file (STOW-RS clients do)
    sr.file_meta.MediaStorageSOPInstanceUID = sr.SOPInstanceUID
    return sr


def highdicom_report(source: Dataset, prediction: Prediction, meta) -> Dataset:
    """:func:`structured_report` built by highdicom's ``ComprehensiveSR`` whole (the reference it is checked
    against, and its template)."""
    import highdicom as hd

    root = hd.sr.ContainerContentItem(name=REPORT_TITLE)
    root.ContentSequence = hd.sr.ContentSequence(sr_content(source, prediction, meta))
    sr = hd.sr.ComprehensiveSR(
        evidence=[_header(source)],
        content=root,
        series_instance_uid=_uid("sr-series", source.StudyInstanceUID, *_model_identity(meta)),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=_uid("sr", source.SOPInstanceUID, *_model_identity(meta)),
        instance_number=int(source.get("InstanceNumber") or 1),
        manufacturer=MANUFACTURER,
        is_complete=True,
    )
    sr.SeriesDescription = SR_DESCRIPTION
    sr.SoftwareVersions = f"pneumoscan {__version__}"
    return sr


def subtype_items(prediction: Prediction, relation) -> list:
    """The SR's content items for the prediction's subtype: a coded finding (bacterial or viral pneumonia,
    or undetermined for ``uncertain``) and the calibrated probability of viral; none without a subtype."""
    import highdicom as hd

    if prediction.subtype is None or prediction.viral_probability is None:
        return []
    return [hd.sr.CodeContentItem(SUBTYPE, SUBTYPE_VALUES[prediction.subtype], relationship_type=relation),
            hd.sr.NumContentItem(VIRAL_PROBABILITY, float(prediction.viral_probability), NO_UNITS,
                                 relationship_type=relation)]


def prepare(meta) -> None:
    """Make the model's SR template now: highdicom reads the standard's tables on first use (a second or
    more), which the first instance scored would otherwise wait for."""
    _shell(meta)


_SHELLS: dict[tuple, Dataset] = {}
_CACHE_LOCK = threading.Lock()


def _shell(meta) -> Dataset:
    """The model's SR made by highdicom for a stand-in source (a chest CR with empty identifiers): what
    does not depend on the instance (SOP common, SR document modules, series, manufacturer, root
    container) is taken from it as it is."""
    key = (*_model_identity(meta), meta.created, tuple(meta.class_names))
    with _CACHE_LOCK:
        if key not in _SHELLS:
            stand_in = Dataset()
            stand_in.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR Image Storage
            stand_in.SOPInstanceUID = stand_in.StudyInstanceUID = stand_in.SeriesInstanceUID = "1.2.3"
            placeholder = Prediction(file="", probability=0.0, label=meta.class_names[0],
                                     threshold=float(meta.threshold), model=meta.name, version=meta.version)
            _SHELLS[key] = highdicom_report(stand_in, placeholder, meta)
        return _SHELLS[key]


# What highdicom's ContributingEquipment.for_image_acquisition reads of a source, besides its SOP class.
_EQUIPMENT_KEYWORDS = ("SOPClassUID", "Manufacturer", "ManufacturerModelName", "SoftwareVersions",
                       "DeviceSerialNumber", "InstitutionName", "InstitutionalDepartmentName", "InstitutionAddress",
                       "StationName", "AcquisitionDateTime", "AcquisitionDate", "AcquisitionTime")
_EQUIPMENT: dict[tuple, list] = {}


def _acquisition_equipment(header: Dataset) -> list:
    """The source's acquisition equipment as highdicom lists it in a result (none when the source names no
    manufacturer, or is not an image). highdicom looks the SOP class up in the standard's tables on every
    call (1-4 ms): the item is kept for sources that read the same."""
    import highdicom as hd

    if not header.get("Manufacturer"):
        return []  # highdicom refuses such a source; asking it would cost the lookup for nothing
    key = tuple(str(header.get(keyword, "")) for keyword in _EQUIPMENT_KEYWORDS)
    with _CACHE_LOCK:
        if key in _EQUIPMENT:
            return _EQUIPMENT[key]
    try:
        equipment = [hd.ContributingEquipment.for_image_acquisition(header)]
    except (ValueError, AttributeError, KeyError):  # not an image class: highdicom lists none either
        equipment = []
    with _CACHE_LOCK:
        if len(_EQUIPMENT) >= 256:  # acquisition times differ between images: a bounded memo, not a store
            _EQUIPMENT.clear()
        _EQUIPMENT[key] = equipment
    return equipment


def _elements(ds: Dataset) -> dict:
    """The top-level elements of ``ds``, each a copy: setting a value sets it on the element, and the
    shell's elements must not change under the SRs made from it (their sequences are replaced, not changed)."""
    return {element.tag: copy.copy(element) for element in ds}


def _evidence(source: Dataset) -> Dataset:
    """The Current Requested Procedure Evidence item of ``source`` (its study, series and instance), as
    highdicom's ``collect_evidence`` makes it for evidence in the SR's own study."""
    instance = Dataset()
    instance.ReferencedSOPClassUID, instance.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
    series = Dataset()
    series.SeriesInstanceUID, series.ReferencedSOPSequence = source.SeriesInstanceUID, [instance]
    study = Dataset()
    study.StudyInstanceUID, study.ReferencedSeriesSequence = source.StudyInstanceUID, [series]
    return study


def overlay_image(source: Dataset, rgb: np.ndarray, prediction: Prediction, meta, size: int = OVERLAY_SIZE) -> Dataset:
    """A Secondary Capture of the Grad-CAM overlay ``rgb`` (H, W, 3 uint8) in the source's study.

    The image is scaled to ``size`` px on its longest side, keeping its aspect, and carries a burned-in
    line saying what it is and that it is not for diagnosis (BurnedInAnnotation YES).
    """
    import highdicom as hd

    pixels = _burn_in(rgb, size, [
        f"pneumoscan Grad-CAM ({meta.name}): p(pneumonia) {prediction.probability:.3f}, {prediction.label}",
        "where the model's evidence is; NOT FOR DIAGNOSIS",
    ])
    # A radiograph is displayed with the patient's left on the right of the screen and the feet at the
    # bottom; the overlay keeps the source's orientation, or that convention when the source has none.
    orientation = tuple(source.get("PatientOrientation") or ("L", "F"))
    image = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=_header(source),
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=_uid("overlay-series", source.StudyInstanceUID, *_model_identity(meta)),
        series_number=OVERLAY_SERIES_NUMBER,
        sop_instance_uid=_uid("overlay", source.SOPInstanceUID, *_model_identity(meta)),
        instance_number=int(source.get("InstanceNumber") or 1),
        manufacturer=MANUFACTURER,
        patient_orientation=orientation[:2],
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )
    image.SeriesDescription = OVERLAY_DESCRIPTION
    # An unpaired body part: no Laterality needed (General Series, type 2C). Only chests are scored.
    image.BodyPartExamined = str(source.get("BodyPartExamined") or "CHEST")
    image.BurnedInAnnotation = "YES"
    image.ImageComments = DISCLAIMER
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
    image.SourceImageSequence = [ref]
    return image


def encode(ds: Dataset) -> bytes:
    """A derived object as a DICOM file in memory."""
    from pydicom import dcmwrite

    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _version(meta) -> str:
    """The model's version as its metadata states it: the pneumoscan version that trained it and when.
    Not the run's folder name: that is a local name (the shipped model's is "run"), not a version."""
    parts = [f"pneumoscan {meta.version}" if meta.version else "", f"trained {meta.created}" if meta.created else ""]
    return ", ".join(p for p in parts if p) or "unknown"


# What a derived object takes from its source: the groups of the patient, clinical trial, study, series
# and instance identification modules (not acquisition, image pixel or pixel data).
_KEPT_GROUPS = frozenset({0x0008, 0x0010, 0x0012, 0x0020, 0x0032, 0x0038})


# Type 2 attributes of the patient and general study modules: an anonymiser empties or removes them, and
# highdicom reads each one. A missing one is written empty, as the standard allows for type 2.
_TYPE_2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
           "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _header(source: Dataset) -> Dataset:
    """The identification attributes of ``source``, the type 2 ones it lacks added empty. highdicom
    deep-copies its evidence: a copy of the whole header (or of a 30 MB pixel array) per result would
    cost more than the scoring."""
    header = Dataset()
    for element in source:
        if element.tag.group in _KEPT_GROUPS:
            header.add(element)
    for keyword in _TYPE_2:
        if keyword not in header:
            setattr(header, keyword, None)
    return header


def _burn_in(rgb: np.ndarray, size: int, lines: list[str]) -> np.ndarray:
    """``rgb`` scaled to ``size`` px on its longest side with ``lines`` written in a black band at the bottom."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB")
    scale = size / max(image.size)
    if scale != 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    height = max(10, size // 36)
    font = ImageFont.load_default(size=height)
    top = image.height - len(lines) * (height + 3) - 4
    draw.rectangle((0, top, image.width, image.height), fill=(0, 0, 0))
    for i, line in enumerate(lines):
        draw.text((4, top + 2 + i * (height + 3)), line, fill=(255, 255, 0), font=font)
    return np.asarray(image, dtype=np.uint8)
