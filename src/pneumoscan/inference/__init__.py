"""Score images with a trained model: ``pneumoscan.load(path).predict(files)``.

Lightweight on purpose: the ONNX path imports neither Lightning nor MONAI.
"""

from pneumoscan.inference.classifier import Classifier, Prediction
from pneumoscan.inference.loading import load

__all__ = ["Classifier", "Prediction", "load"]
