"""The iterative attacks are never weaker than their single-step versions on a real trained model.

A small MLP is trained on scikit-learn's 8x8 digits inside the test (a few seconds); the per-sample distances
of ``search_eps`` (batched bisection over eps) are then compared: ``pgd``, ``ifgsm`` and ``bim`` must not need
a larger eps than ``fgsm`` (linf) / ``fgm`` (l2) beyond the search resolution, success of ``pgd`` must be
monotone in eps (the bisection assumes it), and the loss gradients must match float64 references on the
confident points where float32 cross-entropy cancels or underflows.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from robust_cli.attacks.fgm import fgm
from robust_cli.attacks.fgsm import fgsm
from robust_cli.attacks.geometry import batch_norm
from robust_cli.attacks.ifgsm import bim, ifgsm
from robust_cli.attacks.losses import loss_gradient
from robust_cli.attacks.pgd import pgd, random_start_in_ball
from robust_cli.evaluation.eps_search import search_eps

SEARCH_STEPS = 10
SINGLE = {"linf": fgsm, "l2": fgm}
ALLOWED = 0.01  # fraction of images an iterative attack may lose on (the brief's tolerance); observed: 0


def train_digits_mlp():
    """``(model, x [N,1,8,8] in [0,1], y [N])``: an MLP trained for a few epochs on 1500 digits, and up to
    200 held-out test digits it classifies correctly."""
    datasets = pytest.importorskip("sklearn.datasets")
    data = datasets.load_digits()
    x_all = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16
    y_all = torch.tensor(data.target, dtype=torch.int64)
    x_tr, y_tr, x_te, y_te = x_all[:1500], y_all[:1500], x_all[1500:], y_all[1500:]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                          nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(15):
        for idx in torch.randperm(1500, generator=g).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x_tr[idx]), y_tr[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        ok = model(x_te).argmax(1) == y_te
    assert ok.float().mean() > 0.85  # a real classifier, not a coin
    return model, x_te[ok][:200], y_te[ok][:200]


@pytest.fixture(scope="module")
def digits():
    """The trained MLP and its test digits (``train_digits_mlp``), shared by the tests of this module."""
    return train_digits_mlp()


def box_radius(x: torch.Tensor, norm: str) -> torch.Tensor:
    """The largest perturbation the box allows, per sample: the bisection's upper end (as ``robust eval``)."""
    return batch_norm(torch.maximum(x, 1 - x), norm)


def distances(attack, model, x, y, norm, params=None):
    """``(dist [B], resolution [B])`` of ``search_eps`` over ``[0, box radius]``."""
    hi = box_radius(x, norm)
    return search_eps(attack, model, x, y, norm, 0.0, hi, SEARCH_STEPS, params or {}), hi / 2**SEARCH_STEPS


def not_weaker(strong, weak, resolution, label):
    """Indices where ``strong`` needs a larger eps than ``weak`` beyond the resolution (both are exact only up
    to it); printed so a failure names the images."""
    worse = strong > weak * (1 + 1e-3) + resolution
    idx = worse.nonzero().flatten().tolist()
    for i in idx:
        print(f"{label}: image {i} needs {float(strong[i]):.4f} vs {float(weak[i]):.4f}")
    return idx


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("attack,params,scale", [(pgd, {}, 1.0), (ifgsm, {}, 1.0), (bim, {}, 1.0),
                                                 (pgd, {"steps": 10, "step_size": 0.05}, 1.0),
                                                 (pgd, {"restarts": 2, "steps": 20}, 1.0),
                                                 (pgd, {}, 3.0), (ifgsm, {}, 3.0)],
                         ids=["pgd", "ifgsm", "bim", "pgd-short-steps", "pgd-random-restart", "pgd-confident",
                              "ifgsm-confident"])
def test_iterative_attack_never_needs_more_eps_than_single_step(digits, norm, attack, params, scale):
    """Per image: ``d_iterative <= d_single * (1 + 1e-3) + resolution`` on at least 99% of the images, and the
    iterative attack is strictly better (by more than the resolution) on a good share of them.

    ``pgd-short-steps`` is the setting the evaluation flagged (10 steps of 0.05 eps: the iterates cannot
    reach the corner FGSM jumps to; before the fix it lost on ~80% of images). ``*-confident``: the same
    model with its logits times 3 (same decisions, margins up to ~50, where float32 CE gradients cancel)."""
    model, x, y = digits
    if scale != 1.0:
        model = scaled(model, scale)
    d_single, res = distances(SINGLE[norm], model, x, y, norm)
    d_iter, _ = distances(attack, model, x, y, norm, params)
    assert torch.isfinite(d_single).all() and torch.isfinite(d_iter).all()
    bad = not_weaker(d_iter, d_single, res, f"{attack.__name__}{params}x{scale}-{norm}")
    assert len(bad) <= ALLOWED * len(y), bad
    if params.get("step_size") != 0.05:  # a real iterative attack improves on the single step somewhere
        assert (d_iter < d_single - res).float().mean() > 0.3


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("params", [{}, {"restarts": 2, "steps": 20}], ids=["default", "random-restart"])
def test_pgd_success_is_monotone_in_eps(digits, norm, params):
    """Success at eps implies success at 1.5 eps (same seed) on >= 99% of images, over a grid of eps."""
    model, x, y = digits
    hi = box_radius(x, norm)
    bad = torch.zeros(len(y), dtype=torch.bool)
    tried = torch.zeros(len(y), dtype=torch.bool)
    for k in range(1, 11):
        eps = hi * (0.3 * k / 10)  # up to 0.3 of the box: every image is broken well inside it
        ok = []
        for e in (eps, 1.5 * eps):
            x_adv = pgd(model, x, y, norm=norm, eps=e, **params)
            assert (batch_norm(x_adv - x, norm) <= e * (1 + 1e-6)).all()
            with torch.no_grad():
                ok.append(model(x_adv).argmax(1) != y)
        tried |= ok[0]
        bad |= ok[0] & ~ok[1]
    assert tried.float().mean() > 0.9  # the grid does cross the boundary of (nearly) every image
    print("non-monotone images:", bad.nonzero().flatten().tolist())
    assert bad.float().mean() <= ALLOWED


