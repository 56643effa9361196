"""The same radiograph in every transfer syntax a PACS sends (dcmtk and pydicom made them), received by a
real C-STORE and read by ``predict``: each lossless one scores as the uncompressed image, the lossy ones
are scored too."""

from __future__ import annotations

import time

import pydicom
import pytest

import orthanc
import pneumoscan
from helpers import chest_dicoms, transfer_syntaxes
from pneumoscan.dicom import Processor, StorageNode
from pneumoscan.dicom.result_objects import PROBABILITY

LOSSY_TOLERANCE = 0.05  # the lossy syntaxes change pixels: a score near the original's, not equal


@pytest.fixture(scope="module")
def syntax_files(grays, tmp_path_factory):
    if (why := transfer_syntaxes.missing()) is not None:
        pytest.skip(why)
    base = chest_dicoms.study()
    chest = {"ViewPosition": "PA", "BodyPartExamined": "CHEST"}
    source12 = chest_dicoms.instance(base, chest_dicoms.CR, "CR", 1, grays[0].astype("uint16") * 16, 12, **chest)
    source8 = chest_dicoms.instance(base, chest_dicoms.CR, "CR", 1, grays[0].astype("uint16"), 8, **chest)
    source8.SOPInstanceUID = source12.SOPInstanceUID
    folder = tmp_path_factory.mktemp("syntaxes")
    files = transfer_syntaxes.matrix(source12, source8, folder)
    model_reference = {12: folder / "source-12bit.dcm", 8: folder / "source-8bit.dcm"}
    return files, model_reference


def _expected(dicom_model, reference) -> dict[int, float]:
    rows = pneumoscan.load(dicom_model).predict([reference[12], reference[8]])
    return {12: rows[0].probability, 8: rows[1].probability}


def _bits(name: str) -> int:
    return 8 if transfer_syntaxes.SYNTAXES[name][2] else 12


def _check(name: str, lossless: bool, probability: float, expected: dict[int, float]) -> None:
    tolerance = 1e-3 if lossless else LOSSY_TOLERANCE
    assert probability == pytest.approx(expected[_bits(name)], abs=tolerance), name


def _sr_probability(path) -> float:
    sr = pydicom.dcmread(path)
    item = next(i for i in sr.ContentSequence
                if i.ValueType == "NUM" and i.ConceptNameCodeSequence[0].CodeValue == PROBABILITY.value)
    return float(item.MeasuredValueSequence[0].NumericValue)


def _recording_processor(model, out):
    """The node's processor, recording each instance's outcome by the transfer syntax it arrived in."""
    processor = Processor(model, out)
    received = {}
    process_many = processor.process_many

    def record(items):
        outcomes = process_many(items)
        for item, outcome in zip(items, outcomes, strict=True):
            received[str(item.ds.file_meta.TransferSyntaxUID)] = outcome
        return outcomes

    processor.process_many = record
    return processor, received


def test_every_common_transfer_syntax_is_accepted_by_the_node_and_scored_as_the_uncompressed_image(
        dicom_model, syntax_files, tmp_path):
    from pynetdicom import AE
    from pynetdicom.sop_class import ComputedRadiographyImageStorage

    files, reference = syntax_files
    expected = _expected(dicom_model, reference)
    port = orthanc.free_port()
    processor, received = _recording_processor(dicom_model, tmp_path)
    with StorageNode(processor, port):
        ae = AE(ae_title="MODALITY")
        for _, syntax, _ in files.values():  # one context per syntax, as a modality offering each
            ae.add_requested_context(ComputedRadiographyImageStorage, syntax)
        assoc = ae.associate("127.0.0.1", port)
        assert assoc.is_established
        try:
            accepted = {c.transfer_syntax[0] for c in assoc.accepted_contexts}
            assert accepted == {syntax for _, syntax, _ in files.values()}
            for name, (path, syntax, _) in files.items():
                assert assoc.send_c_store(path).Status == 0, name
                # Every copy is the same instance (one SOP Instance UID): a copy sent before the last is
                # scored is replaced by it in the spool. Each is scored before the next is sent.
                deadline = time.monotonic() + 60
                while syntax not in received and time.monotonic() < deadline:
                    time.sleep(0.05)
        finally:
            assoc.release()
    for name, (_, syntax, lossless) in files.items():
        outcome = received[syntax]  # received in the syntax it was sent in, not converted by the sender
        assert outcome.scored, f"{name}: {outcome.reason}"
        _check(name, lossless, outcome.probability, expected)
        _check(name, lossless, _sr_probability(outcome.sr_file), expected)


def test_predict_reads_every_common_transfer_syntax(dicom_model, syntax_files):
    files, reference = syntax_files
    expected = _expected(dicom_model, reference)
    names = list(files)
    rows = pneumoscan.load(dicom_model).predict([files[n][0] for n in names])
    for name, row in zip(names, rows, strict=True):
        assert row.probability is not None, f"{name}: {row}"
        _check(name, files[name][2], row.probability, expected)


@pytest.mark.e2e  # starts a PACS
def test_orthanc_sends_compressed_instances_that_the_node_scores(orthanc_ready, dicom_model, syntax_files, tmp_path):
    files, reference = syntax_files
    expected = _expected(dicom_model, reference)
    port = orthanc.free_port()
    processor, received = _recording_processor(dicom_model, tmp_path / "out")
    compressed = {n: f for n, f in files.items() if n not in ("implicit-le", "explicit-le", "deflated")}
    with orthanc.Orthanc(tmp_path / "orthanc", modalities={"pneumoscan": ("PNEUMOSCAN", port)}) as pacs, \
            StorageNode(processor, port):
        for path, _, _ in compressed.values():
            # Each file is its own instance in Orthanc: give it its own UIDs.
            ds = pydicom.dcmread(path)
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
            ds.SeriesInstanceUID = pydicom.uid.generate_uid()
            pacs.send_to("pneumoscan", [pacs.upload(chest_dicoms.encode(ds))])
    for name, (_, syntax, lossless) in compressed.items():
        assert syntax in received, f"{name}: Orthanc did not send it compressed ({sorted(received)})"
        assert received[syntax].scored, f"{name}: {received[syntax].reason}"
        _check(name, lossless, received[syntax].probability, expected)
