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


# A row of the README's table of what `predict` answers for examples/: image, true label, probability, answer.
# A row: image, true label, probability ("none" when refused), answer (a label, or "refused"), and a note.
# A PNEUMONIA answer is followed by its subtype and viral probability: ", bacterial (P viral 0.14)".
EXAMPLE_ROW = re.compile(r"^\| `((?:NORMAL|PNEUMONIA)/[^`]+)` \| (NORMAL|PNEUMONIA)(?: \([a-z]+\))? \| ([0-9.]+|none) \| "
                         r"(NORMAL|PNEUMONIA|refused)\b(.*)\|$")
SUBTYPE_SHOWN = re.compile(r"^, (bacterial|viral|uncertain) \(P viral ([0-9.]+)\)")


def _readme_examples() -> list[tuple[str, str, str, str, str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return [m.groups() for line in text.splitlines() if (m := EXAMPLE_ROW.match(line))]


def test_the_readme_shows_what_predict_answers_for_every_example(tmp_path):
    """The README's example outputs are `predict`'s, within the precision printed, with their true labels,
    and a wrong answer is said to be wrong."""
    import csv

    from pneumoscan.cli import main

    rows = _readme_examples()
    examples = sorted(p.relative_to(ROOT / "examples").as_posix() for p in (ROOT / "examples").rglob("*.jpeg"))
    assert sorted(r[0] for r in rows) == examples and len(examples) >= 4
    assert main(["predict", str(ROOT / "examples"), "--out", str(tmp_path / "out.csv")]) == 0
    with open(tmp_path / "out.csv", newline="") as fh:
        printed = {Path(r["file"]).relative_to(ROOT / "examples").as_posix(): r for r in csv.DictReader(fh)}
    for image, truth, shown, answer, note in rows:
        assert image.split("/")[0] == truth, image  # the dataset's own label is the folder
        row = printed[image]
        if answer == "refused":  # a real radiograph the scope gate refuses is a wrong answer too
            assert shown == "none" and row["probability"] == "" and "out of scope" in row["error"], image
            assert "wrong" in note and row["error"].split("out of scope: ")[1].split(",")[0] in note, image
            continue
        decimals = len(shown.split(".")[1])
        assert abs(float(row["probability"]) - float(shown)) <= 0.5 * 10**-decimals + 1e-9, (image, row, shown)
        assert row["label"] == answer, image
        assert ("wrong" in note) == (answer != truth), image
        shown_subtype = SUBTYPE_SHOWN.match(note)
        assert (shown_subtype is not None) == bool(row["subtype"]), image  # shown exactly when predict gives one
        if shown_subtype:
            assert shown_subtype.group(1) == row["subtype"], image
            assert abs(float(row["viral_probability"]) - float(shown_subtype.group(2))) <= 0.005 + 1e-9, image


def test_the_examples_are_test_images_the_bundled_model_never_trained_on(shared_data):
    rows = _readme_examples()
    assert len(rows) >= 4
    for image, *_ in rows:
        source = shared_data / "chest_xray" / "test" / image
        assert (ROOT / "examples" / image).read_bytes() == source.read_bytes(), image
        assert not (shared_data / "chest_xray" / "train" / image).exists(), image


# The shipped model's headline figures, as the card holds them: (column, card figure) of each quoted table.
SHIPPED_COLUMNS = (("ROC-AUC", "roc_auc"), ("accuracy", "accuracy at the threshold"),
                   ("sensitivity", "sensitivity at the threshold"), ("specificity", "specificity at the threshold"),
                   ("ECE", "ece"))
FIGURE = re.compile(r"\*\*([0-9.]+)\*\*(?: \[([0-9.]+), ([0-9.]+)\])?")


def _card() -> dict:
    return resolve_model().read_card()


def _rounded(value: float, shown: str) -> bool:
    """``shown`` is ``value`` rounded at the precision shown."""
    decimals = len(shown.split(".")[1]) if "." in shown else 0
    return abs(value - float(shown)) <= 0.5 * 10**-decimals + 1e-9


@pytest.mark.parametrize("page", ["README.md", "docs/default-model.md", "docs/generalisation.md"])
def test_the_shipped_models_figures_are_the_cards(page):
    """Every figure of the shipped model's row is the card's, interval included, at the precision shown."""
    figures = _card()["metrics"]["evaluation"]["figures"]
    rows = [line for line in (ROOT / page).read_text(encoding="utf-8").splitlines()
            if line.startswith("| **the shipped model**")]
    assert len(rows) == 1, rows
    cells = [c.strip() for c in rows[0].strip("|").split("|")][1:]
    assert len(cells) == len(SHIPPED_COLUMNS)
    for cell, (column, name) in zip(cells, SHIPPED_COLUMNS, strict=True):
        shown = FIGURE.fullmatch(cell)
        assert shown, (column, cell)
        value, low, high = shown.groups()
        figure = figures[name]
        assert _rounded(figure["value"], value), (page, column, cell, figure)
        if low is not None:
            assert _rounded(figure["low"], low) and _rounded(figure["high"], high), (page, column, cell, figure)


def test_the_threshold_size_and_test_half_quoted_are_the_cards():
    card = _card()
    threshold, evaluation = card["operating_point"]["threshold"], card["metrics"]["evaluation"]
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    default_model = " ".join((ROOT / "docs" / "default-model.md").read_text(encoding="utf-8").split())
    quoted = [*re.findall(r"threshold ([0-9]\.[0-9]{3,4})\b", readme),
              *re.findall(r"stored threshold ([0-9]\.[0-9]{3,4})\b", default_model),
              *re.findall(r"threshold ([0-9]\.[0-9]{3,4}), temperature",
                          (ROOT / "docs" / "generalisation.md").read_text(encoding="utf-8"))]
    assert len(quoted) >= 3 and all(_rounded(threshold, q) for q in quoted), (quoted, threshold)
    accuracy = re.search(r"its accuracy is \*\*([0-9.]+)\*\*", readme).group(1)
    assert _rounded(evaluation["figures"]["accuracy at the threshold"]["value"], accuracy)
    images, patients = evaluation["images"], evaluation["patients"]
    assert f"{images} radiographs of {patients} patients" in readme
    assert f"({images} images, {patients} patients)" in default_model
    sensitivity = evaluation["figures"]["sensitivity at the threshold"]
    assert (f"this model {sensitivity['value']:.3f} [{sensitivity['low']:.3f}, {sensitivity['high']:.3f}]"
            in card["operating_point"]["expected"])


def test_the_provenance_quoted_is_the_models_own():
    """The card's build section and docs/default-model.md say what model.json records."""
    import json

    from pneumoscan.bundled import BUNDLED_DIR, META_JSON

    provenance = json.loads((BUNDLED_DIR / META_JSON).read_text(encoding="utf-8"))["provenance"]
    build = _card()["build"]
    assert build["git_commit"] == provenance["git_commit"]
    assert build["command"] == f"python {provenance['command']}"
    default_model = (ROOT / "docs" / "default-model.md").read_text(encoding="utf-8")
    assert f"`{provenance['command']}`" in " ".join(default_model.split())
    assert f"git commit `{provenance['git_commit'][:8]}`" in default_model
    assert ("+dirty" in provenance["git_commit"]) == ("uncommitted changes" in default_model)


def test_help_texts_say_what_the_code_does():
    text = " ".join(_help_texts().split())
    assert "fast default" not in text and "--model mini-resnet" not in text  # the default is efficientnet-lite0
    assert "checksum-verified" not in text  # nothing is verified without --sha256
    assert "triage worklist" not in text  # clinical triage is out of the model's scope
    from pneumoscan.models.registry import available_models

    assert "default" not in available_models()["mini-resnet"].replace("earlier default", "")


@pytest.mark.parametrize("page", ["README.md", "docs/default-model.md"])
def test_the_bundled_models_table_is_the_cards(page):
    """The table of the two bundled models (figures and speed) is what the build writes from their cards
    now: a rebuild or a speed measurement rewrites it, and a card changed by hand makes this fail."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_bundled_card", ROOT / "bench" / "_bundled_card.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    start, end = tool.DOCS_BLOCK
    text = (ROOT / page).read_text(encoding="utf-8")
    assert text.count(start) == 1 and text.count(end) == 1, page
    shown = text.split(start)[1].split(end)[0].strip()
    assert shown == tool.choice_table(), "run python bench/build_default_model.py --speed-only to rewrite it"
    for name in ("default", "fast"):
        assert f"| `{name}`" in shown
