"""A shipped model's card (``default`` or ``fast``): the export card (input, output, intended use, limits) completed with what
a newcomer needs to trust or distrust it: the files' hashes, test figures with patient-bootstrap
intervals, the operating point and how it was chosen, the training data, how it was built, and the
probabilities of a few reference images (which ``tests/bundled`` re-computes from the shipped files).

A build tool of ``bench/build_default_model.py``, kept out of the package: the package ships the card it
writes (``pneumoscan.bundled``), and reading it needs only ``pneumoscan.inference.resolve_model().read_card()``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pneumoscan.errors import ImageReadError
from pneumoscan.inference.subtype_card import subtype_card
from pneumoscan.provenance import DISCLAIMER, git_commit, library_versions, sha256_file

TRAINING_DATA = {
    "dataset": "Kermany D, Zhang K, Goldbaum M. Labeled Optical Coherence Tomography (OCT) and Chest X-Ray "
               "Images for Classification. Mendeley Data v2, 2018, doi:10.17632/rscbjbr9sj.2 (CC BY 4.0)",
    "population": "paediatric (1-5 years) anterior-posterior chest radiographs from one centre "
                  "(Guangzhou Women and Children's Medical Center), graded by two physicians",
    "images": "the official training folder, re-published at 224x224 (stretched to a square)",
    "split": "by patient: 10 % of each class's patients held out for validation (checkpoint choice and the "
             "temperature, and the threshold: the sens95-median rule); the official test "
             "half is never trained on or used to choose anything",
}
SCOPE = (
    "Research only. Out of scope: any clinical use; adults; lateral or other non-frontal views; other "
    "hospitals and scanners without a new evaluation; findings other than pneumonia (and bacterial vs "
    "viral). Posterior-anterior (PA) views are scored but untested: the training and test images are AP."
)
# A model with a subtype head answers bacterial vs viral as an image pattern ('Subtype answer').
SCOPE_WITH_HEAD = SCOPE.replace("(and bacterial vs viral)", "(and a microbiological diagnosis of the subtype)")
PATHS = ("relative to the folder that holds chest_xray/ (the dataset as `pneumoscan data download` "
         "fetches it)")
# Each bundled model's recipe: the options of `pneumoscan train` it differs from the default recipe by.
RECIPES: dict[str, dict[str, Any]] = {
    "default": {},
    "fast": {"model": "mini-resnet", "image_size": 128, "epochs": 36, "teacher": "default",
             "distill_view": "original"},
}
# What only the build's work folders mean: the run it trained in, where it wrote.
BUILD_ONLY = ("out", "run_name", "progress")
SHARED_DATA = "../shared/data"
# What the stored rule has given where nothing was tuned (docs/generalisation.md has the measurements).


def expected(report: dict[str, Any], which: str = "default") -> str:
    """What to expect of the stored ``sens95-median`` point at another site, with this model's own test figure."""
    at = report["metrics"]["at"]["stored"]
    sensitivity = at["sensitivity"]
    figure = f"{sensitivity['value']:.3f} [{sensitivity['low']:.3f}, {sensitivity['high']:.3f}]"
    if which != "default":  # the measurements across seeds and halves below are the default recipe's
        return ("sens95-median aims at sensitivity 0.95 on the validation patients. At the new site of the "
                f"official test half this model held {figure} (specificity {at['specificity']['value']:.3f}); one "
                "seed of this recipe has been measured. Expect sensitivity near 0.95-0.99 and specificity to pay "
                "for a site's shift; check it on the site's own labelled images "
                f"(`pneumoscan calibrate {which} --data ...`).")
    return ("sens95-median aims at sensitivity 0.95 on the validation patients. At the new site of the official "
            "test half, three seeds of the default recipe held 0.985 +- 0.010 (0.975 to 0.995; specificity 0.82 "
            f"to 0.85) and this model {figure}; on the other half of the official test split, "
            "measured independently, the same rule gave an earlier default 0.979 (specificity 0.782) where its "
            "ranking fell by 0.03 ROC-AUC. Expect sensitivity near 0.95-0.99 and specificity to pay for a "
            "site's shift; check it on the site's own labelled images (`pneumoscan calibrate`).")


