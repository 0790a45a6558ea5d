"""The ``device=`` option of every command: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""

from __future__ import annotations

from typing import Any

import torch

from robust_cli.errors import UserError


def check_device_name(name: str) -> None:
    """Refuse a ``device=`` that names no device (``tpu``) in one line; whether CUDA is there is left to
    ``resolve_device`` where the job runs (a SLURM sweep is submitted from a machine without GPUs)."""
    if name != "auto":
        try:
            torch.device(name)
        except RuntimeError:
            raise UserError(f"device={name!r} is not a device name (auto, cpu, cuda, cuda:N)") from None


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; anything else must be a valid, available device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device={name!r} is not a device name (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name} asked for but CUDA is not available here; use device=cpu or auto")
    return device


_LIBC: Any = None


def release_freed_host_memory() -> None:
    """Hand the host memory freed since the last call back to the operating system (glibc's
    ``malloc_trim(0)``; a no-op elsewhere).

    Per batch, an evaluation allocates and frees tens of MB of activations and gradients on the CPU. glibc
    raises its mmap threshold to the largest block freed, so such blocks then come from the heap, and the
    heap's free holes are not returned: the resident size crept up by ~7 KB per image evaluated (LeNet-5 on
    MNIST, batch 500: 1k vs 10k images +70-90 MB, BENCHMARKS.md "Eval scale"). One trim per batch keeps the
    peak flat in the number of images for about a millisecond a batch."""
    global _LIBC
    if _LIBC is None:
        import ctypes
        import ctypes.util

        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC = libc if hasattr(libc, "malloc_trim") else False
        except OSError:
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)
