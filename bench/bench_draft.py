"""Is JPEG's reduced-scale decoding (Pillow's ``draft``) exact enough to score full-size radiographs?

    .venv/bin/python bench/bench_draft.py                    # the bundled model, the 150 originals
    .venv/bin/python bench/bench_draft.py --model runs/latest --factor 4

Each original is decoded twice: in full (the project's decoder, ``read_image``) and at the smallest JPEG
scale (1/2, 1/4, 1/8) that keeps it at least ``--factor`` times the size the model's resize makes of it,
then made grey and resized the same way (``read_pixels``). Both are scored by the same model; the script
prints how far the probabilities move, how many labels change, and the decoding CPU time of each. The
bar for using ``draft``: every probability within 0.02 and no label changed.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

BOUND = 0.02


def main() -> None:
    shared = Path(os.environ.get("PNEUMOSCAN_TEST_DATA") or REPO.parent / "shared" / "data")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="any MODEL pneumoscan.load accepts (default: the bundled one)")
    parser.add_argument("--data", type=Path, default=shared / "chest_xray_originals")
    parser.add_argument("--factor", type=int, default=2, help="the drafted image stays at least this many times "
                                                             "the resized size, side by side")
    args = parser.parse_args()

    import pneumoscan
    from pneumoscan.data.image import fit_geometry, read_image, read_pixels

    model = pneumoscan.load(args.model)
    size, fit = model.image_size, model.meta.fit
    files = sorted(args.data.glob("*/*.jpeg"))
    if not files:
        sys.exit(f"bench_draft: no JPEGs in {args.data}/*/; pass --data")
    blobs = [f.read_bytes() for f in files]

    started = time.process_time()
    full = np.stack([read_image(data, size, fit) for data in blobs])
    full_cpu = time.process_time() - started
    started = time.process_time()
    drafted = []
    for data in blobs:
        image = Image.open(io.BytesIO(data))
        new_w, new_h = fit_geometry(image.width, image.height, size, fit)[:2]
        image.draft(image.mode, (args.factor * new_w, args.factor * new_h))
        drafted.append(read_pixels(image, size, fit))
    draft_cpu = time.process_time() - started

    p_full, p_draft = model.predict_proba(full), model.predict_proba(np.stack(drafted))
    moved = np.abs(p_draft - p_full)
    labels = int(np.sum((p_full >= model.threshold) != (p_draft >= model.threshold)))
    print(f"{model.meta.name} at {size} px ({fit}), {len(files)} originals, draft down to {args.factor}x the resized size")
    print(f"probability moved: max {moved.max():.4f}, mean {moved.mean():.4f}, 99th percentile "
          f"{np.percentile(moved, 99):.4f}; labels changed: {labels}")
    print(f"decoding CPU: full {1000 * full_cpu / len(files):.2f} ms/image, draft {1000 * draft_cpu / len(files):.2f} ms/image")
    exact = moved.max() <= BOUND and labels == 0
    print(f"exact enough (every probability within {BOUND:g}, no label changed): {'yes' if exact else 'NO'}")


if __name__ == "__main__":
    main()
