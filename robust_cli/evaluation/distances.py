"""Perturbation sizes and adversarial distances (Finlay et al. §4.1; Matyasko thesis Ch.5 §5.4).

The adversarial distance of a test image is the size of the perturbation an attack found, measured on the
*re-verified* adversarial image: 0 where the clean image is already misclassified, ``inf`` where the attack
failed (the model still predicts the label on the clipped image).
"""

from __future__ import annotations

import torch

from robust_cli.attacks.geometry import batch_norm, changed_pixels
from robust_cli.norms import NORMS


def perturbation_norms(x_adv: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sizes of ``r = x_adv - x`` in every norm.

    Args:
        x_adv, x: ``[B, C, H, W]`` images in [0,1].

    Returns:
        ``{norm: [B] float32}`` for l0, l1, l2 and linf. l0 counts changed *pixels* (any channel), the
        papers' unit and that of the thesis's Ch.5 l0 thresholds (values and pixels coincide on one channel).
        Computed in float64 and cast back, so that a one-value change of 1/255 is not lost in a float32 sum.
    """
    r = (x_adv.double() - x.double())
    return {norm: (changed_pixels(r) if norm == "l0" and r.dim() == 4 else batch_norm(r, norm)).float()
            for norm in NORMS}


def adversarial_distance(size: torch.Tensor, clean_correct: torch.Tensor, success: torch.Tensor) -> torch.Tensor:
    """The adversarial distance ``[B]`` (Finlay et al. Def. 4.1).

    Args:
        size: ``[B]`` perturbation size in the attack's norm.
        clean_correct: ``[B]`` bool, the model predicts the label on the clean image.
        success: ``[B]`` bool, the model misclassifies the re-verified adversarial image.

    Returns:
        ``0`` where ``~clean_correct``, ``inf`` where ``clean_correct & ~success``, else ``size``.
    """
    inf = torch.full_like(size, float("inf"))
    dist = torch.where(success, size, inf)
    return torch.where(clean_correct, dist, torch.zeros_like(size))
