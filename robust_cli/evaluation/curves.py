"""Error curves and what is read off them (Finlay et al. Def. 4.1; Matyasko's thesis §5.4).

``err(eps) = P[distance <= eps]`` over the evaluated images: the empirical CDF of the adversarial distances
(0 for images misclassified clean, ``inf`` for failed attacks, which never count as errors). The
robust-accuracy thresholds, ``1 - err(eps)`` at a few eps per norm, are data-set configs:
``robust_cli.data.sets.thresholds_of``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


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
    """Per image, the minimum distance over attacks (the strongest attack on each image): the honest summary
    of a sweep. ``[N]``."""
    return np.min(np.stack([np.asarray(c, dtype=np.float64) for c in distance_columns]), axis=0)
