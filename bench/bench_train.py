"""Training speed on this machine: images/s, peak memory, and where a step's time goes.

For each model x input size x memory format it times, on synthetic uint8 batches: the loader (indexing
the in-RAM cache and collating), uint8 -> float + kornia augmentation, the forward pass, and the
backward pass + optimiser step. Prints one table; never run by pytest.

    .venv/bin/python bench/bench_train.py                      # default recipe and the alternatives
    .venv/bin/python bench/bench_train.py --quick              # a few seconds, to check it works
    .venv/bin/python bench/bench_train.py --models mini-resnet resnet18 --sizes 96 128 160
"""

from __future__ import annotations

import argparse
import os
import resource
import time

# As `pneumoscan train` does, before torch loads OpenMP (spinning threads collapse on a shared CPU).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from pneumoscan.models import build_model  # noqa: E402
from pneumoscan.training.config import TrainConfig  # noqa: E402
from pneumoscan.training.data import UInt8Images  # noqa: E402
from pneumoscan.training.module import build_augmentation  # noqa: E402


def measure(name: str, size: int, channels_last: bool, batch: int, steps: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_model(name, size)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    augment = build_augmentation(TrainConfig(image_size=size))
    rng = np.random.default_rng(0)
    dataset = UInt8Images(rng.integers(0, 255, (batch * 4, size, size), dtype=np.uint8),
                          rng.integers(0, 2, batch * 4).astype(np.float32))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True)
    times = {"data": 0.0, "augment": 0.0, "forward": 0.0, "backward": 0.0}
    model.train()
    for step in range(steps + 2):  # two warm-up steps (oneDNN picks its kernels on the first calls)
        t0 = time.perf_counter()
        images, labels = next(iter(loader))
        t1 = time.perf_counter()
        x = images.float().div_(255.0)
        with torch.no_grad():
            x = augment(x).clamp_(0, 1)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        t2 = time.perf_counter()
        loss = F.binary_cross_entropy_with_logits(model(x).reshape(-1), labels)
        t3 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        t4 = time.perf_counter()
        if step >= 2:
            for key, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                times[key] += dt
    total = sum(times.values())
    return {"img_s": batch * steps / total, **{k: 100 * v / total for k, v in times.items()},
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mini-resnet", "seed-cnn", "resnet18", "efficientnet-b0",
                                                         "densenet121"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[96, 128, 160])
    parser.add_argument("--big-sizes", nargs="+", type=int, default=[128],
                        help="sizes for the large MONAI networks (minutes per configuration on 2 cores)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--quick", action="store_true", help="mini-resnet at 64 px, 2 steps")
    args = parser.parse_args()
    if args.quick:
        args.models, args.sizes, args.steps, args.batch = ["mini-resnet"], [64], 2, 16
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, {args.steps} timed steps; "
          "load average at start: " + " ".join(f"{x:.1f}" for x in os.getloadavg()))
    print(f"{'model':16s} {'size':>4s} {'format':>13s} {'img/s':>7s} {'data%':>6s} {'augm%':>6s} "
          f"{'fwd%':>5s} {'bwd%':>5s} {'params':>7s} {'peak RSS*':>9s}")
    for name in args.models:
        small = name in ("mini-resnet", "seed-cnn")
        for size in args.sizes if small else args.big_sizes:
            # a large network is seconds per step on 2 cores: fewer steps
            steps = args.steps if small else max(1, args.steps // 3)
            for channels_last in (False, True):
                r = measure(name, size, channels_last, args.batch, steps)
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                fmt = "channels_last" if channels_last else "contiguous"
                print(f"{name:16s} {size:4d} {fmt:>13s} {r['img_s']:7.1f} {r['data']:6.1f} {r['augment']:6.1f} "
                      f"{r['forward']:5.1f} {r['backward']:5.1f} {r['params_m']:6.2f}M {peak:7.0f}MB", flush=True)
    print("* peak resident memory of this process so far (it only grows: run one model per call to isolate it)")


if __name__ == "__main__":
    main()
