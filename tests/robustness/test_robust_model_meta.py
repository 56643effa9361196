"""Model files with wrong metadata through every loader: the Python API, each command, and the server.

The weights are good; only the metadata stored beside them is broken (not JSON, not an object, a field
missing, of the wrong type or out of range). Each must be one ``ModelFileError`` naming the file and the
field, before any network is built from the field's values (``image_size`` 60000 once allocated 7 GB).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import pneumoscan
from helpers.corpus import (
    MODEL_META_CASES,
    MODEL_META_CLI_CASES,
    MODEL_META_COMMANDS,
    MODEL_META_SERVER_CASES,
    model_with_meta,
    run_cli,
    tiny_model,
    write_good_images,
)
from pneumoscan.errors import ModelFileError
from pneumoscan.models import load_model, read_meta


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("good-model"))


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory, weights) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad-meta")
    return {name: model_with_meta(root / name, text, weights) for name, (_, text, _) in MODEL_META_CASES.items()}


@pytest.mark.parametrize("case", list(MODEL_META_CASES), ids=str)
def test_every_loader_refuses_wrong_metadata_naming_the_file_and_the_field(case: str, bad_models) -> None:
    path, words = bad_models[case], MODEL_META_CASES[case][2]
    # read_meta reads only the metadata: whether a name is a known network is for whoever builds it.
    loaders = (load_model, pneumoscan.load) if case == "name_unknown" else (read_meta, load_model, pneumoscan.load)
    for loader in loaders:
        with pytest.raises(ModelFileError) as info:
            loader(path)
        message = str(info.value)
        assert str(path) in message and words in message.lower(), message
        assert "\n" not in message


COMMANDS = {  # one for each of MODEL_META_COMMANDS
    "predict": lambda model, image, out: ["predict", str(model), str(image), "--out", str(out / "p.csv")],
    "explain": lambda model, image, out: ["explain", str(model), str(image), "--out", str(out)],
    "evaluate": lambda model, image, out: ["evaluate", str(model), "--data", str(image.parents[1]), "--split",
                                           "all", "--bootstrap", "10", "--out", str(out)],
    "export": lambda model, image, out: ["export", str(model), "--out", str(out / "model.onnx")],
    "serve": lambda model, image, out: ["serve", str(model), "--port", "1"],  # refused before it listens
}


@pytest.mark.parametrize("case", MODEL_META_CLI_CASES)
@pytest.mark.parametrize("command", MODEL_META_COMMANDS)
def test_every_command_refuses_wrong_metadata_in_one_line(command: str, case: str, bad_models, tmp_path,
                                                          capsys) -> None:
    image = write_good_images(tmp_path / "data" / "PNEUMONIA", 1, 2)[0]
    write_good_images(tmp_path / "data" / "NORMAL", 0, 2)
    code, text = run_cli(COMMANDS[command](bad_models[case], image, tmp_path / "out"), capsys)
    assert code == 2, text[-2000:]
    errors = [line for line in text.splitlines() if line.startswith("pneumoscan: error:")]
    assert len(errors) == 1 and "Traceback" not in text, text[-2000:]
    assert str(bad_models[case]) in errors[0] and MODEL_META_CASES[case][2] in errors[0].lower(), errors[0]


@pytest.mark.parametrize("case", MODEL_META_SERVER_CASES)
def test_a_server_given_wrong_metadata_stays_up_and_says_why_it_is_not_ready(case: str, bad_models) -> None:
    testclient = pytest.importorskip("fastapi.testclient")
    from pneumoscan.serving.app import create_app

    with testclient.TestClient(create_app(bad_models[case]), raise_server_exceptions=False) as client:
        deadline = time.monotonic() + 10
        while (ready := client.get("/readyz")).json().get("status") == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.status_code == 503, ready.text
        assert MODEL_META_CASES[case][2] in ready.json()["detail"].lower()
        assert client.get("/healthz").status_code == 200
