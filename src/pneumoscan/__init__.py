"""pneumoscan: pneumonia detection on chest X-rays. NOT a medical device; not for diagnosis.

>>> import pneumoscan
>>> model = pneumoscan.load()                        # the bundled default model, also load("default")
>>> model = pneumoscan.load("fast")                  # the bundled fast model (a distilled small student)
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


def load(path=None, device: str | None = None, *, scope_check: bool = True, backend: str = "auto") -> Classifier:
    """Load a trained model for prediction; with no ``path`` (or ``"default"``), the bundled default model;
    ``"fast"``: the bundled fast model, its distilled small student (see :func:`pneumoscan.inference.load`,
    which decides which files make the model; ``backend="torch"`` scores with PyTorch even where an ONNX model would be used). The
    :class:`~pneumoscan.inference.Classifier` it returns keeps them (``files``, ``weights``, ``card``) and
    gives its network as a ``torch.nn.Module`` (``torch_module()``). ``scope_check=False`` scores images that are not frontal
    chest radiographs too (marked ``scope check off``); by default they get ``out of scope: <reason>``."""
    from pneumoscan.inference import load as _load

    return _load(path, device=device, scope_check=scope_check, backend=backend)


__all__ = ["DISCLAIMER", "__version__", "load"]
