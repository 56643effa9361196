"""Rebuild a model shipped inside the package from ``../shared/data``: ``default`` (``src/pneumoscan/bundled/``)
or ``fast`` (``src/pneumoscan/bundled/fast/``).

    .venv/bin/python bench/build_default_model.py                 # the default recipe, as `pneumoscan train`
    .venv/bin/python bench/build_default_model.py --which fast    # the fast recipe: a mini-resnet student of
                                                                  # the bundled default (about 10 minutes)
    .venv/bin/python bench/build_default_model.py --epochs 2      # a provisional model (the card says so)
    .venv/bin/python bench/build_default_model.py --which fast --epochs 1 --limit 200 --out /tmp/fast
                                                                  # a quick check of the whole build (provisional)
    .venv/bin/python bench/build_default_model.py --speed-only    # measure the shipped model's speed into its card
    .venv/bin/python bench/build_default_model.py --scope-only    # refit the shipped model's scope gate only
                                                                  # (distance, orientation and kind probes)
    .venv/bin/python bench/build_default_model.py --export-only   # re-export the shipped weights, refresh the card
    .venv/bin/python bench/build_default_model.py --export-only --int8   # ... and write model.int8.onnx beside it

Steps: train the model's recipe exactly as ``pneumoscan train`` does (``default``: the default
``TrainConfig()``, no options; ``fast``: ``_bundled_card.RECIPES["fast"]``, a distillation from the bundled
``default``; only the data root and the output folder are set, and ``--epochs``, ``--image-size`` and
``--limit`` when given, which the card records as deviations, ``--limit`` and fewer epochs as PROVISIONAL;
training fits the model's scope gate on its training images), export it to ONNX (with the parity check),
evaluate it on the official test half ``chest_xray/test`` (patient-bootstrap intervals), score a few
reference images of the shared data with both backends, measure its speed (ONNX Runtime, images/s), and
write the bundle: ``model.onnx``, ``model.safetensors``, ``model.json``, ``model_card.json``,
``model_card.md``. Written into the package, it also rewrites the bundled models' table of README.md and
docs/default-model.md from the cards. ``tests/bundled/`` checks that the shipped files match the cards. The
work folder (run, export, report) stays in ``bench/out/<which>-model/``. Never run by pytest.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
REFERENCES_PER_CLASS = 2  # images of the official test half whose probabilities the card records


def main(argv: list[str] | None = None) -> int:
    from pneumoscan.bundled import MODELS, folder

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--which", choices=list(MODELS), default="default", help="which bundled model to build")
    parser.add_argument("--data", default="../shared/data/chest_xray", help="Kermany root with train/ and test/ "
                        "(reference images are read from its parent folder)")
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs (the card records it)")
    parser.add_argument("--image-size", type=int, default=None, help="override the recipe's input size (the card "
                        "records it)")
    parser.add_argument("--limit", type=int, default=None, help="train on at most this many training images and "
                        "validate on at most this many (a quick check of the build: the card says PROVISIONAL)")
    parser.add_argument("--work", default=None, help="work folder (default bench/out/WHICH-model)")
    parser.add_argument("--out", default=None, help="bundle folder (default: the model's folder in the package)")
    parser.add_argument("--reuse", action="store_true", help="keep the trained run of the work folder (rebuild "
                        "export, report and card only)")
    parser.add_argument("--scope-only", action="store_true", help="refit the scope gate of the shipped model on "
                        "DATA/train, re-export it and update its card's files and scope gate (weights unchanged)")
    parser.add_argument("--subtype-only", action="store_true", help="fit the shipped model's subtype head (bacterial "
                        "or viral) on the training split its recipe made, then re-export and re-evaluate it as "
                        "--export-only does (the network's weights unchanged)")
    parser.add_argument("--export-only", action="store_true", help="re-export the shipped weights to ONNX with "
                        "the current exporter, evaluate it on DATA/test and refresh the card (hashes, contract, "
                        "reference scores, test figures; the weights unchanged)")
    parser.add_argument("--speed-only", action="store_true", help="measure the bundle's speed (ONNX Runtime, "
                        "images/s) into its card; run it for every bundled model on the same quiet machine")
    parser.add_argument("--int8", action="store_true", help="also write the int8 graph of the bundle's model.onnx "
                        "beside it, with its card (`pneumoscan export --int8`: calibrated on DATA/train, re-fitted on "
                        "the validation patients the training carved)")
    args = parser.parse_args(argv)
    args.work = args.work or f"bench/out/{args.which}-model"
    args.out = args.out or folder(args.which)
    # Paths relative to the repository in the model's provenance: no machine's absolute paths in the bundle.
    args.data, args.work, args.out = (os.path.relpath(Path(p).resolve(), REPO) for p in (args.data, args.work, args.out))
    os.chdir(REPO)

    from _bundled_card import RECIPES, build_bundled_card, portable, render_bundled_markdown
    from pneumoscan._io import atomic_write_json, atomic_write_text
    from pneumoscan.bundled import CARD_JSON, CARD_MARKDOWN, META_JSON, ONNX_FILE, WEIGHTS_FILE
    from pneumoscan.evaluation import EvaluateConfig, evaluate
    from pneumoscan.serving.export import export_onnx
    from pneumoscan.training import TrainConfig, train

    data, work, out = Path(args.data), Path(args.work), Path(args.out)
    missing = [p for p in (data / "train", data / "test") if not p.is_dir()]
    if missing:
        print(f"build_default_model: {', '.join(map(str, missing))} missing; run `pneumoscan data download` "
              "or pass --data", file=sys.stderr)
        return 2
    if args.scope_only:
        return refit_scope(data, work, out, reuse=args.reuse) or write_int8(out, data, args.int8)
    if args.subtype_only:
        return refit_subtype(data, work, out) or write_int8(out, data, args.int8)
    if args.export_only:
        return reexport(data, work, out) or write_int8(out, data, args.int8)
    if args.speed_only:
        return speed_only(data, out)
    deviations = {k: v for k, v in (("epochs", args.epochs), ("image_size", args.image_size),
                                    ("limit_train_images", args.limit), ("limit_val_images", args.limit))
                  if v is not None}
    config = TrainConfig(data=str(data), out=str(work), run_name="run", progress=sys.stderr.isatty(),
                         **{**RECIPES[args.which], **deviations})
    recipe = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
              if f.name not in ("data", "out", "run_name", "progress")}
    started = time.perf_counter()
    if args.reuse and (work / "run" / WEIGHTS_FILE).is_file():
        run = work / "run"
    else:
        if (work / "run").exists():
            shutil.rmtree(work / "run")
        run = train(config)
        (work / "train_seconds.txt").write_text(f"{time.perf_counter() - started:.1f}\n")
        rounded = round_weights_to_float16(run / WEIGHTS_FILE)
        print(f"{rounded} weight tensors rounded to float16 (half the shipped files; figures below are of them)")
    trained_s = float((work / "train_seconds.txt").read_text())
    print(f"trained in {trained_s:.0f} s: {run}")
    onnx = export_onnx(run, work / "export" / ONNX_FILE, float16_weights=True)
    print(f"exported: {onnx} (ONNX Runtime matches PyTorch)")
    result = evaluate(EvaluateConfig(models=[str(run)], data=str(data), split="test", out=str(work / "report")))
    print(f"evaluated on {data / 'test'}: {result.json}")

    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx, out / ONNX_FILE)
    shutil.copyfile(run / WEIGHTS_FILE, out / WEIGHTS_FILE)
    # The metadata, readable without torch (`pneumoscan models`), without this machine's paths.
    atomic_write_json(out / META_JSON, portable(json.loads((run / META_JSON).read_text()), data.parent))
    card = build_bundled_card(out, result.report.to_dict(), recipe=recipe, deviations=deviations,
                              reference_images=reference_images(data), shared_root=data.parent, train_seconds=trained_s,
                              which=args.which)
    card["speed"] = measure_speed(out, data, speed_command(out))
    atomic_write_json(out / CARD_JSON, card)
    atomic_write_text(out / CARD_MARKDOWN, render_bundled_markdown(card))
    size = sum((out / name).stat().st_size for name in (ONNX_FILE, WEIGHTS_FILE, CARD_JSON, CARD_MARKDOWN, META_JSON))
    print(f"bundle written to {out} ({size / 1e6:.2f} MB); {card['speed']['images_per_second']:,.0f} images/s")
    update_shipped_docs(out)
    return write_int8(out, data, args.int8)


def write_int8(out: Path, data: Path, wanted: bool) -> int:
    """With --int8, the int8 graph of ``out/model.onnx`` beside it with its card, as ``pneumoscan export
    --int8`` makes it from ``data`` (split by patient as the bundled model's training split it); 0."""
    if not wanted:
        return 0
    from pneumoscan.bundled import ONNX_FILE
    from pneumoscan.serving.quantize import export_int8
    from pneumoscan.training.metrics import refit_on_validation

    made = export_int8(out / ONNX_FILE, refit_on_validation, data)
    print(f"int8 graph written: {made.path} (threshold {made.meta.threshold:.4f}; the float model's answer for "
          f"{made.label_agreement:.1%} of {made.validation_images} validation images)")
    return 0


def speed_only(data: Path, out: Path) -> int:
    """Measure the speed of the bundle in ``out`` into its card (nothing else changes)."""
    from _bundled_card import render_bundled_markdown
    from pneumoscan._io import atomic_write_json, atomic_write_text
    from pneumoscan.bundled import CARD_JSON, CARD_MARKDOWN

    card = json.loads((out / CARD_JSON).read_text())
    card["speed"] = measure_speed(out, data, speed_command(out))
    atomic_write_json(out / CARD_JSON, card)
    atomic_write_text(out / CARD_MARKDOWN, render_bundled_markdown(card))
    print(f"{out}: {card['speed']['images_per_second']:,.0f} images/s ({card['speed']['conditions']})")
    update_shipped_docs(out)
    return 0


def speed_command(out: Path) -> str:
    """The command that re-measures the speed of the bundle in ``out``: the card records it."""
    from pneumoscan.bundled import name_of

    which = name_of(out / "model.onnx")
    where = f" --which {which}" if which and which != "default" else ("" if which else f" --out {out}")
    return f"python bench/build_default_model.py{where} --speed-only"


def update_shipped_docs(out: Path) -> None:
    """Rewrite the bundled models' table of the docs from the cards, when ``out`` is a shipped model's folder
    (a build into a scratch folder leaves the docs alone)."""
    from _bundled_card import update_docs
    from pneumoscan.bundled import name_of

    if name_of(out / "model.onnx") is not None:
        for page in update_docs(REPO):
            print(f"updated {page.relative_to(REPO)}: the bundled models' table")


def round_weights_to_float16(file: Path) -> int:
    """Store the network's weight tensors (2-D or more) of a model file as float16, in place; return how many.

    The shipped files are then half the size (the ONNX graph keeps them as float16 too, computing in
    float32); BatchNorm statistics, biases and any non-network tensors stay float32. Everything the build
    measures afterwards is measured on the rounded weights.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    from pneumoscan._io import atomic_write

    with safe_open(str(file), framework="pt") as fh:
        metadata = fh.metadata()
        tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 (safe_open is not a dict)
    rounded = 0
    for key, value in tensors.items():
        if key.startswith("network.") and value.is_floating_point() and value.ndim >= 2:
            tensors[key] = value.half().contiguous()
            rounded += 1
    atomic_write(file, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return rounded


def refit_scope(data: Path, work: Path, out: Path, reuse: bool = False) -> int:
    """Fit the shipped model's scope gate on ``data/train`` and rewrite the bundle's files: the weights and
    every probability stay as they are (checked against the card's reference scores, with the scope check
    off: a reference image the new gate refuses is reported, its probability still checked). ``reuse``:
    the gate fitted and exported by an earlier ``--scope-only`` in the work folder."""
    from _bundled_card import packaged, render_bundled_markdown
    from pneumoscan._io import atomic_write_json, atomic_write_text
    from pneumoscan.bundled import CARD_JSON, CARD_MARKDOWN, ONNX_FILE, WEIGHTS_FILE
    from pneumoscan.inference import load
    from pneumoscan.inference.model_card import OUT_OF_SCOPE, scope_gate
    from pneumoscan.models.scope_meta import output_text
    from pneumoscan.provenance import sha256_file
    from pneumoscan.serving.export import export_onnx
    from pneumoscan.training.scope_fit import fit_scope

    started = time.perf_counter()
    folder = work / "scope"
    onnx = folder / "export" / ONNX_FILE
    if not (reuse and onnx.is_file()):
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / WEIGHTS_FILE, folder / WEIGHTS_FILE)
        scope = fit_scope(folder / WEIGHTS_FILE, data, progress=True)
        round_weights_to_float16(folder / WEIGHTS_FILE)  # saved as float32 again: the values are float16's already
        print(f"scope gate fitted in {time.perf_counter() - started:.0f} s: {json.dumps(scope)}")
        onnx = export_onnx(folder / WEIGHTS_FILE, onnx, float16_weights=True)
    card = json.loads((out / CARD_JSON).read_text())
    for reference in card["reference_scores"]:
        image = data.parent / reference["image"].removeprefix("../shared/data/")  # cards made before packaged()
        row = load(onnx, scope_check=False).predict([image])[0]
        if row.error:
            print(f"note: the new gate refuses the reference image {image}: {row.error}")
        if row.probability is None or abs(row.probability - reference["probability"]) > 1e-5:
            print(f"build_default_model: {image}: {row.probability} != {reference['probability']}", file=sys.stderr)
            return 1
    shutil.copyfile(onnx, out / ONNX_FILE)
    shutil.copyfile(folder / WEIGHTS_FILE, out / WEIGHTS_FILE)
    write_meta(folder, out, data)
    meta = load(out / ONNX_FILE).meta
    card["files"].update(onnx_sha256=sha256_file(out / ONNX_FILE), safetensors_sha256=sha256_file(out / WEIGHTS_FILE))
    card["scope_gate"] = scope_gate(meta)
    card["out_of_scope"] = OUT_OF_SCOPE
    card["output"] = {**card["output"], "scope": output_text(meta.scope)}
    card = packaged(card)
    atomic_write_json(out / CARD_JSON, card)
    atomic_write_text(out / CARD_MARKDOWN, render_bundled_markdown(card))
    print(f"bundle in {out}: scope gate refitted, probabilities unchanged")
    return 0


def refit_subtype(data: Path, work: Path, out: Path) -> int:
    """Fit the subtype head of the shipped model in ``out`` on the training and validation images of the split
    its recipe made (the same seeded patient split, checked against the data hash in its provenance), then
    :func:`reexport`: the card gets the head's figures on ``data/test``. The network's weights are unchanged."""
    from pneumoscan.bundled import WEIGHTS_FILE
    from pneumoscan.training.subtype_fit import fit_subtype

    started = time.perf_counter()
    folder = work / "subtype"
    subtype = fit_subtype(out / WEIGHTS_FILE, data, out=folder)
    print(f"subtype head fitted in {time.perf_counter() - started:.0f} s: {json.dumps(subtype)}")
    round_weights_to_float16(folder / WEIGHTS_FILE)  # the network stored as float16 again (the head stays float32)
    shutil.copyfile(folder / WEIGHTS_FILE, out / WEIGHTS_FILE)
    write_meta(folder, out, data)
    return reexport(data, work, out)


def write_meta(folder: Path, out: Path, data: Path) -> None:
    """The bundle's ``model.json`` from the one in ``folder``: readable without torch, without this machine's paths."""
    from _bundled_card import portable
    from pneumoscan._io import atomic_write_json
    from pneumoscan.bundled import META_JSON

    atomic_write_json(out / META_JSON, portable(json.loads((folder / META_JSON).read_text()), data.parent))


def reexport(data: Path, work: Path, out: Path) -> int:
    """Export the shipped ``model.safetensors`` again (the exporter checks that ONNX Runtime and PyTorch agree
    within 1e-4), evaluate the new ``model.onnx`` on ``data/test`` as ``evaluate`` does, and rewrite
    ``model.onnx`` and the card: its hashes, contract, reference scores and test figures."""
    from _bundled_card import refresh_card, render_bundled_markdown
    from pneumoscan._io import atomic_write_json, atomic_write_text
    from pneumoscan.bundled import CARD_JSON, CARD_MARKDOWN, ONNX_FILE, WEIGHTS_FILE
    from pneumoscan.evaluation import EvaluateConfig, evaluate
    from pneumoscan.serving.export import export_onnx

    onnx = export_onnx(out / WEIGHTS_FILE, work / "reexport" / ONNX_FILE, float16_weights=True)
    shutil.copyfile(onnx, out / ONNX_FILE)
    result = evaluate(EvaluateConfig(models=[str(out / ONNX_FILE)], data=str(data), split="test",
                                     out=str(work / "reexport" / "report")))
    print(f"evaluated on {data / 'test'}: {result.json}")
    card = refresh_card(json.loads((out / CARD_JSON).read_text()), out, data.parent, result.report.to_dict())
    atomic_write_json(out / CARD_JSON, card)
    atomic_write_text(out / CARD_MARKDOWN, render_bundled_markdown(card))
    gap = max(abs(r["probability"] - r["probability_torch"]) for r in card["reference_scores"])
    print(f"bundle in {out}: re-exported; reference images: ONNX Runtime and PyTorch within {gap:.1e}")
    return 0


SPEED_THREADS, SPEED_BATCH = 2, 64  # as bench/bench_inference.py measures: the project's 2-core machine


def measure_speed(folder: Path, data: Path, command: str) -> dict[str, Any]:
    """The card's ``speed``: images per second of ``folder``'s ``model.onnx`` with ONNX Runtime on the CPU
    (:data:`SPEED_THREADS` threads, batches of :data:`SPEED_BATCH` decoded images of ``data/test``; decoding
    not timed) and one image's median latency, timed as ``bench/bench_inference.py`` times them, with the
    machine's conditions and the ``command`` that measured it."""
    import platform
    import time

    import numpy as np

    from bench_inference import measure  # the bench's own timing loop
    from pneumoscan.bundled import ONNX_FILE
    from pneumoscan.inference.onnx_backend import OnnxBackend, load_onnx

    onnx = folder / ONNX_FILE
    files = sorted((data / "test").glob("*/*.jpeg"))[::8][:SPEED_BATCH]
    classifier = load_onnx(onnx, device="cpu", threads=SPEED_THREADS)
    images = np.stack([classifier.preprocess(f) for f in files])
    result = measure(OnnxBackend(onnx, threads=SPEED_THREADS, device="cpu"), images, single=200,
                     batch_size=SPEED_BATCH, batches=20, warmup=10)
    when = time.strftime("%Y-%m-%d")
    return {"images_per_second": round(result["images_per_s"], 1), "p50_ms": round(result["p50_ms"], 3),
            "conditions": f"ONNX Runtime, {SPEED_THREADS} threads, batches of {SPEED_BATCH} decoded test images "
                          f"(decoding not timed), {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
                          f"load average {os.getloadavg()[0]:.1f}, {when}",
            "command": command, "measured": when}


def reference_images(data: Path) -> list[str]:
    """The first images of each class of ``data/test`` (sorted by name), relative to ``data``'s parent;
    the test checks that the shipped files still give the probabilities the card records for them."""
    found = []
    for name in ("NORMAL", "PNEUMONIA"):
        files = sorted((data / "test" / name).glob("*.jpeg"))[:REFERENCES_PER_CLASS]
        found += [f"{data.name}/test/{name}/{f.name}" for f in files]
    return found


if __name__ == "__main__":
    sys.exit(main())
