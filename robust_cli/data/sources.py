"""Reading a data set through its registered loader (``robust_cli.data.sets``) into tensors, with the
validation split.

``load_split`` returns float32 images ``[N, C, H, W]`` in [0,1] and int64 labels ``[N]``. The validation
split is the *last* ``val_size`` images of the training set (the thesis: 50k/10k on MNIST), so it is the
same for every seed and never seen in training.
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
import torch

from robust_cli.data.sets import loader_of, loaders
from robust_cli.errors import UserError

SPLITS = ("train", "val", "test")


def _to_nchw_float(x: np.ndarray, in_shape: tuple[int, int, int], source: str = "the data set") -> torch.Tensor:
    """uint8 [0,255] or float [0,1] arrays laid out NHW, NHWC or NCHW -> float32 NCHW in [0,1]; ``source``
    names the data in the one-line refusals (shape, NaN/inf, range)."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    t = t.float().div_(255) if t.dtype == torch.uint8 else t.float()
    c, h, w = in_shape
    if t.dim() == 3:
        t = t.unsqueeze(1)
    elif t.dim() == 4 and t.shape[-1] == c and t.shape[1] != c:
        t = t.permute(0, 3, 1, 2)
    if tuple(t.shape[1:]) != (c, h, w):
        raise UserError(f"{source}: images have shape {tuple(t.shape[1:])} but dataset.in_shape is {[c, h, w]}")
    if t.numel() and not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).flatten(1).any(1).sum())
        raise UserError(f"{source}: {bad} images hold NaN or inf values; images must be finite, in [0,1]")
    if t.numel() and (t.min() < 0 or t.max() > 1):
        raise UserError(f"{source}: image values lie in [{t.min().item():.4g}, {t.max().item():.4g}]; they must be "
                        "uint8 in [0,255] or floats in [0,1]")
    return t.contiguous()


@lru_cache(maxsize=8)
def _load(loader: str, root: str, train: bool, download: bool, path: str | None, in_shape: tuple[int, int, int]):
    x, y = loaders()[loader](train, root=root, download=download, path=path)
    source = f"{path or loader.rsplit('.', 2)[-2]} ({'x_train' if train else 'x_test'})" if path else \
        f"the {'training' if train else 'test'} images of {loader.rsplit('.', 2)[-2]}"
    if len(x) != len(y):
        raise UserError(f"{source}: {len(x)} images but {len(y)} labels")
    if len(x) == 0:
        raise UserError(f"{source}: no images")
    return _to_nchw_float(x, in_shape, source), torch.as_tensor(y, dtype=torch.int64)


def absolute_data_root(cfg) -> None:
    """Rewrite, in place, ``cfg.data.root`` (a relative path, ``~``, ``$ROBUST_DATA``'s value) and
    ``cfg.dataset.path`` to absolute paths, where a config enters the program
    (``robust_cli.apps.user_errors``): a run stores the folder it read, so ``robust eval`` finds it again
    from any working directory. A null root is left null."""
    from omegaconf import OmegaConf

    for key in ("data.root", "dataset.path"):  # dataset.path: the npz file, likewise
        value = OmegaConf.select(cfg, key, default=None)  # absent, null or ??? (npz without a path): left
        if isinstance(value, str):
            OmegaConf.update(cfg, key, os.path.abspath(os.path.expanduser(value)))


def with_root(data_cfg, root: str | None):
    """``data_cfg`` (a run's stored ``data``, possibly ``{}``) with ``root`` replaced where ``root`` is given
    (``robust eval data.root=<dir>`` or ``$ROBUST_DATA``); a copy, ``data_cfg`` is left as it is."""
    from omegaconf import DictConfig, OmegaConf

    own = OmegaConf.to_container(data_cfg, resolve=True) if isinstance(data_cfg, DictConfig) else dict(data_cfg or {})
    return OmegaConf.create({**own, **({"root": str(root)} if root is not None else {})})


def load_split(dataset_cfg, data_cfg, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One split of a data set.

    Args:
        dataset_cfg: a ``dataset`` config node (name, loader, in_shape, num_classes, val_size, path); one
            without ``loader`` (written before the registry) uses the registry entry of its ``name``.
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
    loader, _ = loader_of(dataset_cfg)
    x, y = _load(loader, root, split != "test", bool(data_cfg.download), path, in_shape)
    if int(y.max()) >= int(dataset_cfg.num_classes) or int(y.min()) < 0:
        where = f"{path}: " if path else ""
        raise UserError(f"{where}{'test' if split == 'test' else 'training'} labels lie in [{int(y.min())}, "
                        f"{int(y.max())}]; they must lie in [0, {int(dataset_cfg.num_classes) - 1}] "
                        f"(dataset.num_classes={int(dataset_cfg.num_classes)})")
    if split == "test":
        return x, y
    val_size = int(dataset_cfg.val_size)
    if not 0 <= val_size < len(x):
        raise UserError(f"dataset.val_size={val_size} must lie in [0, {len(x) - 1}]")
    cut = len(x) - val_size
    return (x[:cut], y[:cut]) if split == "train" else (x[cut:], y[cut:])
