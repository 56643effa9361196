"""The learned scope gate's contract: a model file's gate is checked before use (hostile metadata, a gate
claimed but absent), gates fitted before the kind probe still work, each refusal gives a reason and advice
that fit what was sent, and the bundled model refuses what users send by mistake made of real test
radiographs while scoring upright ones."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pneumoscan
from helpers.gated import pictures as make_pictures
from pneumoscan.errors import ModelFileError
from pneumoscan.inference import load
from pneumoscan.inference import scope as gate_rules
from pneumoscan.models import scope_kinds
from pneumoscan.models.scope_meta import KINDS, ORIENTATIONS


def rewrite(source: Path, target: Path, meta_change=None, tensors_change=None) -> Path:
    """``source``'s model.safetensors copied to ``target`` with its metadata and tensors changed."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source / "model.safetensors"), framework="pt") as fh:
        header = fh.metadata()
        tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 (safe_open is not a dict)
    meta = json.loads(header["pneumoscan"])
    if meta_change:
        meta_change(meta)
    if tensors_change:
        tensors_change(tensors)
    target.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(target / "model.safetensors"), metadata={"pneumoscan": json.dumps(meta)})
    return target / "model.safetensors"


def scope_of(meta: dict) -> dict:
    return meta["scope"]


# -- the model file's gate is checked before it is used ------------------------------------------------------
@pytest.mark.parametrize(("change", "words"), [
    ({"distance_threshold": 0}, "distance_threshold must be a number above 0"),
    ({"distance_threshold": -3.0}, "distance_threshold must be a number above 0"),
    ({"orientation_threshold": 2.0}, "orientation_threshold must be a log-probability"),
    ({"orientation_margin": -1.0}, "orientation_margin must be a number of 0 or more"),
    ({"kind_threshold": 0.5}, "kind_threshold must be a log-probability"),
    ({"kinds": ["one"]}, "kinds must be a list of 2 to 16 names"),
    ({"orientations": ["upright"]}, "orientations must be"),
])
def test_hostile_scope_thresholds_are_refused_when_the_model_loads(gated_run, tmp_path, change, words):
    file = rewrite(gated_run, tmp_path / "m", meta_change=lambda m: scope_of(m).update(change))
    with pytest.raises(ModelFileError, match=words) as caught:
        load(file)
    assert str(file) in str(caught.value)


def test_scope_tensors_wider_than_the_network_are_refused_when_the_model_loads(gated_run, tmp_path):
    import torch

    def widen(tensors):
        features = 4096
        for key in [k for k in tensors if k.startswith("scope.")]:
            shape = list(tensors[key].shape)
            if shape and key != "scope.scale" and key != "scope.kind_bias" and key != "scope.orientation_bias":
                shape[0] = features
            tensors[key] = torch.zeros(shape)

    file = rewrite(gated_run, tmp_path / "m", tensors_change=widen)
    with pytest.raises(ModelFileError, match="scope gate reads 4096 features but the network has") as caught:
        load(file)
    assert str(file) in str(caught.value)


def test_a_model_whose_metadata_claims_a_gate_it_does_not_hold_is_refused(gated_run, tmp_path):
    def drop(tensors):
        for key in [k for k in tensors if k.startswith("scope.")]:
            del tensors[key]

    file = rewrite(gated_run, tmp_path / "none", tensors_change=drop)
    with pytest.raises(ModelFileError, match="describes a scope gate but it holds no scope.. tensors"):
        load(file)

    def drop_kinds(tensors):
        del tensors["scope.kind_weight"], tensors["scope.kind_bias"]

    file = rewrite(gated_run, tmp_path / "no-kinds", tensors_change=drop_kinds)
    with pytest.raises(ModelFileError, match="names 6 scope kinds but its scope.kind_weight has 0"):
        load(file)


def test_an_onnx_model_whose_metadata_claims_a_gate_its_graph_lacks_is_refused(gated_run, exported_run, tmp_path):
    import onnx

    graph = onnx.load(str(exported_run / "export" / "model.onnx"))
    gated = json.loads((gated_run / "model.json").read_text())
    for prop in graph.metadata_props:
        if prop.key == "pneumoscan":
            meta = json.loads(prop.value)
            meta["scope"] = gated["scope"]
            prop.value = json.dumps(meta)
    onnx.save(graph, str(tmp_path / "model.onnx"))
    with pytest.raises(ModelFileError, match="describes a scope gate but the graph has no 'scope' output"):
        load(tmp_path / "model.onnx")


def test_a_gate_fitted_before_the_kind_probe_still_runs_with_its_old_rule(gated_run, tmp_path):
    def old_meta(meta):
        for key in ("kind_threshold", "kinds", "orientation_margin"):
            scope_of(meta).pop(key)
        scope_of(meta)["orientation_threshold"] = float(np.log(0.1))

    def old_tensors(tensors):
        del tensors["scope.kind_weight"], tensors["scope.kind_bias"]

    shutil.copytree(gated_run, tmp_path / "old", ignore=shutil.ignore_patterns("export", "model.safetensors"))
    rewrite(gated_run, tmp_path / "old", meta_change=old_meta, tensors_change=old_tensors)
    classifier = load(tmp_path / "old")
    pictures = make_pictures(tmp_path / "in")
    batch = np.stack([classifier.preprocess(str(pictures[n])) for n in ("chest0", "page")])
    assert classifier.backend.scores(batch)[1].shape == (2, 7)
    chest, page = classifier.assess(batch, ["chest0", "page"])
    assert chest.probability is not None and page.probability is None and "unlike the training" in page.error
    old = classifier.meta
    turned = np.r_[old.scope["distance_threshold"] / 2, np.log([0.01, 0.9, 0.03, 0.02, 0.02, 0.02])]
    assert gate_rules.gate_reason(old, turned).startswith("looks rotated 90 degrees (p(upright) 0.010")