HEADLINE = ("roc_auc", "pr_auc", "ece")
AT_THRESHOLD = ("sensitivity", "specificity", "ppv", "npv", "accuracy", "balanced_accuracy")


def build_bundled_card(folder: str | os.PathLike, report: dict[str, Any], *, recipe: dict[str, Any],
                       deviations: dict[str, Any], reference_images: list[str], shared_root: str | os.PathLike,
                       train_seconds: float, which: str = "default") -> dict[str, Any]:
    """The card of the bundled model ``which`` in ``folder`` (``model.onnx`` and ``model.safetensors``),
    from the report of its evaluation on the official test half; reference images are paths relative to
    ``shared_root``."""
    import pneumoscan
    from pneumoscan.bundled import ONNX_FILE
    from pneumoscan.inference.model_card import build_model_card

    folder, shared_root = Path(folder), Path(shared_root)
    onnx = pneumoscan.load(folder / ONNX_FILE)
    meta = onnx.meta
    card = build_model_card(meta, None, folder / ONNX_FILE)
    card["files"] = shipped_files(folder)
    card["scope"] = SCOPE_WITH_HEAD if meta.subtype else SCOPE
    card["subtype"] = subtype_card(meta, report)
    card["training_data"] = {**TRAINING_DATA, **card["training_data"]}
    from pneumoscan.inference.model_card import threshold_rule

    points = report["operating_points"]
    rule = str(recipe.get("threshold_rule", "youden"))
    card["operating_point"] = {
        "threshold": float(meta.threshold),
        "name": rule,
        "how_chosen": f"{threshold_rule(meta) or rule}; fixed at the end of training, stored in the model and "
                      "applied unchanged to the test half",
        "expected": expected(report, which) if rule == "sens95-median" else None,
        "alternatives": {name: {"threshold": p["threshold"], "rule": p.get("rule", "")}
                         for name, p in points.items() if name != "stored"},
    }
    card["metrics"]["evaluation"] = evaluation_section(report)
    card["metrics"]["note"] = None
    card["reference_scores"] = reference_scores(folder, reference_images, shared_root)
    card["build"] = {
        "bundle": which,
        **training_command(meta),
        "recipe": _recipe_text(deviations, which),
        **teacher_section(meta),
        "deviations_from_default": deviations,
        "config": recipe,
        "train_seconds": round(train_seconds, 1),
        "versions": {k: v for k, v in library_versions().items() if k != "platform"},
    }
    card["disclaimer"] = DISCLAIMER
    return packaged(portable(card, shared_root))


def evaluation_section(report: dict[str, Any]) -> dict[str, Any]:
    """The card's ``metrics.evaluation``: the headline figures of ``report`` (the model's evaluation on the
    official test half), with how their intervals were made."""
    data, boot, figures = report["data"], report["bootstrap"], report["metrics"]
    return {
        "report": "chest_xray/test: half of the official Kermany test set, chosen by patient",
        "images": data["images"], "patients": data["patients"],
        "pneumonia": data["pneumonia"], "normal": data["normal"],
        "interval_level": boot["level"], "interval_unit": boot["unit"], "resamples": boot["resamples"],
        "figures": {**{m: figures["threshold_free"][m] for m in HEADLINE},
                    **{f"{m} at the threshold": figures["at"]["stored"][m] for m in AT_THRESHOLD}},
    }


