"""Reading each data set from disk (or scikit-learn) into tensors, with the validation split.

``load_split`` returns float32 images ``[N, C, H, W]`` in [0,1] and int64 labels ``[N]``. The validation
split is the *last* ``val_size`` images of the training set (the thesis: 50k/10k on MNIST), so it is the
same for every seed and never seen in training.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from robust_cli.errors import UserError

SPLITS = ("train", "val", "test")

# torchvision class and the folder it reads under data.root, per data set
_TORCHVISION = {
    "mnist": ("MNIST", "MNIST"),
    "fashion_mnist": ("FashionMNIST", "FashionMNIST"),
    "cifar10": ("CIFAR10", "cifar-10-batches-py"),
    "cifar100": ("CIFAR100", "cifar-100-python"),
    "svhn": ("SVHN", "svhn"),
}
DIGITS_TEST_SIZE = 297  # the last 297 of scikit-learn's 1797 digits are the test set


def _to_nchw_float(x: np.ndarray, in_shape: tuple[int, int, int]) -> torch.Tensor:
    """uint8 [0,255] or float [0,1] arrays laid out NHW, NHWC or NCHW -> float32 NCHW in [0,1]."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    t = t.float().div_(255) if t.dtype == torch.uint8 else t.float()
    c, h, w = in_shape
    if t.dim() == 3:
        t = t.unsqueeze(1)
    elif t.dim() == 4 and t.shape[-1] == c and t.shape[1] != c:
        t = t.permute(0, 3, 1, 2)
    if tuple(t.shape[1:]) != (c, h, w):
        raise UserError(f"images have shape {tuple(t.shape[1:])} but dataset.in_shape is {[c, h, w]}")
    if t.numel() and (t.min() < 0 or t.max() > 1):
        raise UserError("image values must be uint8 in [0,255] or floats in [0,1]")
    return t.contiguous()


def _digits(train: bool) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)  # values 0..16
    y = bunch.target.astype(np.int64)
    cut = len(x) - DIGITS_TEST_SIZE
    return (x[:cut], y[:cut]) if train else (x[cut:], y[cut:])


def _npz(path: str | None, train: bool) -> tuple[np.ndarray, np.ndarray]:
    if not path:
        raise UserError("dataset=npz needs dataset.path=<file.npz> holding x_train, y_train, x_test, y_test")
    if not Path(path).is_file():
        raise UserError(f"dataset.path {path} does not exist")
    with np.load(path) as arrays:
        keys = ("x_train", "y_train") if train else ("x_test", "y_test")
        missing = [k for k in keys if k not in arrays]
        if missing:
            raise UserError(f"{path} lacks arrays {missing}; expected x_train, y_train, x_test, y_test")
        return arrays[keys[0]], arrays[keys[1]].astype(np.int64)


def _torchvision(name: str, root: str, train: bool, download: bool) -> tuple[np.ndarray, np.ndarray]:
    import torchvision

    cls_name, folder = _TORCHVISION[name]
    cls = getattr(torchvision.datasets, cls_name)
    kwargs = {"split": "train" if train else "test"} if name == "svhn" else {"train": train}
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
            f"{name} not found in {where} and could not be downloaded ({type(err).__name__}); "
            f"put the {cls_name} files there (or set data.root / ROBUST_DATA to a folder that has them)"
        ) from None
    data = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else np.asarray(ds.data)
    targets = ds.labels if name == "svhn" else ds.targets
    return data, np.asarray(targets, dtype=np.int64)


@lru_cache(maxsize=8)
def _load(name: str, root: str, train: bool, download: bool, path: str | None, in_shape: tuple[int, int, int]):
    if name == "digits":
        x, y = _digits(train)
    elif name == "npz":
        x, y = _npz(path, train)
    elif name in _TORCHVISION:
        x, y = _torchvision(name, root, train, download)
    else:
        known = ", ".join(["digits", "npz", *_TORCHVISION])
        raise UserError(f"unknown dataset {name!r}; known: {known}")
    return _to_nchw_float(x, in_shape), torch.as_tensor(y, dtype=torch.int64)


def load_split(dataset_cfg, data_cfg, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One split of a data set.

    Args:
        dataset_cfg: a ``dataset`` config node (name, in_shape, val_size, path).
        data_cfg: the ``data`` config node (root, download).
        split: ``train`` (minus the validation images), ``val`` (the last ``val_size`` training images)
            or ``test``.

    Returns:
        x float32 ``[N, C, H, W]`` in [0,1], y int64 ``[N]`` (shared, cached tensors: do not modify).
    """
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; expected one of {SPLITS}")
    root = os.path.expanduser(str(data_cfg.root))
    in_shape = tuple(int(v) for v in dataset_cfg.in_shape)
    path = dataset_cfg.get("path") if hasattr(dataset_cfg, "get") else getattr(dataset_cfg, "path", None)
    x, y = _load(str(dataset_cfg.name), root, split != "test", bool(data_cfg.download), path, in_shape)
    if int(y.max()) >= int(dataset_cfg.num_classes) or int(y.min()) < 0:
        raise UserError(f"labels must lie in [0, {int(dataset_cfg.num_classes) - 1}] (dataset.num_classes)")
    if split == "test":
        return x, y
    val_size = int(dataset_cfg.val_size)
    if not 0 <= val_size < len(x):
        raise UserError(f"dataset.val_size={val_size} must lie in [0, {len(x) - 1}]")
    cut = len(x) - val_size
    return (x[:cut], y[:cut]) if split == "train" else (x[cut:], y[cut:])
