"""Batched training augmentation (Finlay et al. App. A): random crop with zero padding, horizontal flip, cutout
(DeVries & Taylor, 2017).

All three act on a whole batch ``[B, C, H, W]`` at once with a caller-supplied ``torch.Generator``, so an
epoch's augmentation is reproducible from its seed (which makes resumed runs bit-identical).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``padding`` and crop back to ``H x W`` at a random offset per image."""
    if padding <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # [B, H, 1]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # [B, 1, W]
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def cutout(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Zero a ``size x size`` square centred at a random pixel of each image (clipped at the borders)."""
    if size <= 0:
        return x
    b, _, h, w = x.shape
    cy = torch.randint(0, h, (b,), generator=generator).to(x.device)
    cx = torch.randint(0, w, (b,), generator=generator).to(x.device)
    ys = torch.arange(h, device=x.device)[None, :]
    xs = torch.arange(w, device=x.device)[None, :]
    in_y = ((ys - cy[:, None]).abs() * 2 < size) | ((ys - cy[:, None]) * 2 == -size)
    in_x = ((xs - cx[:, None]).abs() * 2 < size) | ((xs - cx[:, None]) * 2 == -size)
    mask = in_y[:, :, None] & in_x[:, None, :]  # [B, H, W]
    return x.masked_fill(mask[:, None], 0.0)


def augment(x: torch.Tensor, cfg, generator: torch.Generator) -> torch.Tensor:
    """Apply the configured augmentations (``dataset.augment``) to a training batch."""
    x = random_crop(x, int(cfg.crop_padding), generator)
    if cfg.flip:
        x = random_flip(x, generator)
    return cutout(x, int(cfg.cutout), generator)
