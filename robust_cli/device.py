"""The ``device=`` option of every command: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""

from __future__ import annotations

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
