import pytest
import torch

from pneumoscan.errors import ConfigError
from pneumoscan.models import available_models, build_model


@pytest.mark.parametrize("name", sorted(available_models()))
def test_every_registered_model_maps_one_channel_images_to_one_logit(name):
    torch.manual_seed(0)
    model = build_model(name, image_size=64).eval()
    with torch.no_grad():
        logits = model(torch.rand(3, 1, 64, 64))
    assert logits.shape == (3, 1)
    assert torch.isfinite(logits).all()


def test_models_are_invariant_to_exposure_because_each_image_is_standardised():
    torch.manual_seed(0)
    model = build_model("seed-cnn", image_size=48).eval()
    images = torch.rand(4, 1, 48, 48) * 0.5
    with torch.no_grad():
        plain = model(images)
        brighter = model(images * 1.6 + 0.2)
    torch.testing.assert_close(plain, brighter, rtol=1e-3, atol=1e-3)


def test_unknown_model_name_is_a_clear_error_listing_the_choices():
    with pytest.raises(ConfigError, match="unknown model 'vgg16'.*seed-cnn"):
        build_model("vgg16")


def test_an_ensemble_is_one_model_whose_logit_is_the_mean_of_different_members(tmp_path):
    import numpy as np
    import onnxruntime as ort

    from pneumoscan.models import ModelMeta, load_model, save_model
    from pneumoscan.models.registry import member_logits
    from pneumoscan.serving.export import export_onnx

    torch.manual_seed(0)
    model = build_model("seed-cnn", image_size=32, members=3).eval()
    images = torch.rand(5, 1, 32, 32)
    with torch.no_grad():
        per_member = member_logits(model, images)
        logits = model(images)
    assert per_member.shape == (5, 3)
    assert not torch.allclose(per_member[:, 0], per_member[:, 1])  # independently initialised
    assert torch.allclose(logits, per_member.mean(dim=1, keepdim=True), atol=1e-6)
    # One model file and one ONNX graph, with a dynamic batch.
    save_model(tmp_path, model, ModelMeta(name="seed-cnn", image_size=32, members=3))
    loaded, meta = load_model(tmp_path)
    assert meta.members == 3
    with torch.no_grad():
        assert torch.allclose(loaded(images), logits, atol=1e-6)
    onnx_file = export_onnx(tmp_path)
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        out = session.run(["logit"], {"image": images[:batch].numpy()})[0]
        assert np.allclose(out, logits[:batch].numpy(), atol=1e-4)


def test_an_ensemble_needs_at_least_one_member():
    with pytest.raises(ConfigError, match="--members"):
        build_model("seed-cnn", 48, members=0)
