"""``margin``: deep margin maximisation (Matyasko, "Towards deep neural networks robust to
adversarial examples", thesis Ch.3 §3.4, eq 3.18).

Per sample ``i`` with label ``y``::

    hinge_i = max_{j != y} (1 + f_j(x_i) - f_y(x_i))_+
    eps_i   = max_{j != y} || grad_x f_y(x_i) - grad_x f_j(x_i) ||      (margin sensitivity, l2 or l1)
    loss    = mean_i (hinge_i + C * eps_i)

(eq 3.18 writes the sum over the batch; the mean is that sum / B: the same minimiser, and a learning rate
that does not depend on the batch size.) ``eps_i`` is differentiated through by double backprop: the ``K``
input gradients ``grad_x f_k`` are built with ``create_graph=True`` (one batched vector-Jacobian product,
``K`` rows), so the loop's ``loss.backward()`` reaches the weights through them. The l1 sensitivity bounds
the l_inf margin, the l2 one the l2 margin (thesis eq 3.13). With BatchNorm in train mode the "per-sample"
gradients also carry the batch-statistics terms of the other samples, as every double-backprop method does.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from robust_cli.attacks.geometry import batch_norm
from robust_cli.defenses.base import DefenseOutput, check_choice, to_floats
from robust_cli.norms import check_norm
from robust_cli.schema import schema_of

log = logging.getLogger(__name__)


def logit_input_gradients(logits: torch.Tensor, x: torch.Tensor, batched: bool = True) -> torch.Tensor:
    """``G[i, k] = grad_{x_i} f_k(x_i)`` as ``[B, K, d]``, differentiable (``create_graph``).

    ``logits`` ``[B, K]`` must come from ``x`` ``[B, ...]`` (``requires_grad``). Each sample's gradient is its own
    because the samples of a batch do not interact (BatchNorm in train mode aside).
    """
    b, k = logits.shape
    if batched:
        eye = torch.eye(k, device=logits.device, dtype=logits.dtype)
        seeds = eye[:, None, :].expand(k, b, k).contiguous()  # seed k: d/dx of sum_i f_k(x_i)
        try:
            (g,) = torch.autograd.grad(logits, x, grad_outputs=seeds, is_grads_batched=True, create_graph=True)
            # vmap over a custom autograd.Function without a vmap rule (LeNet-5's InputGradConv2d on CPU) returns
            # the right values but *no graph*: the penalty would then train nothing, so loop instead
            if g.requires_grad or not logits.requires_grad:
                return g.flatten(2).transpose(0, 1)
            log.debug("batched logit gradients came back without a graph; looping over the %d classes", k)
        except RuntimeError as err:  # an op without a batching rule: fall back to the loop
            log.debug("batched logit gradients failed (%s); looping over the %d classes", err, k)
    rows = [torch.autograd.grad(logits[:, c].sum(), x, create_graph=True, retain_graph=True)[0].flatten(1)
            for c in range(k)]
    return torch.stack(rows, dim=1)


def margin_terms(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor, norm: str,
                 batched: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hinge [B], sensitivity [B])`` of eq 3.18 for logits ``[B, K]`` computed from ``x``."""
    other = F.one_hot(y, logits.shape[1]).bool()
    f_y = logits.gather(1, y[:, None]).squeeze(1)
    hinge = (1.0 + logits.masked_fill(other, float("-inf")).amax(dim=1) - f_y).clamp_min(0.0)
    g = logit_input_gradients(logits, x, batched)  # [B, K, d]
    g_y = g.gather(1, y[:, None, None].expand(-1, 1, g.shape[2]))  # [B, 1, d]
    diff = g_y - g  # [B, K, d]; the j = y row is zero and masked below
    sens = batch_norm(diff.flatten(0, 1), norm).view(logits.shape)
    sens = sens.masked_fill(other, float("-inf")).amax(dim=1)
    return hinge, sens


class Margin:
    """Multiclass hinge + ``C`` * margin sensitivity. Stats ``hinge``, ``penalty`` (mean sensitivity,
    unweighted), ``sensitivity_max``, ``clean_loss`` (CE of the logits, for comparison with other defenses),
    ``margin_violation`` (fraction with a positive hinge)."""

    double_backward = True  # its penalty differentiates input gradients: no torch.compile (acceleration.py)

    def __init__(self, C: float = 0.1, penalty_norm: Literal["l2", "l1", "linf"] = "l2", batched: bool = True,
                 loss: Literal["hinge", "ce"] = "hinge"):
        """Thesis MNIST defaults: ``C = 0.1`` with ``penalty_norm=l2``; use ``C = 0.01`` with ``l1``.

        Args:
            C: weight of the margin sensitivity (>= 0).
            penalty_norm: norm of the logit-difference gradients (l1 bounds the l_inf margin, l2 the l2 one).
            batched: one batched VJP for all K classes (else a loop over the K classes).
            loss: the data term: ``hinge`` (eq 3.18) or ``ce``, cross-entropy in its place, as the thesis
                trains NIN on CIFAR-10 (§3.5.2: the hinge "is unstable and often diverges" there).
        """
        if C < 0:
            raise ValueError(f"C={C} must be >= 0")
        self.C = float(C)
        self.norm = check_norm(penalty_norm, ("l2", "l1", "linf"), who="margin")
        self.batched = bool(batched)
        self.loss = check_choice("loss", loss, ("hinge", "ce"))

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> DefenseOutput:
        xr = x.detach().requires_grad_(True)
        logits = model(xr)
        hinge, sens = margin_terms(logits, xr, y, self.norm, self.batched)
        data = hinge.mean() if self.loss == "hinge" else F.cross_entropy(logits, y)
        loss = data + self.C * sens.mean()
        stats = {"hinge": hinge.mean().detach(), "penalty": sens.mean().detach(),
                 "sensitivity_max": sens.amax().detach(),
                 "clean_loss": F.cross_entropy(logits.detach(), y),
                 "margin_violation": (hinge.detach() > 0).float().mean()}
        return DefenseOutput(loss, logits.detach(), to_floats(stats))


SCHEMAS = {"margin": schema_of(Margin, "margin")}