def test_seeded_random_start_scales_with_eps():
    """The same seed gives the same unit draws at every eps: the start at 2 eps is twice the start at eps."""
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    for norm in ("linf", "l2", "l1"):
        eps = torch.linspace(0.1, 0.6, 6)
        a = random_start_in_ball(x, eps, norm, torch.Generator().manual_seed(5))
        b = random_start_in_ball(x, 2 * eps, norm, torch.Generator().manual_seed(5))
        assert torch.allclose(b, 2 * a, rtol=1e-6, atol=1e-7)
        assert (batch_norm(a, norm) <= eps * (1 + 1e-6)).all()


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample cosine ``[B]`` in float64, normalising first (``F.cosine_similarity`` clamps the norm
    product at 1e-8, which these tiny CE gradients are far below)."""
    a, b = a.double().flatten(1), b.double().flatten(1)
    return ((a / a.norm(dim=1, keepdim=True)) * (b / b.norm(dim=1, keepdim=True))).sum(1)


def float64_copy(model: nn.Module, scale: float) -> nn.Module:
    """A float64 copy of the model with its logits multiplied by ``scale`` (same decisions, sharper softmax)."""
    twin = copy.deepcopy(model).double().eval()
    last = [m for m in twin if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(scale)
        last.bias.mul_(scale)
    return twin


def scaled(model: nn.Module, scale: float) -> nn.Module:
    """The float32 twin of ``float64_copy`` (logits times ``scale``)."""
    return float64_copy(model, scale).float()


def test_ce_gradient_keeps_the_true_class_term_on_confident_points(digits):
    """Where ``1 - p_y`` is below float32's resolution at 1 (margin 20..30), the textbook float32 backward
    ``p_y - 1`` cancels to 0. ``loss_gradient`` must still match torch's cross-entropy gradient computed in
    float64 (where ``1 - p_y >= 1e-13`` is exact enough) in direction and in size."""
    model, x, y = digits
    m32 = scaled(model, 3.0)
    with torch.no_grad():
        z = m32(x)
    top2 = z.topk(2, dim=1).values
    conf = ((top2[:, 0] - top2[:, 1]) > 20) & ((top2[:, 0] - top2[:, 1]) < 30)
    assert conf.sum() >= 5
    xc, yc = x[conf], y[conf]
    g32, _ = loss_gradient(m32, xc, yc, "ce")
    x64 = xc.double().requires_grad_(True)
    ref = torch.autograd.grad(nn.functional.cross_entropy(float64_copy(model, 3.0)(x64), yc, reduction="sum"),
                              x64)[0]
    cos = cosine(g32, ref)
    assert (cos > 0.999).all(), cos
    ratio = g32.double().flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)
    assert torch.allclose(ratio, torch.ones_like(ratio), rtol=1e-3), ratio


def test_scale_free_gradient_never_vanishes_and_keeps_the_direction(digits):
    """Logits times 30: float32 CE gradients underflow to exactly 0 on most images. The scale-free gradient
    must be non-zero everywhere and equal to the chain rule in float64,
    ``sum_{j != y} softmax_{j != y}(f)_j (grad f_j - grad f_y)`` (explicit Jacobian), up to a positive factor."""
    model, x, y = digits
    x = x[:40]
    y = y[:40]
    m32 = scaled(model, 30.0)
    g_free, _ = loss_gradient(m32, x, y, "ce", scale_free=True)
    assert (g_free.flatten(1).abs().amax(1) > 0).all()
    m64 = float64_copy(model, 30.0)
    x64 = x.double()
    jac = torch.func.vmap(torch.func.jacrev(lambda v: m64(v[None])[0]))(x64).flatten(2)  # [B, K, d]
    with torch.no_grad():
        z = m64(x64)
    others = z.scatter(1, y[:, None], float("-inf")).softmax(1)  # [B, K], 0 at y
    true_grad = jac.gather(1, y[:, None, None].expand(-1, 1, jac.shape[2]))  # [B, 1, d]
    ref = (others[:, :, None] * (jac - true_grad)).sum(1)
    cos = cosine(g_free, ref)
    assert (cos > 0.999).all(), cos
    # the attacks built on it still break these images; the single-step ones may be blind here
    for norm in ("linf", "l2"):
        d, _ = distances(pgd, m32, x, y, norm)
        d_unscaled, _ = distances(pgd, model, x, y, norm)
        assert torch.isfinite(d).all()
        # same decision regions: the distance stays of the same size (softmax sharpening changes the path)
        assert (d <= 1.5 * d_unscaled).float().mean() >= 0.95
