"""The REST API, exercised in-process with FastAPI's TestClient on real radiographs and a real ONNX export.

The bad-input corpus (every broken file kind, bombs, hostile names, load shedding, hidden errors) is
tested against the same app in tests/robustness/test_robust_security.py; here: what a client gets for
real images, the explanation, the health and model routes, the docs and the loading rules.
"""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import pneumoscan
from pneumoscan.provenance import DISCLAIMER
from pneumoscan.serving.app import create_app


@pytest.fixture(scope="module")
def client(served_run, wait_ready):
    """The app as `pneumoscan serve RUN` builds it: from the run folder, loaded in the background."""
    with TestClient(create_app(served_run), raise_server_exceptions=False) as client:
        wait_ready(client)
        yield client


@pytest.fixture(scope="module")
def python_api(served_run):
    """What `pneumoscan.load(...)` gives for the same ONNX file: the reference for every number."""
    return pneumoscan.load(served_run / "export" / "model.onnx")


def _upload(path: Path, field: str = "file", content_type: str = "application/octet-stream"):
    return (field, (path.name, path.read_bytes(), content_type))


def test_predict_gives_the_python_apis_probability_for_a_real_radiograph(client, python_api, real_images):
    for image in real_images:
        response = client.post("/v1/predict", files=[_upload(image, content_type="image/jpeg")])
        assert response.status_code == 200, response.text
        body = response.json()
        expected = python_api.predict([image])[0]
        assert body["probability"] == pytest.approx(expected.probability, abs=1e-6)
        assert body["label"] == expected.label == ("PNEUMONIA" if body["probability"] >= 0.5 else "NORMAL")
        assert body["threshold"] == 0.5
        assert (body["model"], body["version"], body["backend"]) == ("mini-resnet", pneumoscan.__version__, "onnxruntime")
        assert body["filename"] == image.name
        assert body["latency_ms"] > 0
        assert body["explanation"] is None
        assert body["disclaimer"] == DISCLAIMER


def test_predict_reads_png_and_dicom_uploads_like_the_same_files_on_disk(client, python_api, original_image,
                                                                         tmp_path):
    pixels = np.asarray(Image.open(original_image).convert("L"))
    png = tmp_path / "original.png"
    Image.fromarray(pixels).save(png)
    dicom = _write_dicom(tmp_path / "original.dcm", pixels.astype(np.uint16) * 16)  # 12-bit, as scanners write
    for path in (png, dicom):
        response = client.post("/v1/predict", files=[_upload(path)])
        assert response.status_code == 200, (path.name, response.text)
        assert response.json()["probability"] == pytest.approx(python_api.predict([path])[0].probability, abs=1e-6)


