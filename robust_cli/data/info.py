"""``DatasetInfo``: what a model needs to know about its data set."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetInfo:
    """Shape and statistics of a data set.

    Attributes:
        name: the config name (``mnist``, ``cifar10``, ...).
        in_shape: ``(C, H, W)`` of one image.
        num_classes: number of labels ``K``.
        mean, std: per-channel statistics the model normalises by (its first layer); inputs stay in [0,1].
    """

    name: str
    in_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
