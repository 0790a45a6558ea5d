"""Reading a torchvision data set's files (the one place that does): ``torchvision_loader`` makes the loader
of ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100`` and ``svhn``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from robust_cli.errors import UserError


def read_torchvision(cls_name: str, folder: str, *, root: str, train: bool, download: bool,
                     split_keyword: bool = False, labels_attr: str = "targets") -> tuple[np.ndarray, np.ndarray]:
    """The images and labels of ``torchvision.datasets.<cls_name>`` under ``root/<folder>``.

    Reads the files already there; downloads them only when they are missing and ``download`` is true.
    ``split_keyword``: the class takes ``split="train"|"test"`` (SVHN) instead of ``train=``;
    ``labels_attr``: the attribute holding the labels (``labels`` for SVHN).

    Returns:
        ``(x, y)``: the images as stored (uint8, ``[N,H,W]``, ``[N,H,W,C]`` or ``[N,C,H,W]``), int64 labels ``[N]``.
    """
    import torchvision

    cls = getattr(torchvision.datasets, cls_name)
    kwargs = {"split": "train" if train else "test"} if split_keyword else {"train": train}
    where = Path(root) / folder
    try:
        try:
            ds = cls(root=root, download=False, **kwargs)
        except RuntimeError:
            if not download:
                raise
            ds = cls(root=root, download=True, **kwargs)
    except Exception as err:  # torchvision raises RuntimeError offline, URLError/OSError on network failures
        raise UserError(
            f"{cls_name} not found in {where} and could not be downloaded ({type(err).__name__}); "
            f"put the {cls_name} files there (or set data.root / ROBUST_DATA to a folder that has them)"
        ) from None
    data = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else np.asarray(ds.data)
    return data, np.asarray(getattr(ds, labels_attr), dtype=np.int64)


def torchvision_loader(cls_name: str, folder: str, **options):
    """A loader (see ``robust_cli.data.sets``) reading ``torchvision.datasets.<cls_name>`` from ``data.root``.

    ``options``: ``split_keyword`` / ``labels_attr`` of :func:`read_torchvision`. Mark the result with
    ``register_loader`` in the data set's own module.
    """

    def load(train: bool, *, root: str, download: bool, path: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        return read_torchvision(cls_name, folder, root=root, train=train, download=download, **options)

    load.__doc__ = f"``torchvision.datasets.{cls_name}`` read from ``<data.root>/{folder}``."
    return load