def test_batch_scores_every_file_like_single_requests_and_reports_a_bad_one_on_its_row(
        client, real_images, original_image):
    files = [_upload(p, "files") for p in real_images]
    files.insert(1, ("files", ("notes.txt", b"not a radiograph", "text/plain")))
    files.append(_upload(original_image, "files"))
    response = client.post("/v1/predict/batch", files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [row["filename"] for row in body["results"]] == [name for _, (name, _, _) in files]
    bad = body["results"][1]
    assert bad["probability"] is None and bad["label"] is None and "not an image" in bad["error"]
    for (_, (name, data, _)), row in zip(files, body["results"], strict=True):
        if name == "notes.txt":
            continue
        single = client.post("/v1/predict", files={"file": (name, data)}).json()
        assert row["error"] is None
        assert row["probability"] == pytest.approx(single["probability"], abs=1e-6)
        assert row["label"] == single["label"]
    assert body["disclaimer"] == DISCLAIMER


def test_batch_refuses_more_files_than_its_limit(served_run, real_images):
    with TestClient(create_app(pneumoscan.load(served_run / "export" / "model.onnx"), max_batch_files=2)) as client:
        response = client.post("/v1/predict/batch", files=[_upload(p, "files") for p in real_images[:3]])
    assert response.status_code == 400
    assert "Maximum number of files is 2" in response.json()["detail"]


def test_explain_adds_a_gradcam_overlay_of_the_image_the_model_saw(client, real_images):
    response = client.post("/v1/predict?explain=true", files=[_upload(real_images[-1])])
    assert response.status_code == 200, response.text
    explanation = response.json()["explanation"]
    assert explanation["method"] == "grad-cam"
    overlay = Image.open(io.BytesIO(base64.b64decode(explanation["overlay_png_base64"])))
    seen = Image.open(io.BytesIO(base64.b64decode(explanation["image_png_base64"])))
    assert (overlay.format, overlay.mode, overlay.size) == ("PNG", "RGB", (256, 256))  # drawn at least 256 px
    assert (seen.mode, seen.size) == ("L", (64, 64))
    # The overlay is the radiograph tinted by the heatmap: coloured somewhere, not a copy of the image.
    rgb = np.asarray(overlay, dtype=np.int16)
    assert np.abs(rgb[..., 0] - rgb[..., 2]).max() > 20


def test_explain_is_refused_with_409_when_only_an_onnx_file_is_served(served_run, real_images, tmp_path, wait_ready):
    lone = tmp_path / "model.onnx"
    shutil.copy(served_run / "export" / "model.onnx", lone)
    with TestClient(create_app(lone)) as client:
        wait_ready(client)
        assert client.get("/v1/model").json()["serving"]["explain"] is False
        refused = client.post("/v1/predict?explain=true", files=[_upload(real_images[0])])
        plain = client.post("/v1/predict", files=[_upload(real_images[0])])
    assert refused.status_code == 409 and "model.safetensors" in refused.json()["detail"]
    assert plain.status_code == 200


def test_explain_refuses_weights_of_another_model_than_the_served_export(served_run, real_images, tmp_path,
                                                                         wait_ready):
    from pneumoscan.models import ModelMeta, build_model, save_model

    (tmp_path / "export").mkdir()
    shutil.copy(served_run / "export" / "model.onnx", tmp_path / "export" / "model.onnx")
    save_model(tmp_path, build_model("seed-cnn", 64), ModelMeta(name="seed-cnn", image_size=64, run_id="retrained"))
    # The .onnx file named explicitly (a run folder with a stale export is served with PyTorch instead).
    with TestClient(create_app(tmp_path / "export" / "model.onnx")) as client:
        wait_ready(client)
        response = client.post("/v1/predict?explain=true", files=[_upload(real_images[0])])
    assert response.status_code == 409
    assert "another model" in response.json()["detail"] and "export the run again" in response.json()["detail"]


def test_a_run_folder_without_an_onnx_export_is_served_with_pytorch(served_run, real_images, tmp_path, wait_ready):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(served_run / "model.safetensors", run / "model.safetensors")
    with TestClient(create_app(run)) as client:
        assert wait_ready(client)["backend"] == "torch"
        body = client.post("/v1/predict?explain=true", files=[_upload(real_images[0])]).json()
    onnx = pneumoscan.load(served_run / "export" / "model.onnx").predict([real_images[0]])[0]
    assert body["backend"] == "torch" and body["explanation"] is not None
    assert body["probability"] == pytest.approx(onnx.probability, abs=1e-4)  # the export's parity tolerance


def test_readyz_is_503_until_the_model_is_loaded_while_healthz_answers(served_run, monkeypatch, real_images, wait_ready):
    from pneumoscan.serving import app as app_module

    release = threading.Event()
    real_load = app_module.load_served

    def slow_load(path, threads=None):  # holds the load until the test has seen the "loading" answers
        release.wait(10)
        return real_load(path, threads)

    monkeypatch.setattr(app_module, "load_served", slow_load)
    with TestClient(create_app(served_run)) as client:
        loading = client.get("/readyz")
        assert loading.status_code == 503 and loading.json()["status"] == "loading"
        assert client.get("/healthz").json() == {"status": "ok"}
        early = client.post("/v1/predict", files=[_upload(real_images[0])])
        assert early.status_code == 503 and "loading" in early.json()["detail"]
        release.set()
        assert wait_ready(client)["status"] == "ready"


def test_a_model_that_fails_to_load_is_reported_on_readyz_and_requests_get_503(tmp_path, real_images):
    broken = tmp_path / "model.onnx"
    broken.write_bytes(b"this is not an ONNX model")
    with TestClient(create_app(broken)) as client:
        deadline = time.monotonic() + 30
        while (ready := client.get("/readyz")).json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        response = client.post("/v1/predict", files=[_upload(real_images[0])])
    assert ready.status_code == 503 and ready.json()["status"] == "failed"
    assert "model.onnx" in ready.json()["detail"] and "not a loadable ONNX model" in ready.json()["detail"]
    assert response.status_code == 503 and "failed to load" in response.json()["detail"]


def test_model_card_is_the_exported_card_with_the_disclaimer_and_how_it_is_served(client, served_run):
    card = client.get("/v1/model").json()
    assert card["disclaimer"] == DISCLAIMER
    assert card["intended_use"] and card["limitations"]  # from export/model_card.json
    assert card["serving"] == {"model": "mini-resnet", "version": pneumoscan.__version__, "file": "model.onnx",
                               "backend": "onnxruntime", "threshold": 0.5, "explain": True}
    assert str(served_run) not in client.get("/v1/model").text  # no server paths leak


def test_openapi_docs_work_offline_and_list_every_route(client):
    docs = client.get("/docs")
    assert docs.status_code == 200
    assets = [part.split('"')[0] for part in docs.text.split('src="')[1:] + docs.text.split('href="')[1:]]
    assert assets and all(url.startswith("/") for url in assets), assets
    for url in assets:
        assert client.get(url).status_code == 200, url
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/predict", "/v1/predict/batch", "/v1/model", "/healthz", "/readyz"} <= set(paths)


def test_page_states_the_disclaimer_and_loads_nothing_from_elsewhere(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert DISCLAIMER in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src" not in csp  # scripts: same origin only
    assert page.headers["x-content-type-options"] == "nosniff"
    assert client.get("/static/favicon.svg").status_code == 200  # its only URL is the SVG namespace
    for asset in ("/static/app.js", "/static/app.css"):
        response = client.get(asset)
        assert response.status_code == 200, asset
        assert "http://" not in response.text and "https://" not in response.text, asset
    assert "http://" not in page.text and "https://" not in page.text


def test_head_on_the_page_answers_its_headers_like_get(client):
    head, get = client.head("/"), client.get("/")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]


def test_an_upload_streamed_without_a_length_is_cut_off_at_the_limit_with_413(served_run):
    def body():  # chunked: the server only learns the size by counting
        yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.png\"\r\n\r\n"
        for _ in range(64):
            yield b"\0" * 4096

    with TestClient(create_app(pneumoscan.load(served_run / "export" / "model.onnx"),
                               max_upload_bytes=100_000)) as client:
        response = client.post("/v1/predict", content=body(),
                               headers={"content-type": "multipart/form-data; boundary=b"})
    assert response.status_code == 413
    assert "the limit is 97.7 KiB" in response.json()["detail"]


def test_app_from_env_serves_the_model_that_serve_passes_to_its_workers(served_run, monkeypatch, real_images, wait_ready):
    from pneumoscan.serving.server import ENV_LIMITS, ENV_MODEL, app_from_env

    monkeypatch.setenv(ENV_MODEL, str(served_run))
    monkeypatch.setenv(ENV_LIMITS, '{"max_upload_bytes": 1000}')
    with TestClient(app_from_env()) as client:
        wait_ready(client)
        too_big = client.post("/v1/predict", files=[_upload(real_images[0])])
    assert too_big.status_code == 413


def _write_dicom(path: Path, pixels: np.ndarray) -> Path:
    """A minimal 16-bit MONOCHROME2 DICOM file holding ``pixels``."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns = "CR", *pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.ascontiguousarray(pixels, np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_serving_an_onnx_model_imports_neither_torch_nor_lightning_nor_monai(served_run, real_images):
    """The fast start the ONNX path exists for: checked in a fresh interpreter, after a real prediction."""
    script = f"""
import sys
from fastapi.testclient import TestClient
from pneumoscan.serving.app import create_app
with TestClient(create_app({str(served_run / "export" / "model.onnx")!r})) as client:
    for _ in range(200):
        if client.get("/readyz").status_code == 200:
            break
    with open({str(real_images[0])!r}, "rb") as fh:
        assert client.post("/v1/predict", files={{"file": ("x.jpeg", fh.read())}}).status_code == 200
print(sorted(m for m in ("torch", "lightning", "monai") if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
