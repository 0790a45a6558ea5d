"""Minimal-norm attacks run in low precision (``precision=bf16|fp16``), finished in fp32.

A minimal-norm attack stops just past the decision boundary *of the model it queries*. Under bf16/fp16
autocast that boundary is the low-precision model's, a relative ~1e-2 (bf16) / ~1e-3 (fp16) away in logit
space from the fp32 one, so a fraction of its images land on the fp32 model's correct side and the fp32
verification rightly rejects them. ``cross_in_fp32`` moves those images over the fp32 boundary along the
attack's own perturbation: per image, the smallest factor ``s`` of a short ladder (1.01 ... 1.5) for which
``clip(x + s (x_adv - x))`` is misclassified by the fp32 model. Every image it returns is still verified by
the evaluation in fp32 like any other, and its distance is measured from it (at most ``s`` times the
attack's). An image no factor carries over is attacked again in fp32 by the runner (an attack that stalls
in low precision, e.g. a perturbation below the bf16 resolution of the input, ~2^-8 of a pixel value).
"""

from __future__ import annotations

import torch
from torch import nn

FACTORS = (1.01, 1.02, 1.05, 1.1, 1.25, 1.5)


@torch.no_grad()
def cross_in_fp32(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor,
                  factors: tuple[float, ...] = FACTORS) -> tuple[torch.Tensor, int]:
    """``(images [B,C,H,W], forward samples spent)``: ``x_adv`` with the rows the fp32 ``model`` does not
    misclassify extended along ``x_adv - x`` (``x``, ``x_adv`` ``[B,C,H,W]`` in [0,1]; ``y`` ``[B]``)."""
    from robust_cli.evaluation.runner import predict

    out = x_adv.clone()
    delta = x_adv - x
    pending = (predict(model, out) == y) & (delta.flatten(1).abs().amax(1) > 0)
    spent = int(x.shape[0])
    for factor in factors:
        rows = pending.nonzero().squeeze(1)
        if rows.numel() == 0:
            break
        candidate = (x[rows] + factor * delta[rows]).clamp(0, 1)
        crossed = predict(model, candidate) != y[rows]
        spent += int(rows.numel())
        out[rows[crossed]] = candidate[crossed]
        pending[rows[crossed]] = False
    return out, spent
