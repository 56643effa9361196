"""Security: model files are never unpickled; the server bounds what a client can make it do.

The server is exercised in-process with FastAPI's TestClient on a tiny randomly initialised model (the
checks are about the HTTP layer and decoding, not the weights).
"""

from __future__ import annotations

import os
import pickle
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

import pneumoscan
from helpers.corpus import (
    CASES,
    ODD_GOOD_CASES,
    Case,
    make_corpus,
    read_if_regular,
    run_cli,
    tiny_model,
    write_good_images,
)
from pneumoscan.errors import ModelFileError
from pneumoscan.models import load_model

# ------------------------------------------------------------------------------------ model files


class _Payload:
    """Unpickling this runs ``open(marker, 'w')``: the proof that code from the file was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _malicious_checkpoint(path: Path, marker: Path) -> Path:
    # A file shaped like a Lightning checkpoint, with the payload inside the state dict.
    torch.save({"state_dict": {"model.weight": _Payload(marker)}, "pneumoscan": "{}"}, path)
    return path


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth"])
def test_a_checkpoint_carrying_a_pickle_payload_is_refused_and_never_run(suffix: str, tmp_path) -> None:
    marker = tmp_path / "payload-ran"
    path = _malicious_checkpoint(tmp_path / f"model{suffix}", marker)
    for loader in (load_model, pneumoscan.load):
        with pytest.raises(ModelFileError) as info:
            loader(path)
        assert str(path) in str(info.value) and "refused" in str(info.value)
    assert not marker.exists(), "the pickle payload was executed"


def test_a_plain_pickle_named_safetensors_is_refused_and_never_run(tmp_path) -> None:
    marker = tmp_path / "payload-ran"
    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ModelFileError) as info:
        load_model(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    return run_cli(argv, capsys)


@pytest.mark.parametrize("command", ["predict", "explain", "evaluate", "export", "train --pretrained",
                                     "train --resume"])
def test_every_command_refuses_a_pickle_payload_in_one_line_and_never_runs_it(command: str, tmp_path,
                                                                               capsys) -> None:
    marker = tmp_path / "payload-ran"
    evil = _malicious_checkpoint(tmp_path / "model.ckpt", marker)
    image = write_good_images(tmp_path / "data" / "PNEUMONIA", 1, 2)[0]
    write_good_images(tmp_path / "data" / "NORMAL", 0, 2)
    run = tmp_path / "run"
    if command == "train --resume":  # a run folder whose last checkpoint was swapped for a payload
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / "last.ckpt").write_bytes(evil.read_bytes())
        (run / "config.yaml").write_text(f"data: {tmp_path / 'data'}\nmodel: seed-cnn\nimage_size: 32\n")
    argv = {
        "predict": ["predict", str(evil), str(image)],
        "explain": ["explain", str(evil), str(image), "--out", str(tmp_path / "out")],
        "evaluate": ["evaluate", str(evil), "--data", str(tmp_path / "data"), "--split", "all",
                     "--out", str(tmp_path / "out")],
        "export": ["export", str(evil), "--out", str(tmp_path / "out" / "model.onnx")],
        "train --pretrained": ["train", "--data", str(tmp_path / "data"), "--model", "seed-cnn", "--image-size", "32",
                               "--epochs", "1", "--pretrained", str(evil), "--out", str(tmp_path / "runs"),
                               "--no-progress"],
        "train --resume": ["train", "--resume", str(run)],
    }[command]
    code, text = _cli(argv, capsys)
    assert code == 2, text[-2000:]
    errors = [line for line in text.splitlines() if line.startswith("pneumoscan: error:")]
    assert len(errors) == 1, text[-2000:]
    assert ("model.ckpt" in errors[0] or "last.ckpt" in errors[0]) and "refused" in errors[0], errors[0]
    assert "Traceback" not in text
    assert not marker.exists(), "the pickle payload was executed"


@pytest.fixture(scope="module")
def model_files(exported_run) -> dict[str, Path]:
    """A tiny model as safetensors and ONNX (shared with other tests: read, never changed)."""
    return {"safetensors": exported_run / "model.safetensors", "onnx": exported_run / "export" / "model.onnx"}


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
@pytest.mark.parametrize("kind", ["safetensors", "onnx"])
def test_a_damaged_model_file_is_a_one_line_error_naming_it(kind: str, damage: str, model_files, tmp_path,
                                                            capsys) -> None:
    data = model_files[kind].read_bytes()
    damaged = tmp_path / model_files[kind].name
    damaged.write_bytes({"truncated": data[: len(data) // 2], "empty": b"",
                         "garbage": os.urandom(4096)}[damage])
    image = write_good_images(tmp_path / "images", 1, 1)[0]
    code, text = _cli(["predict", str(damaged), str(image)], capsys)
    assert code == 2, text[-2000:]
    errors = [line for line in text.splitlines() if line.startswith("pneumoscan: error:")]
    assert len(errors) == 1 and str(damaged) in errors[0] and "Traceback" not in text, text[-2000:]


def test_a_weights_only_checkpoint_of_ours_still_loads(tmp_path) -> None:
    """The other side of the refusal: a checkpoint holding only tensors and strings is accepted."""
    model, meta = load_model(tiny_model(tmp_path / "run"))
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": state, "pneumoscan": meta.to_json(), "epoch": 3}, path)
    loaded, loaded_meta = load_model(path)
    assert loaded_meta.name == meta.name
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


# ----------------------------------------------------------------------------------------- server

fastapi_testclient = pytest.importorskip("fastapi.testclient")


@pytest.fixture(scope="module", params=["torch", "onnx"])
def classifier(request, model_files):
    """The served model through both backends: ONNX Runtime is what `pneumoscan serve` prefers."""
    return pneumoscan.load(model_files["onnx" if request.param == "onnx" else "safetensors"])


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory) -> dict[str, Path]:
    return make_corpus(tmp_path_factory.mktemp("upload-corpus"))


@pytest.fixture(scope="module")
def good_image(tmp_path_factory) -> bytes:
    return write_good_images(tmp_path_factory.mktemp("good"), 1, 1)[0].read_bytes()


def _client(classifier, **limits):
    from pneumoscan.serving.app import create_app

    return fastapi_testclient.TestClient(create_app(classifier, **limits), raise_server_exceptions=False)


def _upload_name(case: Case) -> str:
    name = case.filename if isinstance(case.filename, str) else os.fsdecode(case.filename)
    return name.encode("utf-8", "replace").decode("utf-8")  # what a browser would send


def _assert_clean_error(response) -> None:
    body = response.text
    assert response.headers["content-type"].startswith("application/json")
    assert "Traceback" not in body and 'File "' not in body, body[:500]
    assert set(response.json()) == {"detail"}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_server_answers_every_corpus_upload_without_a_server_error(case: Case, classifier, corpus_files) -> None:
    name = _upload_name(case)
    data = read_if_regular(corpus_files[case.name])
    with _client(classifier) as client:
        response = client.post("/v1/predict", files={"file": (name, data, "application/octet-stream")})
        if case.scorable_upload and data:
            assert response.status_code == 200, response.text
            assert 0.0 <= response.json()["probability"] <= 1.0
        else:
            assert response.status_code in (415, 422), (response.status_code, response.text)
            _assert_clean_error(response)
            assert name in response.json()["detail"], response.text  # names the upload
        # The server is still up and still scores a good image.
        assert client.get("/healthz").status_code == 200


def test_server_batch_reports_bad_files_on_their_rows_and_scores_the_good_ones(
    classifier, corpus_files, good_image
) -> None:
    names = [c.name for c in CASES]
    files = [("files", (_upload_name(c), read_if_regular(corpus_files[c.name]), "application/octet-stream"))
             for c in CASES[:15]]
    files.append(("files", ("good.png", good_image, "image/png")))
    with _client(classifier, max_batch_files=16) as client:
        response = client.post("/v1/predict/batch", files=files)
    assert response.status_code == 200, response.text
    rows = response.json()["results"]
    assert len(rows) == len(files)
    assert rows[-1]["error"] is None and 0.0 <= rows[-1]["probability"] <= 1.0
    for name, row in zip(names, rows[:-1], strict=False):
        case = next(c for c in CASES if c.name == name)
        scored = row["error"] is None
        assert scored == (case.scorable_upload and bool(read_if_regular(corpus_files[name]))), (name, row)


def test_server_refuses_an_upload_over_the_size_limit_with_413(classifier, good_image) -> None:
    big = good_image + b"\0" * 10_000
    with _client(classifier, max_upload_bytes=8_000) as client:
        response = client.post("/v1/predict", files={"file": ("big.png", big, "image/png")})
        assert response.status_code == 413
        _assert_clean_error(response)
        assert "limit" in response.json()["detail"]
        assert client.post("/v1/predict", files={"file": ("ok.png", good_image, "image/png")}).status_code == 200


def test_server_refuses_a_non_image_and_a_non_multipart_body(classifier) -> None:
    with _client(classifier) as client:
        response = client.post("/v1/predict", files={"file": ("notes.txt", b"hello, not an image", "text/plain")})
        assert response.status_code == 415 and "notes.txt" in response.json()["detail"]
        response = client.post("/v1/predict", content=b"{}", headers={"content-type": "application/json"})
        assert response.status_code in (415, 422)
        _assert_clean_error(response)


@pytest.mark.parametrize("filename", ["../../../../tmp/pneumoscan-evil.png", "/etc/passwd", "..\\..\\evil.png",
                                      "C:\\Windows\\win.ini", "a\x00b.png"])
def test_server_never_uses_a_client_file_name_as_a_path(filename: str, classifier, good_image, tmp_path,
                                                        monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    before = set(Path("/tmp").iterdir())
    with _client(classifier) as client:
        ok = client.post("/v1/predict", files={"file": (filename, good_image, "image/png")})
        # The content decides, not the name: /etc/passwd as a name does not make the server read that file.
        garbage = client.post("/v1/predict", files={"file": (filename, b"not an image at all", "image/png")})
    assert ok.status_code == 200, ok.text
    echoed = ok.json()["filename"]
    assert "/" not in echoed and "\\" not in echoed and "\x00" not in echoed
    assert garbage.status_code == 415 and "root:" not in garbage.text
    assert not Path("/tmp/pneumoscan-evil.png").exists()
    assert list(tmp_path.iterdir()) == []
    assert {p for p in Path("/tmp").iterdir() if p.name.endswith((".png", "evil"))} - before == set()


def test_server_bounds_concurrent_inference_and_sheds_load_with_503(classifier, good_image) -> None:
    """With 1 inference thread and a queue of 1, 8 simultaneous requests: never more than one inference at a
    time, the excess gets 503 (not a 500, not an unbounded backlog), and the server still answers after."""
    active, peak, lock = 0, 0, threading.Lock()
    real = classifier.assess

    def slow_predict(images, *args, **kwargs):
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.2)
        try:
            return real(images, *args, **kwargs)
        finally:
            with lock:
                active -= 1

    classifier.assess = slow_predict
    try:
        with _client(classifier, max_concurrency=1, max_queue=1) as client:
            def send(_):
                return client.post("/v1/predict", files={"file": ("x.png", good_image, "image/png")}).status_code

            with ThreadPoolExecutor(8) as pool:
                codes = list(pool.map(send, range(8)))
            after = send(0)
    finally:
        del classifier.assess
    assert peak == 1
    assert set(codes) <= {200, 503} and codes.count(200) >= 1 and codes.count(503) >= 1, codes
    assert after == 200


def test_server_hides_internal_errors_behind_a_generic_message(classifier, good_image) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail /opt/model/weights")

    classifier.assess = broken
    try:
        with _client(classifier) as client:
            response = client.post("/v1/predict", files={"file": ("x.png", good_image, "image/png")})
            health = client.get("/healthz").status_code
    finally:
        del classifier.assess
    assert response.status_code == 500
    _assert_clean_error(response)
    assert "secret" not in response.text and "RuntimeError" not in response.text
    assert health == 200


def test_server_refuses_a_header_only_bomb_with_422(classifier) -> None:
    from helpers.corpus import header_only_png

    with _client(classifier) as client:
        response = client.post("/v1/predict", files={"file": ("bomb.png", header_only_png(60_000, 60_000), "image/png")})
    assert response.status_code == 422 and "decompression bomb" in response.json()["detail"]


def test_odd_good_uploads_decode_like_the_files_on_disk(classifier, corpus_files) -> None:
    """An upload is decoded by the same decoder as a file: same probability for the same bytes."""
    with _client(classifier) as client:
        for case in ODD_GOOD_CASES:
            if not case.scorable_upload:
                continue
            path = corpus_files[case.name]
            response = client.post("/v1/predict", files={"file": (_upload_name(case), path.read_bytes(), "x/y")})
            assert response.status_code == 200, (case.name, response.text)
            expected = classifier.predict([path])[0].probability
            assert abs(response.json()["probability"] - expected) < 1e-5, case.name



def test_a_server_given_a_pickle_payload_stays_up_and_says_why_it_is_not_ready(tmp_path) -> None:
    marker = tmp_path / "payload-ran"
    evil = _malicious_checkpoint(tmp_path / "model.ckpt", marker)
    from pneumoscan.serving.app import create_app

    with fastapi_testclient.TestClient(create_app(evil), raise_server_exceptions=False) as client:
        for _ in range(100):  # the model loads in the background at start-up
            ready = client.get("/readyz")
            if ready.json().get("status") != "loading":
                break
            time.sleep(0.05)
        assert ready.status_code == 503 and "refused" in ready.json()["detail"]
        assert client.get("/healthz").status_code == 200
        response = client.post("/v1/predict", files={"file": ("x.png", b"\x89PNG", "image/png")})
        assert response.status_code == 503 and "Traceback" not in response.text
    assert not marker.exists()


def test_a_pickle_in_place_of_a_runs_onnx_export_is_called_unreadable_and_never_run(tmp_path, caplog) -> None:
    from pneumoscan.serving.app import load_served

    marker = tmp_path / "payload-ran"
    run = tiny_model(tmp_path / "run")
    (run / "export").mkdir()
    (run / "export" / "model.onnx").write_bytes(pickle.dumps(_Payload(marker)))
    with caplog.at_level("WARNING", logger="pneumoscan.serving"):
        served = load_served(run)
    assert served.backend_name == "torch"  # the run's own weights are served instead
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "unreadable" in said and "stale" not in said, said
    assert not marker.exists()
