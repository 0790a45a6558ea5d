"""``logit_difference_gradients``: both of its paths (m backward passes through one forward; one pass on stacked
copies for small batches) against one autograd call per sample and class."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robust_cli.attacks import class_gradients
from robust_cli.attacks.class_gradients import all_but, logit_difference_gradients

torch.set_num_threads(1)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()


@pytest.mark.parametrize("stacked", [False, True], ids=["backward-loop", "stacked"])
def test_each_gradient_is_that_of_its_own_logit_difference(stacked, monkeypatch):
    monkeypatch.setattr(class_gradients, "STACKED_ROWS", 10**9 if stacked else 0)
    model, gen = _model(), torch.Generator().manual_seed(1)
    x = torch.rand(6, 1, 8, 8, generator=gen)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    cand = torch.tensor([[1, 2], [0, 4], [2, 3], [0, 1], [3, 2], [0, 4]])  # row 2 and 5 hold y itself: g = w = 0
    g, w, logits = logit_difference_gradients(model, x, y, cand)
    assert g.shape == (6, 2) and w.shape == (6, 2, 1, 8, 8) and logits.shape == (6, 5)
    assert not (g.requires_grad or w.requires_grad or logits.requires_grad)
    for i in range(6):
        for j in range(2):
            xi = x[i:i + 1].clone().requires_grad_(True)
            out = model(xi)[0]
            diff = out[cand[i, j]] - out[y[i]]
            (ref,) = torch.autograd.grad(diff, xi)
            torch.testing.assert_close(g[i, j], diff.detach(), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(w[i, j], ref[0], rtol=1e-5, atol=1e-6)
    assert (w[2, 0] == 0).all() and (g[5, 0] == 0)
    torch.testing.assert_close(logits, model(x).detach())


def test_default_candidates_are_every_other_class_in_order():
    model, x = _model(), torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([4, 0, 2])
    assert all_but(y, 5).tolist() == [[0, 1, 2, 3], [1, 2, 3, 4], [0, 1, 3, 4]]
    g, w, _ = logit_difference_gradients(model, x, y)
    g2, w2, _ = logit_difference_gradients(model, x, y, all_but(y, 5))
    torch.testing.assert_close(g, g2)
    torch.testing.assert_close(w, w2)
