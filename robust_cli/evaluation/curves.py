"""Error curves and what is read off them (Finlay et al. Def. 4.1; thesis Ch.5; SPEC.md §2).

``err(eps) = P[distance <= eps]`` over the evaluated images: the empirical CDF of the adversarial distances
(0 for images misclassified clean, ``inf`` for failed attacks, which never count as errors).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# Robust-accuracy thresholds per norm (thesis Ch.5, SPEC.md §2). The MNIST l0 thresholds were lost in the
# text extraction, so MNIST-like data sets have none for l0.
_MNIST = {
    "linf": [0.2, 0.25, 0.3, 0.325, 0.35],
    "l2": [1.0, 1.5, 2.0, 2.5, 3.0],
    "l1": [2.5, 5.0, 7.5, 10.0, 12.5],
}
_CIFAR = {
    "linf": [2 / 255, 4 / 255, 6 / 255, 8 / 255, 10 / 255],
    "l2": [0.25, 0.5, 0.75, 1.0, 1.25],
    "l1": [5.0, 8.75, 12.5, 16.25, 20.0],
    "l0": [1.0, 3.0, 5.0, 8.0, 12.0],
}
# sklearn digits (1x8x8, no published thresholds): the MNIST set rescaled to 64 instead of 784 values, as if
# the images were MNIST downsampled: linf unchanged, l2 by sqrt(64/784), l1 by 64/784. Documented, not published.
_DIGITS = {
    "linf": list(_MNIST["linf"]),
    "l2": [round(t * math.sqrt(64 / 784), 4) for t in _MNIST["l2"]],
    "l1": [round(t * 64 / 784, 4) for t in _MNIST["l1"]],
}


def thresholds_for(dataset: str, in_shape: Sequence[int]) -> dict[str, list[float]]:
    """The five robust-accuracy thresholds per norm for a data set (possibly empty for a norm).

    MNIST and any other 1x28x28 data set (FashionMNIST, an npz of that shape) use the MNIST thresholds;
    CIFAR-10 and any other 3x32x32 data set (CIFAR-100, SVHN) the CIFAR-10 ones; ``digits`` the rescaled MNIST
    ones above; anything else none.
    """
    shape = tuple(int(s) for s in in_shape)
    if dataset == "digits":
        table = _DIGITS
    elif dataset == "mnist" or shape == (1, 28, 28):
        table = _MNIST
    elif dataset == "cifar10" or shape == (3, 32, 32):
        table = _CIFAR
    else:
        table = {}
    return {k: list(v) for k, v in table.items()}


def error_curve(distances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The empirical error curve as its step points.

    Args:
        distances: ``[N]`` adversarial distances in ``[0, inf]``.

    Returns:
        ``(eps, error)``, both ``[M]``: ``eps`` starts at 0 and then lists the distinct finite positive
        distances in increasing order; ``error[k] = P[distance <= eps[k]]``, non-decreasing, in [0,1].
        Between two points the curve is constant (a right-continuous step function).
    """
    d = np.asarray(distances, dtype=np.float64)
    n = max(len(d), 1)
    finite = np.sort(d[np.isfinite(d)])
    eps = np.unique(np.concatenate([[0.0], finite[finite > 0]]))
    error = np.searchsorted(finite, eps, side="right") / n
    return eps, error


def error_at(distances: np.ndarray, eps: float) -> float:
    """``err(eps) = P[distance <= eps]``."""
    d = np.asarray(distances, dtype=np.float64)
    return float((d <= eps).mean()) if len(d) else float("nan")


def median_distance(distances: np.ndarray) -> float:
    """The eps where the error curve reaches 50%: the smallest ``d`` with ``P[distance <= d] >= 1/2``.

    ``inf`` when the attack fails on half of the images or more.
    """
    d = np.sort(np.asarray(distances, dtype=np.float64))
    if not len(d):
        return float("nan")
    return float(d[math.ceil(0.5 * len(d)) - 1])


def worst_case(distance_columns: Sequence[np.ndarray]) -> np.ndarray:
    """Per image, the minimum distance over attacks (SPEC.md §2): the honest summary of a sweep. ``[N]``."""
    return np.min(np.stack([np.asarray(c, dtype=np.float64) for c in distance_columns]), axis=0)
