"""pneumoscan: pneumonia detection on chest X-rays. NOT a medical device; not for diagnosis.

>>> import pneumoscan
>>> model = pneumoscan.load()                        # the bundled default model (see its model card)
>>> model = pneumoscan.load("runs/latest")          # a run folder, .safetensors, .ckpt or .onnx
>>> model.predict(["chest.jpeg"])[0].probability
>>> net = model.torch_module()                      # torch.nn.Module: (N, 1, H, W) in [0, 1] -> logit / temperature
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pneumoscan.provenance import DISCLAIMER

__version__ = "0.1.0"

if TYPE_CHECKING:
    from pneumoscan.inference import Classifier


def load(path=None, device: str | None = None, *, scope_check: bool = True) -> Classifier:
    """Load a trained model for prediction; with no ``path``, the bundled default model
    (see :func:`pneumoscan.inference.load`, which decides which files make the model). The
    :class:`~pneumoscan.inference.Classifier` it returns keeps them (``files``, ``weights``, ``card``) and
    gives its network as a ``torch.nn.Module`` (``torch_module()``). ``scope_check=False`` scores images that are not frontal
    chest radiographs too (marked ``scope check off``); by default they get ``out of scope: <reason>``."""
    from pneumoscan.inference import load as _load

    return _load(path, device=device, scope_check=scope_check)


__all__ = ["DISCLAIMER", "__version__", "load"]
