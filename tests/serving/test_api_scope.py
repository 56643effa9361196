"""The server's scope gate: 422 with the reason for an image out of scope, its row in a batch, and the
``scope_check=false`` option that scores it and says so."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

import pneumoscan
from helpers.gated import pictures
from pneumoscan.serving.app import create_app


@pytest.fixture(scope="module")
def client(gated_run, wait_ready):
    with TestClient(create_app(gated_run / "export" / "model.onnx"), raise_server_exceptions=False) as client:
        wait_ready(client)
        yield client


def _upload(path, field: str = "file"):
    return (field, (path.name, path.read_bytes(), "image/png"))


def test_an_image_out_of_scope_gets_422_with_the_reason_and_no_probability(client, tmp_path):
    page = pictures(tmp_path)["page"]
    response = client.post("/v1/predict", files=[_upload(page)])
    assert response.status_code == 422
    assert response.json()["detail"].startswith("page.png: out of scope: unlike the training radiographs"), response.text


def test_a_header_the_rules_refuse_gets_422_too(client, tmp_path):
    import numpy as np
    import pydicom

    from helpers.images import write_dicom

    path = write_dicom(tmp_path / "mr.dcm", np.random.default_rng(0).integers(0, 4000, (64, 64)))
    ds = pydicom.dcmread(path)
    ds.Modality = "MR"
    ds.save_as(path)
    response = client.post("/v1/predict", files=[_upload(path)])
    assert response.status_code == 422 and "out of scope: DICOM Modality MR" in response.json()["detail"]


def test_scope_check_false_scores_it_and_says_so(client, gated_run, tmp_path):
    found = pictures(tmp_path)
    response = client.post("/v1/predict?scope_check=false", files=[_upload(found["page"])])
    assert response.status_code == 200, response.text
    body = response.json()
    expected = pneumoscan.load(gated_run / "export" / "model.onnx").predict_proba(str(found["page"]))[0]
    assert body["probability"] == pytest.approx(float(expected), abs=1e-6)
    assert body["note"].startswith("page.png: scope check off: scored although out of scope")
    normal = client.post("/v1/predict", files=[_upload(found["chest0"])]).json()
    assert normal["note"] is None and normal["probability"] is not None


def test_a_batch_lists_the_image_out_of_scope_on_its_row(client, tmp_path):
    found = pictures(tmp_path)
    response = client.post("/v1/predict/batch", files=[_upload(found["chest0"], "files"), _upload(found["page"], "files")])
    assert response.status_code == 200
    chest, page = response.json()["results"]
    assert chest["probability"] is not None and chest["error"] is None
    assert page["probability"] is None and page["label"] is None and "out of scope" in page["error"]
    marked = client.post("/v1/predict/batch?scope_check=false", files=[_upload(found["page"], "files")]).json()
    assert marked["results"][0]["probability"] is not None and "scope check off" in marked["results"][0]["note"]