def refresh_card(card: dict[str, Any], folder: str | os.PathLike, shared_root: str | os.PathLike,
                 report: dict[str, Any] | None = None) -> dict[str, Any]:
    """``card`` brought up to date with the files in ``folder`` after a re-export: their hashes, the input and
    output contract, scope and provenance as the code now writes them, and the reference images' scores
    with both backends; the test figures and the build's recipe are kept (the weights are the same)."""
    import pneumoscan
    from pneumoscan.bundled import ONNX_FILE
    from pneumoscan.inference.model_card import build_model_card

    folder = Path(folder)
    meta = pneumoscan.load(folder / ONNX_FILE).meta
    fresh = build_model_card(meta, None, folder / ONNX_FILE)
    card = {**card, **{k: fresh[k] for k in ("model", "out_of_scope", "input", "scope_gate", "limitations",
                                             "provenance", "intended_use")}}
    card["output"] = {**card["output"], **fresh["output"]}
    card["files"] = shipped_files(folder)
    card["scope"] = SCOPE_WITH_HEAD if meta.subtype else SCOPE
    previous, card["subtype"] = card.get("subtype") or {}, subtype_card(meta, report)
    if report is None and card["subtype"] and "evaluation" in previous:  # the build's report's figures stay
        card["subtype"]["evaluation"] = previous["evaluation"]
    card["reference_scores"] = reference_scores(folder, [r["image"] for r in card["reference_scores"]],
                                                shared_root)
    card["build"] = {**card["build"], **training_command(meta)}
    if report is not None:
        card["metrics"] = {**card["metrics"], "evaluation": evaluation_section(report)}
        if card["operating_point"].get("expected"):
            card["operating_point"]["expected"] = expected(report, card["build"].get("bundle", "default"))
    card["disclaimer"] = DISCLAIMER
    return packaged(portable(card, shared_root))


def shipped_files(folder: Path) -> dict[str, str]:
    """The card's ``files`` section: both files of ``folder`` with their SHA-256."""
    from pneumoscan.bundled import ONNX_FILE, WEIGHTS_FILE

    return {"onnx": ONNX_FILE, "onnx_sha256": sha256_file(folder / ONNX_FILE),
            "safetensors": WEIGHTS_FILE, "safetensors_sha256": sha256_file(folder / WEIGHTS_FILE)}


def reference_scores(folder: Path, images: list[str], shared_root: str | os.PathLike) -> list[dict[str, Any]]:
    """Each image's probability with the ONNX file and with the PyTorch weights of ``folder``; ``images``
    are relative to ``shared_root`` (or to the folder that holds ``chest_xray/`` there)."""
    import pneumoscan
    from pneumoscan.bundled import ONNX_FILE, WEIGHTS_FILE

    # The check off: a reference pins the probability, whatever the gate says of the image.
    models = [pneumoscan.load(folder / ONNX_FILE, scope_check=False),
              pneumoscan.load(folder / WEIGHTS_FILE, device="cpu", scope_check=False, backend="torch")]
    scores = []
    for image in images:
        rows = [m.predict([Path(shared_root) / image.removeprefix(f"{SHARED_DATA}/")])[0] for m in models]
        if rows[0].probability is None or rows[1].probability is None:
            raise ImageReadError(f"reference image: {rows[0].error or rows[1].error}")
        score = {"image": image, "probability": rows[0].probability, "probability_torch": rows[1].probability}
        if rows[0].error:  # what the gate says of it (scored anyway, the check being off)
            score["note"] = "out of scope: " + rows[0].error.split("out of scope: ", 1)[-1]
        scores.append(score)
    return scores


def training_command(meta: Any) -> dict[str, Any]:
    """How the weights were trained, as the model's own provenance records it (the command and the git
    commit of the training, ``+dirty`` when the working tree had uncommitted changes), so that the card
    and ``model.json`` say the same."""
    provenance = meta.provenance or {}
    command = str(provenance.get("command") or "bench/build_default_model.py")
    return {"command": command if command.startswith("python ") else f"python {command}",
            "git_commit": provenance.get("git_commit") or git_commit()}


