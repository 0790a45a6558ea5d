"""Data sets as in-memory tensors: images ``[N, C, H, W]`` in [0,1] (float32) and labels ``[N]`` (int64).

Every data set here fits in memory (CIFAR's 50,000 training images are 600 MB as floats, 150 MB as the
uint8 they are stored in), so the training loop batches tensors directly instead of going through a
per-image ``Dataset``: augmentation is applied to whole batches (robust_cli/data/augment.py).

Each data set is a loader module in ``robust_cli/data/sets/`` and a YAML file in ``conf/dataset/`` (the
registry, with the robust-accuracy thresholds: ``robust_cli.data.sets``).

Public functions:
    info_of(dataset_cfg) -> DatasetInfo
    load_split(dataset_cfg, data_cfg, split) -> (x, y)      split in {"train", "val", "test"}
    thresholds_of(dataset_cfg, overrides) -> {norm: [float]}   (from robust_cli.data.sets)
    absolute_data_root(cfg)                  cfg.data.root made absolute, in place (where a config enters)
    with_root(data_cfg, root) -> data config     a run's stored data config with root replaced (robust eval)
"""

from __future__ import annotations

from robust_cli.data.info import DatasetInfo
from robust_cli.data.sets import thresholds_of
from robust_cli.data.sources import absolute_data_root, load_split, with_root

__all__ = ["DatasetInfo", "absolute_data_root", "info_of", "load_split", "thresholds_of", "with_root"]


def info_of(dataset_cfg) -> DatasetInfo:
    """The ``DatasetInfo`` (shape, classes, mean/std) described by a ``dataset`` config node."""
    return DatasetInfo(
        name=str(dataset_cfg.name),
        in_shape=tuple(int(v) for v in dataset_cfg.in_shape),
        num_classes=int(dataset_cfg.num_classes),
        mean=tuple(float(v) for v in dataset_cfg.mean),
        std=tuple(float(v) for v in dataset_cfg.std),
    )
