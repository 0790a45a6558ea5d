"""Atomic file writes: every file a crash could tear is written to a temporary file and renamed.

A rename within one directory is atomic on POSIX, so a reader sees either the old file or the new one,
never half of either, and an interrupted run never destroys what was already on disk.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


# the process umask, read once (os.umask can only be read by setting it): mkstemp creates files 0600, and the
# final files get the mode a plain open() would have given them
_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """``write(tmp)`` to a temporary file beside ``path``, flush it to disk, give it the umask's mode, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the data is on disk before the rename makes it the file
        finally:
            os.close(fd)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""

    def _write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return _atomic(path, _write)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (non-finite floats are written as Infinity/NaN)."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def save_figure(path: str | os.PathLike, figure, **kwargs: Any) -> Path:
    """``figure.savefig`` atomically (the format from ``path``'s suffix)."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    return _atomic(path, lambda tmp: figure.savefig(tmp, format=fmt, **kwargs))


def write_csv(path: str | os.PathLike, frame) -> Path:
    """Write a pandas DataFrame as CSV (no index) atomically."""
    return _atomic(path, lambda tmp: frame.to_csv(tmp, index=False))


def torch_save(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save`` atomically. ``obj`` must hold tensors and plain Python only (weights_only loading)."""
    import torch

    return _atomic(path, lambda tmp: torch.save(obj, tmp))


def torch_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True``: a checkpoint from elsewhere cannot run code."""
    import torch

    return torch.load(path, map_location=map_location, weights_only=True)


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file written by ``write_json``."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block: concurrent jobs of a
    sweep (processes, possibly on other nodes of a shared file system) update a merged file one at a time."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
