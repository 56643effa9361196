"""Score images with a trained model: ``pneumoscan.load(path).predict(files)``.

Lightweight on purpose: the ONNX path imports neither Lightning nor MONAI.
"""

from pneumoscan.inference.classifier import Classifier, Prediction, load

__all__ = ["Classifier", "Prediction", "load"]