def packaged(card: dict[str, Any]) -> dict[str, Any]:
    """``card`` as the package ships it: no run name (the bundled model is ``default``, not the run the
    build trained in), none of the build's work folders, and data paths relative to the dataset's folder
    (``chest_xray/test/...``) rather than to where the repository keeps it."""
    def walk(item: Any) -> Any:
        if isinstance(item, dict):
            return {k: walk(v) for k, v in item.items()}
        if isinstance(item, list):
            return [walk(v) for v in item]
        return item.removeprefix(f"{SHARED_DATA}/") if isinstance(item, str) else item

    card = walk(card)
    card["model"] = {**card["model"], "run_id": None}
    config = card.get("provenance", {}).get("config")
    if isinstance(config, dict):
        card["provenance"] = {**card["provenance"],
                              "config": {k: v for k, v in config.items() if k not in BUILD_ONLY}}
    card["training_data"] = {**card["training_data"], "paths": PATHS}
    return card


def render_bundled_markdown(card: dict[str, Any]) -> str:
    """The card for people: the export card's sections plus operating point, build and reference scores."""
    from pneumoscan.inference.model_card import render_markdown

    base = render_markdown(card)
    head, _, tail = base.partition("## Limitations")
    point = card["operating_point"]
    build = card["build"]
    extra = [
        "## Files", "",
        f"- `{card['files']['onnx']}` sha256 `{card['files']['onnx_sha256']}`",
        f"- `{card['files']['safetensors']}` sha256 `{card['files']['safetensors_sha256']}`", "",
        "## Scope", "", card["scope"], "",
        "## Operating point", "",
        f"Threshold **{point['threshold']:.4f}**: {point['how_chosen']}. Alternatives (stored in the "
        "model too; all but `balanced` chosen on the validation patients):", "",
    ]
    extra += [f"- {name}: {p['threshold']:.4f}: {p['rule']}" for name, p in point["alternatives"].items()]
    if point.get("expected"):
        extra += ["", f"What to expect at another site: {point['expected']}"]
    commit = str(build.get("git_commit") or "unknown")
    if commit.endswith("+dirty"):
        commit = f"{commit.removesuffix('+dirty')} with uncommitted changes (`+dirty`)"
    gap = max((abs(r["probability"] - r["probability_torch"]) for r in card["reference_scores"]), default=0.0)
    teachers = (build.get("teacher") or {}).get("models") or []
    names = ", ".join(f"`{t['teacher']}` ({t['name']}, {t['image_size']} px)" for t in teachers)
    taught = [f"- teacher: {names}, weight {build['teacher']['weight']}, view `{build['teacher']['view']}`"
              ] if teachers else []
    extra += ["", "## How it was built", "", f"- {build['recipe']}", *taught,
              f"- command (as the model's provenance records it): `{build['command']}`",
              f"- training time: {build['train_seconds']:.0f} s; git commit {commit}", "",
              "## Reference scores", "",
              f"Probabilities the shipped files give with each backend (largest difference here {gap:.1e}):", "",
              "| image | ONNX Runtime | PyTorch |", "|---|---|---|"]
    extra += [f"| `{r['image']}` | {r['probability']:.6f} | {r['probability_torch']:.6f} |"
              for r in card["reference_scores"]]
    speed = card.get("speed")
    extra += ["", "## Speed", "",
              (f"**{speed['images_per_second']:,.0f} images/s** (one image: {speed['p50_ms']:.2f} ms, median): "
               f"{speed['conditions']}; measured by `{speed['command']}`." if speed else
               "Not measured yet: `python bench/build_default_model.py --speed-only` measures it.")]
    extra += ["", ""]
    return head + "\n".join(extra) + "## Limitations" + tail


def recipe_command(which: str) -> str:
    """The `pneumoscan train` command of the bundled model ``which``'s recipe."""
    options = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in RECIPES[which].items())
    return f"pneumoscan train {options}".strip()


def _recipe_text(deviations: dict[str, Any], which: str = "default") -> str:
    """How the bundled recipe relates to `pneumoscan train` (with no options for ``default``; with
    :data:`RECIPES`' options for the others), and whether the build was a short, provisional one."""
    from pneumoscan.training.config import TrainConfig

    recipe = "the default recipe" if which == "default" else f"the {which} recipe, `{recipe_command(which)}`"
    if not deviations:
        return f"{recipe} of `pneumoscan train` with no options" if which == "default" else recipe
    changes = ", ".join(f"{k}={v}" for k, v in deviations.items())
    epochs = RECIPES[which].get("epochs", TrainConfig.epochs)
    if deviations.get("epochs", epochs) < epochs or any(k.startswith("limit_") for k in deviations):
        return (f"PROVISIONAL: {recipe} with {changes} (a short run to make the bundle work; rebuild without "
                "options for the real model)")
    if which == "default":
        return f"the default recipe of `pneumoscan train` with a larger budget: {changes}"
    return f"{recipe}, with {changes}"


