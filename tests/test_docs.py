"""The docs and help texts say what the code does about the stored threshold: the rule training applies
by default (`sens95-median` on validation), never that the default stores the class-balanced 0.5."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pneumoscan.cli import build_parser
from pneumoscan.inference import resolve_model
from pneumoscan.training import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "DEVELOPERS.md", *sorted((ROOT / "docs").glob("*.md")),
        ROOT / "src" / "pneumoscan" / "bundled" / "model_card.md"]
# A sentence about the threshold a model stores (not the alternative operating points).
STORED = re.compile(r"threshold stored|stored threshold|threshold \(stored|threshold is fixed|stored in the model")
BALANCED = re.compile(r"class-balanced decision|balanced point|class-balanced 0\.5|balanced 0\.5")
# Sentences that speak of the balanced point as an alternative, or of the earlier default, are right.
ALTERNATIVE = re.compile(r"sens95|previous|earlier|--threshold-rule balanced|alternative|instead")


def _sentences(text: str) -> list[str]:
    return re.split(r"(?<=[.;])\s+", " ".join(text.split()))


def _help_texts() -> str:
    parser = build_parser()
    texts = []
    todo = [parser]
    while todo:
        current = todo.pop()
        texts.append(current.format_help())
        for action in current._actions:
            if action.__class__.__name__ == "_SubParsersAction":
                todo += list(action.choices.values())
    return "\n".join(texts)


def test_the_default_threshold_rule_is_the_one_these_checks_describe():
    assert TrainConfig().threshold_rule == "sens95-median"


def _text(source) -> str:
    if source == "help":
        return _help_texts()
    if source == "report":  # how every evaluation report describes its "stored" row
        from pneumoscan.evaluation.scoring import RULES

        return RULES["stored"] + "."
    return source.read_text(encoding="utf-8")


@pytest.mark.parametrize("source", [*DOCS, "help", "report"], ids=lambda s: s if isinstance(s, str) else s.name)
def test_no_text_says_the_stored_threshold_is_the_balanced_point(source):
    text = _text(source)
    wrong = [s for s in _sentences(text) if STORED.search(s) and BALANCED.search(s) and not ALTERNATIVE.search(s)]
    assert not wrong, wrong


def test_the_documented_server_answer_carries_the_bundled_models_threshold():
    text = (ROOT / "docs" / "serving.md").read_text(encoding="utf-8")
    shown = [float(x) for x in re.findall(r'"threshold": ([0-9.]+)', text)]
    stored = round(float(resolve_model().read_card()["operating_point"]["threshold"]), 4)
    assert shown and all(x == stored for x in shown), (shown, stored)
