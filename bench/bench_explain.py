"""Explanations: how often a heatmap is empty, how fine it is, where its heat lies, and what repeated calls cost.

    .venv/bin/python bench/bench_explain.py                  # the bundled model on chest_xray/test
    .venv/bin/python bench/bench_explain.py --model runs/latest --methods grad-cam@auto,grad-cam@last
    .venv/bin/python bench/bench_explain.py --rss 200        # + memory over 200 calls: explain, server, node

Maps: every image of ``chest_xray/test`` (PNEUMONIA and NORMAL), decoded and scored as ``predict`` does
(images the scope gate refuses are counted and left out), then mapped by each method and layer of
``--methods`` (``METHOD@LAYER``; layer ``auto`` is the default target, ``last`` the last spatial feature map,
else a module name). Per class: empty maps (:func:`pneumoscan.explain.is_flat`), the map's resolution
before upsampling, and the share of heat outside the lung fields, the mean over non-empty maps of the
heat's sum outside a fixed box of the model input (rows 12-82 %, columns 12-88 %: where the lung fields
of the test set's mean image lie, stretched as the bundled model sees it) divided by its whole sum.

``--rss N``: resident memory (VmRSS) before and after N calls, after 5 warm-up calls, of the three users
of :class:`~pneumoscan.explain.Heatmaps`: the server's ``POST /v1/predict?explain=true`` (the FastAPI app
in-process, through its ASGI client), the DICOM node's processing of an instance with ``--overlay``
(:class:`~pneumoscan.dicom.Processor`, what ``dicom listen --overlay`` calls per instance), and one
``explain_images`` on N files (what ``pneumoscan explain`` on N files runs). Never run by pytest.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from _common import resident_mib  # noqa: E402

LUNG_ROWS = (0.12, 0.82)
LUNG_COLUMNS = (0.12, 0.88)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model (default: the bundled one)")
    parser.add_argument("--data", default=str(REPO.parent / "shared/data/chest_xray/test"),
                        help="a folder with NORMAL/ and PNEUMONIA/ (default: ../shared/data/chest_xray/test)")
    parser.add_argument("--methods", default="grad-cam@last,grad-cam++@last,hirescam@last,grad-cam@auto,"
                        "grad-cam++@auto,hirescam@auto", help="METHOD@LAYER, comma-separated")
    parser.add_argument("--limit", type=int, default=None, help="at most this many images per class")
    parser.add_argument("--rss", type=int, default=0, metavar="N", help="also measure memory over N calls")
    args = parser.parse_args(argv)

    from pneumoscan.inference import load

    classifier = load(args.model, prefer_onnx=True)
    network = classifier.torch_module().network
    print(f"model: {classifier.meta.name} at {classifier.image_size} px ({args.model or 'bundled'}), "
          f"probabilities from {classifier.backend_name}")
    if args.methods:
        maps_table(classifier, network, Path(args.data), args.methods.split(","), args.limit)
    if args.rss:
        rss_table(classifier, Path(args.data), args.rss)
    return 0


def maps_table(classifier, network, data: Path, methods: list[str], limit: int | None) -> None:
    from pneumoscan.explain import Heatmaps, is_flat, target_layer

    size = classifier.image_size
    images: dict[str, np.ndarray] = {}
    for kind in ("PNEUMONIA", "NORMAL"):
        files = sorted(str(p) for p in (data / kind).glob("*") if p.is_file())[:limit]
        kept = []
        for f in files:
            image, reason = classifier.prepare(f)
            row = classifier.assess(image[None], [f], [reason])[0]
            if row.probability is not None:
                kept.append(image)
        images[kind] = np.stack(kept)
        print(f"{kind}: {len(kept)} of {len(files)} images in scope")
    box = np.zeros((size, size), bool)
    box[int(LUNG_ROWS[0] * size):int(LUNG_ROWS[1] * size), int(LUNG_COLUMNS[0] * size):int(LUNG_COLUMNS[1] * size)] = True
    print(f"\n{'method@layer':44s} {'map':>7s} {'s/img':>6s}  " +
          "  ".join(f"{k[:9]:>9s} empty  outside" for k in images))
    for spec in methods:
        method, _, layer = spec.strip().partition("@")
        name = {"auto": None, "last": target_layer(network, size)}.get(layer or "auto", layer)
        maker = Heatmaps(network, size, layer=name, method=method)
        resolution = _resolution(network, maker.layer, size)
        cells, start = [], time.perf_counter()
        for batch in images.values():
            heat = np.concatenate([maker(batch[i:i + 16]) for i in range(0, len(batch), 16)])
            full = [h for h in heat if not is_flat(h)]
            empty = len(heat) - len(full)
            outside = np.mean([h[~box].sum() / h.sum() for h in full]) if full else float("nan")
            cells.append(f"{empty:>3d} of {len(heat):<3d} {outside:8.1%}")
        per_image = (time.perf_counter() - start) / sum(len(b) for b in images.values())
        print(f"{method + '@' + maker.layer:44s} {resolution:>7s} {per_image:6.3f}  " + "  ".join(cells))


def _resolution(network, layer: str, size: int) -> str:
    import torch

    shapes = []
    hook = dict(network.named_modules())[layer].register_forward_hook(lambda _m, _i, o: shapes.append(o.shape))
    with torch.no_grad():
        network.eval()(torch.zeros(1, 1, size, size))
    hook.remove()
    return "x".join(map(str, shapes[0][2:]))


def rss_table(classifier, data: Path, calls: int) -> None:
    files = sorted((data / "PNEUMONIA").glob("*"))[:8]
    print(f"\nmemory (VmRSS, MiB) over {calls} calls after 5 warm-up calls")
    for name, call in (("server ?explain=true", _server(classifier, files)),
                       ("dicom node --overlay", _node(classifier, files)),
                       (f"pneumoscan explain, {calls} files", _explain(classifier, files, calls))):
        for i in range(5):
            call(i)
        gc.collect()
        before, start = resident_mib(os.getpid()), time.perf_counter()
        for i in range(1 if name.startswith("pneumoscan") else calls):
            call(i)
        gc.collect()
        after = resident_mib(os.getpid())
        print(f"{name:24s} {before:8.0f} -> {after:8.0f}  ({after - before:+.0f} MiB, "
              f"{(time.perf_counter() - start) / calls * 1000:.0f} ms per call)")


def _server(classifier, files):
    from fastapi.testclient import TestClient

    from pneumoscan.serving.app import create_app

    client = TestClient(create_app(classifier)).__enter__()
    uploads = [f.read_bytes() for f in files]

    def call(i: int) -> None:
        answer = client.post("/v1/predict?explain=true", files={"file": (f"{i}.jpeg", uploads[i % len(uploads)])})
        assert answer.status_code == 200 and answer.json()["explanation"], answer.text

    return call


def _node(classifier, files):
    from helpers import chest_dicoms
    from pneumoscan.data import read_image
    from pneumoscan.dicom import Processor

    processor = Processor(classifier, tempfile.mkdtemp(prefix="bench-explain-"), overlay=True)
    base = chest_dicoms.study("BENCH", "ACC")
    grays = [read_image(f, 512, "stretch") for f in files]

    def call(i: int) -> None:
        ds = chest_dicoms.instance(base, chest_dicoms.CR, "CR", i + 1, grays[i % len(grays)].astype(np.uint16) * 16,
                                   12, ViewPosition="PA", BodyPartExamined="CHEST")
        assert processor.process(ds).overlay_file

    return call


def _explain(classifier, files, calls: int):
    """One ``explain_images`` (what one ``pneumoscan explain`` runs) on ``calls`` files; warm-up: on one."""
    from pneumoscan.explain import explain_images

    out = tempfile.mkdtemp(prefix="bench-explain-")
    warm = [True]

    def call(i: int) -> None:
        chosen = [files[0]] if warm[0] else [files[k % len(files)] for k in range(calls)]
        warm[0] = i < 4 and warm[0]
        assert len(explain_images(classifier, chosen, out).written) == len(chosen)

    return call


if __name__ == "__main__":
    raise SystemExit(main())