def teacher_section(meta: Any) -> dict[str, Any]:
    """The card's ``build.teacher`` for a distilled model: each teacher as its provenance records it (a
    bundled teacher by its name, the weights' SHA-256, network and size), the weight and the view; empty for
    a model trained on the labels alone."""
    teacher = (meta.provenance or {}).get("teacher")
    if not teacher:
        return {}
    models = [{k: m.get(k) for k in ("teacher", "name", "image_size", "sha256", "created")}
              for m in teacher.get("models", [])]
    return {"teacher": {"models": models, "weight": teacher.get("weight"), "view": teacher.get("view")}}


def portable(value: Any, shared_root: str | os.PathLike) -> Any:
    """``value`` (a card, a model's metadata) with this machine's path to the shared data replaced by the
    project's relative ``../shared/data``."""
    import pneumoscan

    # The installed package's folder too (a bundled teacher's weights): `pneumoscan/bundled/...`.
    replace = {str(Path(shared_root).resolve()): SHARED_DATA, str(shared_root): SHARED_DATA,
               str(Path(pneumoscan.__file__).resolve().parent): "pneumoscan"}

    def walk(item: Any) -> Any:
        if isinstance(item, dict):
            return {k: walk(v) for k, v in item.items()}
        if isinstance(item, list):
            return [walk(v) for v in item]
        if isinstance(item, str):
            for old, new in replace.items():
                item = item.replace(old, new)
        return item

    return walk(value)


DOCS_BLOCK = ("<!-- bundled-models: written by bench/build_default_model.py from the cards -->",
              "<!-- /bundled-models -->")


def choice_table() -> str:
    """The docs' table of the bundled models, from their cards (what `pneumoscan models` shows)."""
    from pneumoscan.inference.catalog import bundled_choices

    def interval(f: tuple[float, float, float] | None) -> str:
        return f"**{f[0]:.3f}** [{f[1]:.3f}, {f[2]:.3f}]" if f else "-"

    lines = ["| bundled model | network | ROC-AUC, new site | sensitivity | specificity | images/s (ONNX Runtime) |",
             "|---|---|---|---|---|---|"]
    for c in bundled_choices():
        if not c.installed:
            lines.append(f"| `{c.name}`: {c.purpose} | not in this installation yet: `python "
                         f"bench/build_default_model.py --which {c.name}` builds it | | | | |")
            continue
        rate = f"**{c.images_per_second:,.0f}**" if c.images_per_second is not None else "not measured yet"
        note = " (PROVISIONAL build)" if c.provisional else ""
        lines.append(f"| `{c.name}`: {c.purpose}{note} | {c.network}, {c.image_size} px | {interval(c.roc_auc)} | "
                     f"{interval(c.sensitivity)} | {interval(c.specificity)} | {rate} |")
    return "\n".join(lines)


def update_docs(repo: Path, pages: tuple[str, ...] = ("README.md", "docs/default-model.md")) -> list[Path]:
    """Rewrite the bundled models' table between :data:`DOCS_BLOCK`'s markers in ``pages`` from the cards;
    returns the pages changed."""
    from pneumoscan._io import atomic_write_text

    start, end = DOCS_BLOCK
    changed = []
    for page in pages:
        path = repo / page
        text = path.read_text(encoding="utf-8")
        head, found, rest = text.partition(start)
        if not found:
            continue
        new = f"{head}{start}\n{choice_table()}\n{end}{rest.partition(end)[2]}"
        if new != text:
            atomic_write_text(path, new)
            changed.append(path)
    return changed
