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
