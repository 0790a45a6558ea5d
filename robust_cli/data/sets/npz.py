"""Your own arrays: ``dataset=npz dataset.path=<file.npz>`` holding ``x_train``, ``y_train``, ``x_test``,
``y_test`` (images uint8 in [0,255] or floats in [0,1], laid out ``[N,H,W]``, ``[N,H,W,C]`` or ``[N,C,H,W]``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robust_cli.data.sets import register_loader
from robust_cli.errors import UserError


@register_loader
def load(train: bool, *, root: str, download: bool, path: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(x_train, y_train)`` or ``(x_test, y_test)`` of the file ``dataset.path`` (labels as int64)."""
    if not path or path == "???":
        raise UserError("dataset=npz needs dataset.path=<file.npz> holding x_train, y_train, x_test, y_test")
    if not Path(path).is_file():
        raise UserError(f"dataset.path {path} does not exist")
    with np.load(path) as arrays:
        keys = ("x_train", "y_train") if train else ("x_test", "y_test")
        missing = [k for k in keys if k not in arrays]
        if missing:
            raise UserError(f"{path} lacks arrays {missing}; expected x_train, y_train, x_test, y_test")
        return arrays[keys[0]], arrays[keys[1]].astype(np.int64)
