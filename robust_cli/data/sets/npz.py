"""Your own arrays: ``dataset=npz dataset.path=<file.npz>`` holding ``x_train``, ``y_train``, ``x_test``,
``y_test`` (images uint8 in [0,255] or floats in [0,1], laid out ``[N,H,W]``, ``[N,H,W,C]`` or ``[N,C,H,W]``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robust_cli.data.sets import register_loader
from robust_cli.errors import UserError


@register_loader
def load(train: bool, *, root: str, download: bool, path: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(x_train, y_train)`` or ``(x_test, y_test)`` of the file ``dataset.path`` (labels as int64).

    Each problem of the file is one line naming it: not an npz archive, an array missing, images that are
    not uint8/float or not 3-/4-dimensional, labels that are not integers or not one per image. The values
    (finite, in [0,1], labels below ``num_classes``) are checked by ``robust_cli.data.load_split``.
    """
    if not path or path == "???":
        raise UserError("dataset=npz needs dataset.path=<file.npz> holding x_train, y_train, x_test, y_test")
    if not Path(path).is_file():
        raise UserError(f"dataset.path {path} does not exist")
    try:
        arrays = np.load(path, allow_pickle=False)
    except Exception as err:  # numpy raises ValueError/OSError/BadZipFile/... for what is not an npz
        raise UserError(f"dataset.path {path} is not a readable .npz file ({type(err).__name__}: "
                        f"{' '.join(str(err).split())[:160]})") from None
    if not isinstance(arrays, np.lib.npyio.NpzFile):
        raise UserError(f"dataset.path {path} holds one array, not an .npz archive of x_train, y_train, x_test, "
                        "y_test (np.savez)")
    with arrays:
        keys = ("x_train", "y_train") if train else ("x_test", "y_test")
        missing = [k for k in keys if k not in arrays]
        if missing:
            raise UserError(f"{path} lacks arrays {missing}; expected x_train, y_train, x_test, y_test")
        try:
            x, y = arrays[keys[0]], arrays[keys[1]]
        except ValueError as err:  # object arrays need pickle, which is never allowed
            raise UserError(f"{path}: {' '.join(str(err).split())[:160]}; store numeric arrays") from None
    if not (x.dtype == np.uint8 or np.issubdtype(x.dtype, np.floating)):
        raise UserError(f"{path}: {keys[0]} has dtype {x.dtype}; expected uint8 in [0,255] or floats in [0,1]")
    if x.ndim not in (3, 4):
        raise UserError(f"{path}: {keys[0]} has shape {x.shape}; expected [N,H,W], [N,H,W,C] or [N,C,H,W]")
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_)):
        raise UserError(f"{path}: {keys[1]} has dtype {y.dtype}; expected integer class labels")
    if y.ndim != 1 or len(y) != len(x):
        raise UserError(f"{path}: {keys[1]} has shape {y.shape} for {len(x)} images in {keys[0]}; expected "
                        f"[{len(x)}], one label per image")
    return x, y.astype(np.int64)
