"""The adversary critic network and its gradient penalty (Matyasko's thesis Ch.4 §4.4, Fig. 4.3, §4.5).

The critic ``D`` is an MLP with leaky-ReLU hidden layers (thesis §4.5: two of 1200 units) and Gaussian noise
added to the input of every layer; it has one output per class, and output ``k`` (a logit) scores "a natural
image of class ``k``" against "an adversarial example whose target is ``k``" (Fig. 4.3: the label enters only
the final classification layer). The noise scales (0.1 on the pixels, 0.5 on the hidden units), the leak 0.2
and the MSRA initialisation are those of the authors' released code; the thesis gives none of them.

The gradient penalty is that of Gulrajani et al., "Improved training of Wasserstein GANs" (eq. 3),
``(||grad_x D_k(x)||_2 - 1)^2``, evaluated at the real and at the adversarial points separately rather than at
interpolates between them (thesis §4.4, after eq. 4.3).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


class CriticNet(nn.Module):
    """``[B, ...]`` images in [0,1] -> ``[B, K]`` logits, ``sigmoid(logit_k)`` = P(natural image of class k).

    Args:
        in_features: pixels per image (``C*H*W``).
        num_classes: ``K``, one output per class.
        widths: hidden layer widths (>= 1 layer).
        noise_input: std of the Gaussian noise added to the pixels.
        noise_hidden: std of the Gaussian noise added to the input of every later layer.
        leak: negative slope of the leaky ReLU.

    The noise is drawn from the global generator in every forward pass (training and penalty alike; the critic
    is never evaluated without it), so the loop's per-epoch reseeding makes it reproducible.
    """

    def __init__(self, in_features: int, num_classes: int, widths: Sequence[int], noise_input: float,
                 noise_hidden: float, leak: float):
        super().__init__()
        if not widths:
            raise ValueError("the critic needs at least one hidden layer")
        sizes = [int(in_features), *(int(w) for w in widths)]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.out = nn.Linear(sizes[-1], int(num_classes))
        self.noise_input, self.noise_hidden, self.leak = float(noise_input), float(noise_hidden), float(leak)
        for layer in [*self.hidden, self.out]:
            nn.init.kaiming_normal_(layer.weight)  # MSRA (fan-in, gain sqrt 2), zero bias
            nn.init.zeros_(layer.bias)

    @staticmethod
    def _noisy(h: torch.Tensor, std: float) -> torch.Tensor:
        return h + std * torch.randn_like(h) if std > 0 else h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self._noisy(x.flatten(1), self.noise_input)
        for layer in self.hidden:
            h = self._noisy(F.leaky_relu(layer(h), self.leak), self.noise_hidden)
        return self.out(h)


def critic_scores(critic: nn.Module, x: torch.Tensor, index: torch.Tensor, *,
                  penalty: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(z [B], gp [B] or None)``: the critic's logit ``z_i = D_{index_i}(x_i)`` and its gradient penalty.

    ``gp_i = (||grad_{x_i} z_i||_2 - 1)^2`` (Gulrajani et al. eq. 3 at the point itself, no interpolation),
    with the graph kept (``create_graph``) so that it can be minimised over the critic's parameters. ``x`` is
    taken as data (detached): the penalty trains the critic, never the classifier.
    """
    if not penalty:
        return critic(x).gather(1, index[:, None]).squeeze(1), None
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        z = critic(xr).gather(1, index[:, None]).squeeze(1)
        (g,) = torch.autograd.grad(z.sum(), xr, create_graph=True)  # per-sample: z_i depends on x_i only
    gp = (torch.linalg.vector_norm(g.flatten(1), ord=2, dim=1) - 1.0).pow(2)
    return z, gp
