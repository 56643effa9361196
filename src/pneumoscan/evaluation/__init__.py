"""Honest evaluation: screening metrics with patient-bootstrap intervals, operating points chosen on
validation, calibration, plots, and a self-contained HTML / JSON / Markdown report.

>>> from pneumoscan.evaluation import EvaluateConfig, evaluate
>>> result = evaluate(EvaluateConfig(models=["runs/latest"], data="data/chest_xray", split="test"))
>>> print(result.report.at("stored", "sensitivity"))   # 0.912 [0.887, 0.934]
"""

from pneumoscan.evaluation.compare import Comparison, compare
from pneumoscan.evaluation.evaluate import EvaluateConfig, EvaluationResult, evaluate

__all__ = ["Comparison", "EvaluateConfig", "EvaluationResult", "compare", "evaluate"]
