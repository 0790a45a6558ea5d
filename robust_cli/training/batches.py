"""Where the training loop's batches come from: the in-memory data set, on the device when it fits.

The data sets live in memory as tensors (robust_cli.data). On the CPU a batch is one gather ``x[idx]``
(the copy the augmentation needs anyway). On CUDA the default is to hold the whole split on the GPU when it
takes at most a quarter of the free memory (CIFAR-10's training set: 600 MB as float32), so a step copies
nothing from the host but its ``[B]`` indices and gathers and augments on the GPU. A split that does not fit
stays in pinned host memory; a batch is gathered into one of two pinned buffers and copied with
``non_blocking=True`` (the copy overlaps the previous step's kernels; a buffer is reused only after its copy
has completed, an event records that).

The augmentation draws its random numbers from the epoch's CPU generator whatever the device
(robust_cli.data.augment), so the batches, and a resumed run's, are the same on every placement.
"""

from __future__ import annotations

import torch

from robust_cli.data.augment import augment


def fits_on_device(nbytes: int, device: torch.device, fraction: float = 0.25) -> bool:
    """``nbytes`` is at most ``fraction`` of the free memory of the CUDA ``device`` (False on the CPU)."""
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= fraction * free


class Batches:
    """``x`` ``[N,C,H,W]`` float in [0,1], ``y`` ``[N]`` int64, served as augmented device batches.

    ``batch(idx, augment_cfg, generator)`` -> ``(x [B,C,H,W], y [B])`` on ``device`` (channels_last when
    asked). ``resident``: the split is held on the device.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, device: torch.device, *, channels_last: bool = False,
                 resident: bool | None = None):
        self.device = device
        self.channels_last = channels_last
        nbytes = x.numel() * x.element_size() + y.numel() * y.element_size()
        self.resident = fits_on_device(nbytes, device) if resident is None else bool(resident)
        self._buffers: list[tuple[torch.Tensor, torch.Tensor, torch.cuda.Event | None]] = []
        self._turn = 0
        if device.type == "cpu" or self.resident:
            self.x, self.y = x.to(device), y.to(device)
        else:
            self.x, self.y = x.pin_memory(), y.pin_memory()

    def _staged(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather ``x[idx]`` into a pinned buffer and start its copy to the device (CUDA, not resident)."""
        b = int(idx.numel())
        if len(self._buffers) < 2 or self._buffers[self._turn][0].shape[0] < b:
            bx = torch.empty((b, *self.x.shape[1:]), dtype=self.x.dtype, pin_memory=True)
            by = torch.empty((b,), dtype=self.y.dtype, pin_memory=True)
            entry = (bx, by, None)
            if len(self._buffers) < 2:
                self._buffers.append(entry)
                self._turn = len(self._buffers) - 1
            else:
                self._buffers[self._turn] = entry
        bx, by, done = self._buffers[self._turn]
        if done is not None:
            done.synchronize()  # the copy that last read this buffer has finished
        torch.index_select(self.x, 0, idx, out=bx[:b])
        torch.index_select(self.y, 0, idx, out=by[:b])
        xb, yb = bx[:b].to(self.device, non_blocking=True), by[:b].to(self.device, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._buffers[self._turn] = (bx, by, event)
        self._turn = (self._turn + 1) % 2
        return xb, yb

    def batch(self, idx: torch.Tensor, augment_cfg, generator: torch.Generator):
        if self.device.type == "cpu":
            xb, yb = self.x[idx], self.y[idx]
        elif self.resident:
            at = idx.to(self.device, non_blocking=True)
            xb, yb = self.x[at], self.y[at]
        else:
            xb, yb = self._staged(idx)
        xb = augment(xb, augment_cfg, generator)
        if self.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        return xb, yb


@torch.no_grad()
def count_wrong(model, x: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device,
                channels_last: bool) -> int:
    """Misclassified images of ``x`` ``[N,C,H,W]`` / ``y`` ``[N]`` (any placement), counted on the device with
    a single host sync at the end."""
    wrong = torch.zeros((), dtype=torch.int64, device=device)
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(device, non_blocking=True)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        wrong += (model(xb).argmax(1) != y[i:i + batch_size].to(device, non_blocking=True)).sum()
    return int(wrong)
