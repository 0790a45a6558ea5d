"""Reading a torchvision data set's files (the one place that does): ``torchvision_loader`` makes the loader
of ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100`` and ``svhn``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
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
            with _no_leftovers(where):
                ds = cls(root=root, download=True, **kwargs)
    except Exception as err:  # torchvision raises RuntimeError offline, URLError/OSError on network failures
        raise UserError(
            f"{cls_name} not found in {where} and could not be downloaded ({type(err).__name__}); "
            f"put the {cls_name} files there (or set data.root / ROBUST_DATA to a folder that has them)"
        ) from None
    data = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else np.asarray(ds.data)
    return data, np.asarray(getattr(ds, labels_attr), dtype=np.int64)


@contextlib.contextmanager
def _no_leftovers(where: Path) -> Iterator[None]:
    """On failure, remove the empty folders a download into ``where`` (``<root>/<folder>``) created
    (torchvision makes ``root`` and ``<root>/MNIST/raw`` before it fails offline): only empty ones that did
    not exist before, so nothing that was there and no file is ever removed."""
    where = Path(os.path.abspath(where))
    top = next((p for p in [*reversed(where.parents), where] if not p.exists()), None)
    before = {Path(d) for d, _, _ in os.walk(where)} if where.is_dir() else set()
    try:
        yield
    except BaseException:
        candidates = [Path(d) for d, _, _ in os.walk(where, topdown=False)] if where.is_dir() else []
        if top is not None:  # where and the folders above it that the attempt created
            candidates += [p for p in where.parents if p == top or top in p.parents]
        for folder in sorted(set(candidates) - before, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):  # not empty (or gone): left as it is
                folder.rmdir()
        raise


def torchvision_loader(cls_name: str, folder: str, **options):
    """A loader (see ``robust_cli.data.sets``) reading ``torchvision.datasets.<cls_name>`` from ``data.root``.

    ``options``: ``split_keyword`` / ``labels_attr`` of :func:`read_torchvision`. Mark the result with
    ``register_loader`` in the data set's own module.
    """

    def load(train: bool, *, root: str, download: bool, path: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        return read_torchvision(cls_name, folder, root=root, train=train, download=download, **options)

    load.__doc__ = f"``torchvision.datasets.{cls_name}`` read from ``<data.root>/{folder}``."
    return load
