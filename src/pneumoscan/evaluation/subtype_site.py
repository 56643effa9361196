"""The subtype head in a site calibration: its temperature re-fitted on the site's sample where the sample
says which pneumonia is bacterial and which viral for enough patients, else kept, with the reason.

Only the temperature is fitted, as for the pneumonia probability (:func:`~pneumoscan.evaluation.site_fit.
fit_site_temperature`: patients weigh the same, the model's own temperature is the prior's centre, bounded,
a perfectly separated sample keeps it). The answers do not move: the stored threshold and uncertain band
are converted to the new probability scale (a temperature is monotone), since they were chosen on
validation patients and a site sample of this size cannot place a band.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pneumoscan.evaluation.operating import apply_temperature, logit
from pneumoscan.evaluation.site_fit import MIN_PER_CLASS, fit_site_temperature, patient_weights


def site_subtype(meta: Any, classifier: Any, samples: list) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(the calibrated version's ``ModelMeta.subtype``, what was done for ``calibration.json``; None for a
    model without a subtype head). ``samples``: the calibration sample as fitted; ``classifier``: the model."""
    rule = dict(meta.subtype or {})
    if not rule:
        return rule, None
    own = float(rule["temperature"])
    known = [s for s in samples if s.label == 1 and s.subtype]
    counts = {kind: len({s.patient_id for s in known if s.subtype == kind}) for kind in ("bacterial", "viral")}
    if min(counts.values()) < MIN_PER_CLASS:
        return rule, {"temperature": own, "refitted": False, "patients": counts,
                      "note": f"the model's own ({own:.3f}): the sample names the subtype of {counts['bacterial']} "
                              f"bacterial and {counts['viral']} viral PNEUMONIA patients, and a fit needs at least "
                              f"{MIN_PER_CLASS} of each"}
    from pneumoscan.evaluation.subtype import viral_probabilities

    images = np.stack([classifier.preprocess(s.path) for s in known])
    viral = viral_probabilities(classifier, images)
    if viral is None:
        return rule, {"temperature": own, "refitted": False, "patients": counts,
                      "note": f"the model's own ({own:.3f}): its backend does not compute the subtype head"}
    labels = np.array([s.subtype == "viral" for s in known], dtype=np.int64)
    raw = logit(viral) * own  # the head's logit, before its temperature
    separable = bool(raw[labels == 1].min() > raw[labels == 0].max())
    patients = np.array([s.patient_id for s in known], dtype=str)
    temperature, note = fit_site_temperature(labels, raw, own, separable, patient_weights(labels, patients))
    low, threshold, high = apply_temperature(np.array([*rule["uncertain"][:1], rule["threshold"],
                                                       *rule["uncertain"][1:]]), temperature / own)
    new = {**rule, "temperature": temperature, "threshold": float(threshold),
           "uncertain": [float(low), float(high)],
           "rule": f"{rule.get('rule') or 'as stored'}; temperature re-fitted on a site sample, threshold and band "
                   "converted to its scale (the same answers)"}
    return new, {"temperature": temperature, "original_temperature": own, "refitted": True, "patients": counts,
                 "note": note}


def subtype_line(record: dict[str, Any] | None) -> list[str]:
    """The calibration summary's line on the subtype head (none for a model without one)."""
    if not record:
        return []
    return [f"subtype temperature {record['temperature']:.3f}: {record['note']}"]
