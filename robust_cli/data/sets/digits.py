"""scikit-learn's bundled 8x8 handwritten digits (1797 images, values 0..16): offline, nothing to download.

The last ``TEST_SIZE`` images are the test set, the others the training set.
"""

from __future__ import annotations

import numpy as np

from robust_cli.data.sets import register_loader

TEST_SIZE = 297  # the last 297 of the 1797 digits


@register_loader
def load(train: bool, *, root: str, download: bool, path: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(x float32 [N, 8, 8] in [0,1], y int64 [N])``: 1500 training or 297 test digits."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)  # values 0..16
    y = bunch.target.astype(np.int64)
    cut = len(x) - TEST_SIZE
    return (x[:cut], y[:cut]) if train else (x[cut:], y[cut:])
