"""The pneumonia subtype answer (bacterial or viral) in an evaluation: the report's ``subtype`` section.

Two questions, kept apart:

- **How well does the head tell viral from bacterial?** On every scored image that is truly PNEUMONIA with
  a known subtype (:attr:`Sample.subtype <pneumoscan.data.records.Sample.subtype>`), *whatever the binary
  answer*: the result rows carry the viral probability only for PNEUMONIA answers, so the evaluation takes
  it for every image from the same network pass as the pneumonia probability
  (``predict_proba(..., subtype=True)``), and a pneumonia the binary model
  missed still counts here. ROC-AUC (viral positive), and at the stored subtype threshold sensitivity (viral
  called viral), specificity (bacterial called bacterial) and accuracy, with the report's patient-bootstrap
  intervals (:func:`pneumoscan.evaluation.intervals.estimates`, the same resamples' method as every figure).
- **What does a user get?** The 3-class confusion matrix: truth NORMAL / bacterial / viral (and PNEUMONIA
  with an unknown subtype, where there are such images) against the model's final answer NORMAL / bacterial /
  viral / uncertain / refused (out of scope), on every decoded image; and the share of PNEUMONIA answers
  that say ``uncertain`` (the band between the stored ``uncertain`` bounds), with its exact interval.

The section is absent, with one line saying why, for an ensemble, a model without a subtype head, or data
that give no scored PNEUMONIA image a known subtype.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pneumoscan.evaluation import intervals as I
from pneumoscan.evaluation import metrics as M
from pneumoscan.evaluation.results import Figure

FIGURES = ("roc_auc", "sensitivity", "specificity", "accuracy")
FIGURE_LABELS = {"roc_auc": "ROC-AUC (viral vs bacterial)", "sensitivity": "Sensitivity (viral called viral)",
                 "specificity": "Specificity (bacterial called bacterial)", "accuracy": "Accuracy"}
TRUTH = ("NORMAL", "bacterial", "viral", "PNEUMONIA, subtype unknown")
ANSWERS = ("NORMAL", "bacterial", "viral", "uncertain", "refused")
PUBLISHED = {"source": "Kermany et al. 2018 (Cell), Inception v3, bacterial vs viral",
             "accuracy": 0.907, "sensitivity": 0.886, "specificity": 0.909, "roc_auc": 0.940}
PUBLISHED_NOTE = ("The published figures are on the pneumonia images of the whole official Kermany test split, "
                  "from a network trained for bacterial vs viral alone, with no refusals and no patient intervals: "
                  "a different protocol, context rather than a like-for-like comparison.")
HEAD_SET = ("every scored image that is truly PNEUMONIA with a known subtype, whatever the binary answer "
            "(a pneumonia the model called NORMAL counts too)")
UNCERTAIN_METHOD = "Clopper-Pearson (images)"
NOT_A_DIAGNOSIS = ("The subtype is an image pattern learnt from one centre's clinical labels, not a "
                   "microbiological diagnosis.")


def absent(reason: str) -> dict[str, Any]:
    """The section of a report without subtype figures, and why."""
    return {"available": False, "reason": reason}


def viral_probabilities(classifier: Any, images: np.ndarray, batch_size: int = 64, tta: bool = False
                        ) -> np.ndarray | None:
    """The subtype head's calibrated probability of viral for every image of ``images`` (the model's input),
    whatever the binary answer; None when the model computes none.

    The rows carry it for PNEUMONIA answers only; ``predict_proba(..., subtype=True)`` gives it for every
    image, from the same backend pass and calibration. With ``tta``, the mean with the flipped image, as for
    the pneumonia probability.
    """
    if not classifier.meta.subtype:
        return None
    passes = [images, np.ascontiguousarray(images[..., ::-1])] if tta else [images]
    return np.mean([classifier.predict_proba(batch, batch_size, subtype=True)[:, 1] for batch in passes],
                   axis=0).astype(np.float64)


def subtype_section(members: list, viral: np.ndarray | None, samples: list, refused: dict[int, str],
                    probs: np.ndarray, threshold: float, config: Any) -> dict[str, Any]:
    """The report's ``subtype`` section for the decoded ``samples`` (``viral``: the head's probability of every
    one, from the pass that gave ``probs``, or None; ``probs``: their pneumonia probabilities in the report's
    scale; ``threshold``: the stored one in that scale; ``refused``: index -> reason of those out of scope), or
    :func:`absent` with the reason."""
    if len(members) != 1:
        return absent("an ensemble: its members' subtype heads are not combined; evaluate one model for them")
    classifier = members[0].classifier
    if not classifier.meta.subtype:
        return absent("the model has no subtype head: its metadata holds no subtype rule")
    scored = [i for i in range(len(samples)) if i not in refused]
    if not any(samples[i].label == 1 and samples[i].subtype for i in scored):
        return absent("the data give no scored PNEUMONIA image a subtype (Kermany file names personN_bacteria_M / "
                      "personN_virus_M, or a manifest's subtype column)")
    if viral is None:
        return absent("the model's metadata describes a subtype head that its backend does not compute")
    return subtype_record(classifier.meta, samples, refused, probs, threshold, viral, config)


def subtype_record(meta: Any, samples: list, refused: dict[int, str], probs: np.ndarray, threshold: float,
                   viral: np.ndarray, config: Any) -> dict[str, Any]:
    """The section from the numbers: ``viral`` holds the head's probability of every decoded image (any value
    for the refused ones)."""
    rule = meta.subtype
    answers = [_answer(meta, i in refused, float(probs[i]), float(viral[i]), threshold) for i in range(len(samples))]
    truths = [_truth(s) for s in samples]
    known = [i for i, s in enumerate(samples) if i not in refused and s.label == 1 and s.subtype]
    y = np.array([samples[i].subtype == "viral" for i in known], dtype=np.int64)
    p = viral[known]
    patients = np.array([samples[i].patient_id for i in known], dtype=str)
    weights = M.patient_bootstrap_weights(patients, config.bootstrap, config.seed)
    found = I.estimates(y, p, {"stored": float(rule["threshold"])}, weights, config.level, config.bins)
    figures = {"roc_auc": Figure.of(found["threshold_free"]["roc_auc"]),
               **{m: Figure.of(found["at"]["stored"][m]) for m in FIGURES[1:]}}
    pneumonia_answers = sum(a not in ("NORMAL", "refused") for a in answers)
    uncertain = answers.count("uncertain")
    low, high = I.clopper_pearson(uncertain, pneumonia_answers, config.level)
    share = uncertain / pneumonia_answers if pneumonia_answers else float("nan")
    rows = [t for t in TRUTH if t != TRUTH[-1] or t in truths]
    return {
        "available": True,
        "threshold": float(rule["threshold"]), "uncertain_band": [float(x) for x in rule["uncertain"]],
        "rule": rule.get("rule", ""), "figures_on": HEAD_SET,
        "images": len(known), "patients": len(set(patients.tolist())),
        "bacterial": int((y == 0).sum()), "viral": int((y == 1).sum()),
        "figures": figures,
        "undefined_resamples": {m: found["undefined"].get(m, 0) for m in FIGURES},
        "uncertain_share": Figure.of(I.Estimate(*I.checked("uncertain share", share, low, high), UNCERTAIN_METHOD)),
        "pneumonia_answers": pneumonia_answers,
        "confusion": {"rows": rows, "columns": list(ANSWERS),
                      "counts": {t: {a: sum(1 for tt, aa in zip(truths, answers, strict=True) if tt == t and aa == a)
                                     for a in ANSWERS} for t in rows}},
        "published": dict(PUBLISHED), "published_note": PUBLISHED_NOTE,
    }


def _truth(sample: Any) -> str:
    if sample.label == 0:
        return TRUTH[0]
    return sample.subtype or TRUTH[-1]


def _answer(meta: Any, refused: bool, probability: float, viral: float, threshold: float) -> str:
    """The final answer the user gets, as the row maker gives it."""
    if refused:
        return "refused"
    return "NORMAL" if probability < threshold else meta.subtype_label(viral)


def _figure(value: Any) -> Figure:
    return value if isinstance(value, Figure) else Figure.from_dict(value)


def blocks(section: dict[str, Any] | None) -> list[str | tuple[list[str], list[list[str]]]]:
    """The section for a renderer, in order: paragraphs (str) and tables ((header, rows))."""
    if not section:
        return []
    if not section.get("available"):
        return [f"No subtype figures: {section.get('reason', 'not evaluated')}."]
    low, high = section["uncertain_band"]
    figures = section["figures"]
    published = section["published"]
    share = _figure(section["uncertain_share"])
    counts = section["confusion"]["counts"]
    return [
        f"How well the head tells viral from bacterial, on {section['figures_on']}: {section['images']} images of "
        f"{section['patients']} patients ({section['bacterial']} bacterial, {section['viral']} viral). Viral is the "
        f"positive class; the stored threshold {section['threshold']:.4f} is the single operating point; "
        f"answers: bacterial below {low:.4f}, viral at or above {high:.4f}, uncertain between."
        + (f" How they were chosen: {section['rule'].rstrip('.')}." if section["rule"] else ""),
        (["metric", "this evaluation", f"published: {published['source']}"],
         [[FIGURE_LABELS[m], str(_figure(figures[m])), f"{published[m]:.3f}"] for m in FIGURES]),
        section["published_note"],
        f"Answered uncertain: {share} of the {section['pneumonia_answers']} PNEUMONIA answers ({UNCERTAIN_METHOD}).",
        "What the user gets: truth (rows) against the model's final answer (columns), every decoded image.",
        (["truth \\ answer", *section["confusion"]["columns"]],
         [[row, *(str(counts[row][a]) for a in section["confusion"]["columns"])] for row in section["confusion"]["rows"]]),
        NOT_A_DIAGNOSIS,
    ]


def summary_lines(section: dict[str, Any] | None) -> list[str]:
    """What ``pneumoscan evaluate`` prints about the subtype."""
    if not section:
        return []
    if not section.get("available"):
        return [f"subtype: no figures ({section.get('reason', 'not evaluated')})"]
    published = section["published"]
    lines = [f"subtype (viral vs bacterial; {section['images']} PNEUMONIA images with a known subtype, "
             f"threshold {section['threshold']:.4f}; published: {published['source']}, another protocol):"]
    lines += [f"  {m:<18} {_figure(section['figures'][m])}   (published {published[m]:.3f})" for m in FIGURES]
    lines.append(f"  {'uncertain share':<18} {_figure(section['uncertain_share'])} "
                 f"of {section['pneumonia_answers']} PNEUMONIA answers")
    confusion = section["confusion"]
    lines.append("  truth (rows) against the answer (columns), every decoded image:")
    lines.append(f"  {'':<22}" + "".join(f"{a:>11}" for a in confusion["columns"]))
    lines += [f"  {row:<22}" + "".join(f"{confusion['counts'][row][a]:>11}" for a in confusion["columns"])
              for row in confusion["rows"]]
    return lines
