"""Fuzzing, bounded in time: the decoder and the upload endpoint on arbitrary and mutated bytes.

Only ImageReadError may escape the decoder; the server never answers 500. Each property runs a fixed
number of examples (a few seconds each; a quarter of them in the inner loop, as every property does);
`bench/bench_fuzz.py` runs the same properties for longer.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.corpus import fuzz_seeds
from helpers.properties import examples
from pneumoscan.data import probe_image, read_image
from pneumoscan.errors import ImageReadError

# PNEUMOSCAN_FUZZ_SCALE multiplies every property, for a longer run under pytest (bench/bench_fuzz.py fuzzes
# for a set time instead).
SCALE = float(os.environ.get("PNEUMOSCAN_FUZZ_SCALE", "1"))


SEEDS: dict[str, bytes] = fuzz_seeds()


@st.composite
def mutated(draw) -> bytes:
    """A real encoded image with some bytes changed, a slice cut out or appended garbage, or truncated."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(0, 8))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "truncate"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, draw(st.integers(0, 255))]))
        elif op == "cut":
            del data[i : i + draw(st.integers(1, 64))]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=32))
        else:
            del data[i:]
    return bytes(data)


_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]


def fuzz(full: int) -> settings:
    """Bounded: a fixed number of examples, no per-example deadline (a slow CI machine is not a bug)."""
    return settings(max_examples=max(1, int(examples(full) * SCALE)), deadline=None, suppress_health_check=_HEALTH)


def _decode_or_refuse(data: bytes, size: int | None) -> None:
    try:
        pixels = read_image(data, size, name="fuzz.bin")
    except ImageReadError as exc:
        message = str(exc)
        assert message.startswith("fuzz.bin: ") and "\n" not in message
        return
    assert pixels.dtype == np.uint8 and pixels.ndim == 2
    if size is not None:
        assert pixels.shape == (size, size)


@fuzz(200)
@given(st.binary(max_size=2048))
def test_read_image_on_arbitrary_bytes_raises_only_image_read_error(data: bytes) -> None:
    _decode_or_refuse(data, 32)


@fuzz(400)
@given(mutated(), st.sampled_from([None, 32]))
def test_read_image_on_mutated_real_images_raises_only_image_read_error(data: bytes, size: int | None) -> None:
    _decode_or_refuse(data, size)


@fuzz(200)
@given(mutated())
def test_probe_image_on_mutated_real_images_raises_only_image_read_error(data: bytes) -> None:
    try:
        info = probe_image(data, name="fuzz.bin")
    except ImageReadError:
        return
    assert info.width >= 0 and info.height >= 0


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    pytest.importorskip("fastapi.testclient")
    from fastapi.testclient import TestClient

    import pneumoscan
    from helpers.corpus import tiny_model
    from pneumoscan.serving.app import create_app

    model = tiny_model(tmp_path_factory.mktemp("fuzz-model"))
    with TestClient(create_app(pneumoscan.load(model)), raise_server_exceptions=False) as test_client:
        yield test_client


@fuzz(150)
@given(st.one_of(mutated(), st.binary(max_size=1024)),
       st.text(min_size=0, max_size=40),
       st.sampled_from(["image/png", "image/jpeg", "application/dicom", "application/octet-stream", "text/plain", ""]))
def test_upload_endpoint_never_answers_500(client, data: bytes, filename: str, content_type: str) -> None:
    response = client.post("/v1/predict", files={"file": (filename, data, content_type)})
    assert response.status_code in (200, 413, 415, 422), (response.status_code, response.text[:300])
    body = response.json()
    if response.status_code == 200:
        assert 0.0 <= body["probability"] <= 1.0
    else:
        assert set(body) == {"detail"} and "Traceback" not in body["detail"]
