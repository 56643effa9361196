"""Score images with a trained model: ``pneumoscan.load(path).predict(files)``.

Lightweight on purpose: the ONNX path imports neither Lightning nor MONAI.
"""

from pneumoscan.inference.classifier import Classifier, Prediction
from pneumoscan.inference.model_files import ModelFiles, load, resolve_model

__all__ = ["Classifier", "ModelFiles", "Prediction", "load", "resolve_model"]
