"""The evaluation report as a typed object: what ``evaluate`` builds and every renderer reads.

:class:`Report` has one field per top-level key of ``report.json``; :meth:`Report.to_dict` is that
JSON and :meth:`Report.from_dict` reads it back (``compare``, the model card). Renderers use the
accessors (``report.at("stored", "sensitivity")``), so the JSON layout is decided here alone. Fields
can also be read as ``report["data"]``, the way the JSON reads, for scripts written against it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pneumoscan.evaluation.intervals import Estimate

TITLE = "pneumoscan evaluation report"


class _ReadsLikeJson:
    """``obj["name"]`` and ``obj.get("name")`` read the field of that name, as in ``report.json``."""

    def __getitem__(self, key: str) -> Any:
        if key not in self._names():
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in self._names() else default

    def __contains__(self, key: object) -> bool:
        return key in self._names()

    def _names(self) -> set[str]:
        return {f.name for f in fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True)
class Figure(_ReadsLikeJson):
    """A metric with its confidence interval; None where undefined (one class only, a degenerate resample).

    ``method`` says how the interval was made; ``plug_in`` is the uncorrected estimate where ``value`` is
    bias-corrected (the ECE); see :mod:`~pneumoscan.evaluation.intervals`.
    """

    value: float | None
    low: float | None = None
    high: float | None = None
    method: str | None = None
    plug_in: float | None = None

    @classmethod
    def of(cls, estimate: Estimate) -> Figure:
        """The report's form of an :class:`~pneumoscan.evaluation.intervals.Estimate` (already checked to hold
        its value), JSON-safe."""
        return cls(finite(estimate.value), finite(estimate.low), finite(estimate.high), estimate.method,
                   finite(estimate.plug_in))

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Figure:
        data = data or {}
        return cls(data.get("value"), data.get("low"), data.get("high"), data.get("method"), data.get("plug_in"))

    def __str__(self) -> str:
        """``0.912 [0.887, 0.934]``, or ``n/a`` when undefined."""
        if self.value is None:
            return "n/a"
        text = f"{self.value:.3f}"
        if self.low is not None and self.high is not None:
            text += f" [{self.low:.3f}, {self.high:.3f}]"
        return text


@dataclass
class Metrics(_ReadsLikeJson):
    threshold_free: dict[str, Figure]  # ROC-AUC, PR-AUC, Brier, log loss, ECE
    at: dict[str, dict[str, Figure]]  # operating point -> sensitivity, specificity, ...


@dataclass
class Report(_ReadsLikeJson):
    """Everything one evaluation found; one field per top-level key of ``report.json``."""

    disclaimer: str
    created: str
    metrics: Metrics
    confusion_matrix: dict[str, dict[str, int]]
    operating_points: dict[str, dict[str, Any]]  # name -> threshold, source, rule
    bootstrap: dict[str, Any]
    data: dict[str, Any]  # root, split, images, patients, classes, fingerprint, unreadable, notes
    models: list[dict[str, Any]]
    calibration: dict[str, Any] | None = None  # temperature scaling fitted on validation
    site_calibration: dict[str, Any] | None = None  # a model version from `pneumoscan calibrate`
    reliability: dict[str, list[float]] = field(default_factory=dict)  # per bin: edges, count, rates (ECE)
    scope: dict[str, Any] | None = None  # images refused as out of scope: counted, named, not in the metrics
    subtype: dict[str, Any] | None = None  # bacterial or viral (evaluation.subtype); available False: why not
    ensemble: bool = False
    tta: str | None = None
    validation: dict[str, Any] | None = None
    context: dict[str, Any] = field(default_factory=dict)  # in-distribution and published figures (context.py)
    leakage: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    git_commit: str | None = None
    plots: dict[str, str] = field(default_factory=dict)  # name -> file, relative to the report folder
    gallery: list[dict[str, Any]] | None = None
    warnings: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    title: str = TITLE

    def at(self, point: str, metric: str) -> Figure:
        """A threshold metric at an operating point (``stored``, ``youden``, ...)."""
        return self.metrics.at.get(point, {}).get(metric) or Figure(None)

    def free(self, metric: str) -> Figure:
        """A threshold-free metric (``roc_auc``, ``ece``, ...)."""
        return self.metrics.threshold_free.get(metric) or Figure(None)

    @property
    def points(self) -> list[str]:
        """The operating points reported, stored threshold first."""
        return list(self.metrics.at)

    def threshold(self, point: str = "stored") -> float:
        return float(self.operating_points[point]["threshold"])

    def to_dict(self) -> dict[str, Any]:
        """The content of ``report.json``: plain JSON types, non-finite numbers as null."""
        content = asdict(self)
        return json_safe({"title": content.pop("title"), **content})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        """Read ``report.json`` back; unknown keys are ignored, missing optional ones take their default."""
        metrics = data.get("metrics") or {}
        known = {f.name for f in fields(cls)} - {"metrics"}
        return cls(
            metrics=Metrics(
                threshold_free={k: Figure.from_dict(v) for k, v in (metrics.get("threshold_free") or {}).items()},
                at={p: {k: Figure.from_dict(v) for k, v in row.items()} for p, row in (metrics.get("at") or {}).items()},
            ),
            **{k: v for k, v in data.items() if k in known},
        )


def finite(value: Any) -> float | None:
    """A float, or None for None, NaN and infinities (JSON has no NaN)."""
    return None if value is None or not math.isfinite(float(value)) else float(value)


def json_safe(obj: Any) -> Any:
    """``obj`` with numpy scalars made plain and non-finite floats made None."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return finite(float(obj))
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
