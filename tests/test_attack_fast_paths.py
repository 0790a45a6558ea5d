"""The attacks' fast paths against the slow forms they replace, bit for bit where the fast path claims it.

- ``losses.attack_loss_grad``: the closed-form gradient of the attack losses w.r.t. the logits equals
  autograd's through ``attack_loss``, and ``loss_gradient`` (built on it) the full autograd input gradient;
- ``geometry._project_l2_box`` (active set, no sort) equals ``_project_l2_box_sorted`` on random and
  degenerate rows, and its fallback to the sort takes over the rows it has not settled.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robust_cli.attacks import geometry
from robust_cli.attacks.geometry import _project_l2_box, _project_l2_box_sorted
from robust_cli.attacks.losses import attack_loss, attack_loss_grad, loss_gradient

torch.set_num_threads(1)


def _logits(n: int = 300, k: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits with every hard case: ordinary, huge margins (x1000), ties among the other classes and with
    the true class (rounded values), and a single other class (``k = 2``)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g)
    z[n // 3: 2 * n // 3] *= 1000
    z[2 * n // 3:] = (z[2 * n // 3:] * 1.5).round()  # many ties
    return z, torch.randint(0, k, (n,), generator=g)


@pytest.mark.parametrize("k", [10, 2])
@pytest.mark.parametrize("targeted", [False, True])
@pytest.mark.parametrize(("loss", "scale_free"), [("ce", True), ("margin", False), ("ce", False)])
def test_attack_loss_grad_equals_autograd_bitwise(loss, scale_free, targeted, k):
    z, y = _logits(k=k)
    zr = z.clone().requires_grad_(True)
    want = attack_loss(zr, y, loss, targeted, scale_free=scale_free)
    (want_g,) = torch.autograd.grad(want.sum(), zr)
    value, g = attack_loss_grad(z, y, loss, targeted, scale_free=scale_free)
    assert torch.equal(value, want.detach())
    assert torch.equal(g, want_g)
    assert not g.requires_grad and not value.requires_grad


def test_attack_loss_grad_rejects_an_unknown_loss():
    z, y = _logits(8)
    with pytest.raises(ValueError, match="unknown loss"):
        attack_loss_grad(z, y, "hinge")


@pytest.mark.parametrize(("loss", "scale_free", "targeted"),
                         [("ce", True, False), ("ce", True, True), ("margin", False, False), ("ce", False, False)])
def test_loss_gradient_equals_autograd_through_the_loss(loss, scale_free, targeted):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 32), nn.ReLU(), nn.Linear(32, 5)).eval()
    x = torch.rand(40, 1, 6, 6)
    y = torch.randint(0, 5, (40,))
    with torch.no_grad():  # confident: margins in the tens, where the plain CE gradient underflows
        model[-1].weight *= 30
    xr = x.clone().requires_grad_(True)
    logits = model(xr)
    (want,) = torch.autograd.grad(attack_loss(logits, y, loss, targeted, scale_free=scale_free).sum(), xr)
    grad, got_logits = loss_gradient(model, x, y, loss, targeted, scale_free=scale_free)
    assert torch.equal(grad, want)
    assert torch.equal(got_logits, logits.detach())


def _rows(seed: int, n: int = 400, d: int = 50) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(v, eps, lo, hi)`` for a box ``x in [0,1]`` with values on its faces, zero entries, and rows that are
    inside the ball, all zero, clipped everywhere, at ``eps = 0``, tiny and huge."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=g)
    x[:, :10] = 0.0  # on the faces: no room one way
    x[:, 10:15] = 1.0
    v = torch.randn(n, d, generator=g) * torch.rand(n, 1, generator=g) * 3
    v[:, 20:25] = 0.0  # zero entries
    eps = torch.rand(n, generator=g) * 2
    v[0] = 0.0  # zero row
    eps[1] = 0.0  # no budget
    v[2], eps[2] = 1e-3 * v[2], 5.0  # well inside
    v[3] = torch.where(torch.arange(d) % 2 == 0, 50.0, -50.0)  # every value clipped at t = 1
    eps[3] = float((torch.where(v[3] > 0, 1 - x[3], x[3]) ** 2).sum().sqrt()) * 0.999
    v[4], eps[4] = v[4] * 1e-20, 1e-22  # tiny
    v[5] = v[5] * 1e20  # huge
    eps[6] = float((v[6].clamp(-x[6], 1 - x[6]) ** 2).sum().sqrt())  # exactly on the sphere
    return v, eps, -x, 1 - x


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_l2_box_projection_equals_the_sorted_closed_form(seed):
    v, eps, lo, hi = _rows(seed)
    got = _project_l2_box(v, eps, lo, hi)
    want = _project_l2_box_sorted(v, eps, lo, hi)
    assert torch.equal(got, want), (got - want).abs().max()
    assert (got.norm(dim=1) <= eps * (1 + 1e-5) + 1e-30).all()
    assert ((got >= lo) & (got <= hi)).all()


def test_l2_box_projection_all_inside_is_the_clip():
    v, _, lo, hi = _rows(3)
    eps = torch.full((v.shape[0],), 1e6)
    assert torch.equal(_project_l2_box(v, eps, lo, hi), v.clamp(lo, hi))


def test_l2_box_projection_falls_back_to_the_sort_for_unsettled_rows(monkeypatch):
    """With a single round most rows are still moving: the sort must take exactly those over."""
    v, eps, lo, hi = _rows(4)
    want = _project_l2_box_sorted(v, eps, lo, hi)
    taken = []

    def sorted_rows(v, *args):
        taken.append(v.shape[0])
        return _project_l2_box_sorted(v, *args)

    monkeypatch.setattr(geometry, "L2_BOX_ROUNDS", 1)
    monkeypatch.setattr(geometry, "_project_l2_box_sorted", sorted_rows)
    got = _project_l2_box(v, eps, lo, hi)
    assert len(taken) == 1 and 0 < taken[0] < v.shape[0]  # some rows, not all
    assert torch.equal(got, want)


def test_l2_box_projection_float64_input_is_left_alone():
    v, eps, lo, hi = (t.double() for t in _rows(5))
    v0 = v.clone()
    got = _project_l2_box(v, eps, lo, hi)
    assert torch.equal(v, v0)
    assert torch.allclose(got, _project_l2_box_sorted(v, eps, lo, hi), rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_l2_box_projection_low_precision_equals_the_sort(dtype):
    """The split into values surely clipped / in doubt rounds ``b`` in the input's dtype: still the sort's
    result in half precision. Rows that overflow float16 to inf (no projection of theirs is meaningful) are
    left out."""
    v, eps, lo, hi = (t.to(dtype) for t in _rows(6))
    finite = torch.isfinite(v).all(1)
    v, eps, lo, hi = v[finite], eps[finite], lo[finite], hi[finite]
    assert torch.equal(_project_l2_box(v, eps, lo, hi), _project_l2_box_sorted(v, eps, lo, hi))