# -- the reason fits what was sent ---------------------------------------------------------------------------
def output(meta, distance: float, orientation: list[float], kind: list[float]) -> np.ndarray:
    return np.r_[distance * meta.scope["distance_threshold"], np.log(orientation), np.log(kind)]


def test_each_refusal_gives_one_reason_and_advice_that_fits_what_was_sent(gated_run):
    meta = load(gated_run).meta
    meta = replace(meta, scope={**meta.scope, "kind_threshold": float(np.log(0.5)), "orientation_margin": 1.5})
    upright, radiograph = [0.9] + [0.02] * 5, [0.9] + [0.02] * 5
    screenshot = [0.01, 0.95, 0.01, 0.01, 0.01, 0.01]
    assert gate_rules.gate_reason(meta, output(meta, 0.5, upright, radiograph)) is None
    far = gate_rules.gate_reason(meta, output(meta, 3, [0.01] * 5 + [0.95], [0.05] * 5 + [0.75]))
    assert far.startswith("unlike the training radiographs") and "looks like a page of text" in far
    assert "upright" not in far and "inverted" not in far  # a text page is no radiograph to turn
    assert far.endswith(gate_rules.SEND_RADIOGRAPH)
    # The orientation probe refuses too, less surely than the kind probe: the kind names it.
    kind = gate_rules.gate_reason(meta, output(meta, 0.5, [0.1, 0.8, 0.04, 0.02, 0.02, 0.02], screenshot))
    assert kind.startswith("looks like a screenshot of a viewer, not one frontal chest radiograph filling the image")
    assert "upright" not in kind and kind.endswith(gate_rules.SEND_WHOLE)
    turned = gate_rules.gate_reason(meta, output(meta, 0.5, [0.05, 0.01, 0.9, 0.02, 0.01, 0.01], radiograph))
    assert turned.startswith("looks rotated 180 degrees (p(upright) 0.050") and turned.endswith(gate_rules.SEND_UPRIGHT)
    # Unsure is not refused: rotated 180 degrees only 3 times likelier than upright, under e^1.5.
    assert gate_rules.gate_reason(meta, output(meta, 0.5, [0.2, 0.05, 0.6, 0.05, 0.05, 0.05], radiograph)) is None
    with pytest.raises(ValueError, match="gave 7 values per image, its metadata describes 13"):
        gate_rules.gate_reason(meta, output(meta, 0.5, upright, [])[:7])


def test_the_kinds_made_for_the_probe_are_what_their_names_say():
    rng = np.random.default_rng(0)
    tile = np.tile(np.linspace(0, 255, 100, dtype=np.uint8), (120, 1))
    assert scope_kinds.grid([tile] * 4, 2, 2, rng).shape[1] >= 2 * 120
    assert scope_kinds.one_lung([tile], rng).shape[1] <= 45  # under a half: a tight framing is not one lung
    framed = scope_kinds.tight(tile, rng)
    assert framed.shape == tile.shape and 0.55 * 255 <= np.ptp(framed) <= 0.95 * 255  # 60-95 % kept, scaled back
    small = scope_kinds.small_on_canvas([tile], rng)
    assert small.size >= 120 * 100 / 0.4**2 * 0.5
    pixels, kinds = scope_kinds.synthesise(np.stack([tile[:100]] * 3), 2, 64, "pad")
    assert pixels.shape == (2 * len(scope_kinds.MADE), 64, 64) and sorted(set(kinds)) == list(range(1, len(KINDS)))
    assert len(ORIENTATIONS) == 6


# -- the bundled model on real radiographs -------------------------------------------------------------------
MISTAKES = scope_kinds.MISTAKES


def test_the_bundled_model_refuses_what_users_send_by_mistake_made_of_real_test_radiographs(shared_data, tmp_path):
    test = sorted((shared_data / "chest_xray" / "test").rglob("*.jpeg"))
    tiles = [np.asarray(Image.open(p).convert("L")) for p in test[::40][:9]]
    rng = np.random.default_rng(11)
    for name, make in MISTAKES.items():
        for i in range(2):
            Image.fromarray(make(tiles[i:] + tiles[:i], rng)).save(tmp_path / f"{name}_{i}.png")
    rows = {Path(r.source).stem: r for r in pneumoscan.load().predict(str(tmp_path))}
    assert len(rows) == 2 * len(MISTAKES)
    for name, row in rows.items():
        assert row.probability is None and row.label is None, (name, row.error)
        assert "upright" not in row.error, (name, row.error)  # none of them is a radiograph to turn


def test_the_bundled_model_scores_upright_radiographs_small_and_full_size(shared_data):
    # The gate fitted before the orientation margin refused these two upright radiographs as mirrored
    # top-bottom and rotated 180 degrees; a few other originals beside them.
    upright = [shared_data / "chest_xray" / "test" / "NORMAL" / "NORMAL2-IM-0041-0001.jpeg",
               shared_data / "chest_xray_originals" / "PNEUMONIA" / "person516_bacteria_2191.jpeg",
               *sorted((shared_data / "chest_xray_originals").rglob("*.jpeg"))[:2]]
    rows = pneumoscan.load().predict([str(p) for p in upright])
    assert [r.error for r in rows] == [None] * len(upright)
