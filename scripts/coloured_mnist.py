"""Coloured MNIST: the real MNIST with each digit drawn in a random colour over a random dark background.

A three-channel data set built offline from the bundled MNIST, for what needs colour images (a pixel of three
values): PDPGD's pixel-group l0 step (BENCHMARKS.md, issue 16, session 14). Per image, the digit's colour has
each channel uniform in [0.25, 1] and the background each channel uniform in [0, 0.3]; a value is
``ink * colour + (1 - ink) * background``, rounded to uint8, laid out ``[N, 3, 28, 28]``. Labels are MNIST's.

Usage: ``python scripts/coloured_mnist.py --data ../shared/data --out cmnist.npz [--seed 0]``, then
``robust train dataset=npz dataset.path=cmnist.npz dataset.in_shape=[3,28,28] model=lenet5 ...``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def colour(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``ink`` ``[N, H, W]`` in [0, 1] -> ``[N, 3, H, W]`` uint8: a random digit colour over a random background."""
    n = len(ink)
    fg = rng.uniform(0.25, 1.0, (n, 3, 1, 1)).astype(np.float32)
    bg = rng.uniform(0.0, 0.3, (n, 3, 1, 1)).astype(np.float32)
    img = ink[:, None] * fg + (1 - ink[:, None]) * bg
    return (img * 255).round().astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data",
                    help="torchvision MNIST root (holding MNIST/raw)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import torchvision

    rng = np.random.default_rng(args.seed)
    arrays = {}
    for split, train in (("train", True), ("test", False)):
        ds = torchvision.datasets.MNIST(str(args.data), train=train, download=False)
        arrays[f"x_{split}"] = colour(ds.data.numpy().astype(np.float32) / 255, rng)
        arrays[f"y_{split}"] = ds.targets.numpy().astype(np.int64)
    np.savez(args.out, **arrays)
    print(f"{args.out}: " + ", ".join(f"{k} {v.shape}" for k, v in arrays.items()))


if __name__ == "__main__":
    main()
