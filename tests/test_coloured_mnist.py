"""``scripts/coloured_mnist.py``: the three-channel MNIST of the colour benchmarks is what ``dataset=npz`` reads."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from coloured_mnist import colour  # noqa: E402

from robust_cli.data.sets.npz import load  # noqa: E402


def test_colour_draws_each_digit_in_its_own_colour_over_a_dark_background(tmp_path):
    rng = np.random.default_rng(0)
    ink = np.zeros((6, 4, 4), dtype=np.float32)
    ink[:, 1:3, 1:3] = 1.0  # a 2x2 stroke on each image
    img = colour(ink, rng)
    assert img.shape == (6, 3, 4, 4) and img.dtype == np.uint8
    stroke, ground = img[:, :, 1, 1].astype(int), img[:, :, 0, 0].astype(int)
    assert (stroke >= round(0.25 * 255)).all() and (ground <= round(0.3 * 255)).all()
    assert len({tuple(c) for c in stroke}) == 6  # every image its own colour
    assert (stroke.max(1) - stroke.min(1) > 0).all()  # and the channels differ: a pixel is three values
    np.savez(tmp_path / "c.npz", x_train=img, y_train=np.arange(6), x_test=img, y_test=np.arange(6))
    x, y = load(False, root="", download=False, path=str(tmp_path / "c.npz"))
    assert np.array_equal(x, img) and np.array_equal(y, np.arange(6))
