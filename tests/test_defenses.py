"""Correctness of the training objectives (robust_cli.defenses) against independent references.

References are computed here per sample with plain autograd (loops are fine in tests), with
``torch.autograd.functional.jacobian``, by finite differences in float64, or in closed form.
"""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from robust_cli.defenses import build_defense
from robust_cli.defenses.at_fgsm import AtFgsm
from robust_cli.defenses.at_l2 import AtL2
from robust_cli.defenses.lip import Lip
from robust_cli.defenses.margin import Margin, margin_terms
from robust_cli.defenses.none import NoDefense
from robust_cli.defenses.pgd_at import PgdAt, project
from robust_cli.defenses.trades import Trades
from robust_cli.defenses.tulip import Tulip
from robust_cli.defenses.vat import Vat, vat_direction
from robust_cli.norms import canonicalize_config

NAMES = ["none", "at_fgsm", "at_l2", "lip", "tulip", "pgd_at", "trades", "vat", "margin", "fgsm_mix", "critic"]


# ---------------------------------------------------------------- tiny models


def smooth_mlp(d: int = 16, k: int = 4, hidden: int = 12, seed: int = 0, dtype=torch.float64) -> nn.Module:
    """A C^inf MLP (tanh) without batch interaction: per-sample references and finite differences apply."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, k)).to(dtype)


class GatedLinear(nn.Module):
    """``f(x) = W relu(x - 0.5) + b``: rows with every pixel below 0.5 have an exactly zero input gradient."""

    def __init__(self, d: int = 16, k: int = 4):
        super().__init__()
        self.lin = nn.Linear(d, k)

    def forward(self, x):
        return self.lin(F.relu(x.flatten(1) - 0.5))


def bn_convnet(k: int = 4, seed: int = 0) -> nn.Module:
    """Conv + BatchNorm + dropout-free head: eval and train mode give different gradients."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 16, k), nn.BatchNorm1d(k))


def batch(b: int = 6, k: int = 4, seed: int = 1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 1, 4, 4, generator=g, dtype=dtype)
    y = torch.randint(0, k, (b,), generator=g)
    return x, y


def per_sample_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eval_mode: bool) -> torch.Tensor:
    """``grad_{x_i} CE(f(x_i), y_i)`` one sample at a time ``[B, ...]`` (eval mode: batch-independent)."""
    was = model.training
    model.train(not eval_mode)
    rows = []
    for i in range(len(x)):
        xi = x[i:i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(xi), y[i:i + 1]), xi)
        rows.append(g[0])
    model.train(was)
    return torch.stack(rows)


def vec_norm(g: torch.Tensor, norm: str) -> torch.Tensor:
    flat = g.flatten(1)
    return {"l2": flat.norm(dim=1), "l1": flat.abs().sum(1), "linf": flat.abs().amax(1)}[norm]


def params_grad(loss_fn, model) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    loss_fn().backward()
    g = torch.cat([p.grad.flatten() for p in model.parameters()])
    model.zero_grad(set_to_none=True)
    return g


def directional_fd(loss_fn, model, v: torch.Tensor, h: float = 1e-5) -> float:
    """Central difference of ``loss_fn()`` along the flat parameter direction ``v``."""
    params = list(model.parameters())
    base = [p.detach().clone() for p in params]

    def shift(t):
        offset = 0
        with torch.no_grad():
            for p, p0 in zip(params, base):
                n = p.numel()
                p.copy_(p0 + t * v[offset:offset + n].view_as(p))
                offset += n

    shift(h)
    up = float(loss_fn())
    shift(-h)
    down = float(loss_fn())
    shift(0.0)
    return (up - down) / (2 * h)


# ---------------------------------------------------------------- J1 / J2


def test_j2_step_has_l2_norm_eps_per_sample_and_leaves_zero_gradient_rows():
    torch.manual_seed(0)
    model = GatedLinear().double().train()
    x = torch.rand(8, 1, 4, 4, dtype=torch.float64)
    x[::2] *= 0.45  # every pixel < 0.5: relu is dead, the input gradient is exactly zero
    y = torch.randint(0, 4, (8,))
    eps = 0.3
    x_adv = AtL2(eps=eps).perturb(model, x, y).x_adv
    r = (x_adv - x).flatten(1)
    assert torch.equal(x_adv[::2], x[::2])
    torch.testing.assert_close(r[1::2].norm(dim=1), torch.full((4,), eps, dtype=torch.float64))
    # the direction is each sample's own loss gradient (the 1/B of the batch mean cancels)
    g = per_sample_grads(model, x, y, eval_mode=True).flatten(1)[1::2]
    torch.testing.assert_close(r[1::2], eps * g / g.norm(dim=1, keepdim=True))


def test_j2_step_uses_eval_mode_gradient():
    model = bn_convnet().double().train()
    x, y = batch(8)
    model(x)  # give BatchNorm running statistics that differ from any single batch's
    x_adv = AtL2(eps=0.1).perturb(model, x, y).x_adv
    g = per_sample_grads(model, x, y, eval_mode=True).flatten(1)
    r = (x_adv - x).flatten(1)
    torch.testing.assert_close(r, 0.1 * g / g.norm(dim=1, keepdim=True))
    assert model.training


def test_j1_step_is_scaled_sign_of_l2_norm_eps():
    model = smooth_mlp().train()
    x, y = batch(5)
    eps = 0.2
    x_adv = AtFgsm(eps=eps).perturb(model, x, y).x_adv
    r = (x_adv - x).flatten(1)
    torch.testing.assert_close(r.norm(dim=1), torch.full((5,), eps, dtype=torch.float64))
    g = per_sample_grads(model, x, y, eval_mode=True).flatten(1)
    torch.testing.assert_close(r, eps * torch.sign(g) / math.sqrt(16))


@pytest.mark.parametrize("cls", [AtFgsm, AtL2])
def test_clip_option_keeps_images_in_box(cls):
    model = smooth_mlp().train()
    x, y = batch(6)
    x = x.round()  # pixels at 0 and 1: an unclipped step of norm 3 leaves the box
    free = cls(eps=3.0).perturb(model, x, y).x_adv
    clipped = cls(eps=3.0, clip=True).perturb(model, x, y).x_adv
    assert free.min() < 0 or free.max() > 1
    assert clipped.min() >= 0 and clipped.max() <= 1
    torch.testing.assert_close(clipped, free.clamp(0, 1))


# ---------------------------------------------------------------- the Lipschitz penalty


@pytest.mark.parametrize("norm", ["l2", "l1", "linf"])
@pytest.mark.parametrize("reduction", ["max", "mean"])
def test_lip_penalty_equals_per_sample_autograd(norm, reduction):
    model = smooth_mlp().train()
    x, y = batch(7)
    lam = 0.7
    out = Lip(lam=lam, penalty_norm=norm, reduction=reduction)(model, x, y)
    per = vec_norm(per_sample_grads(model, x, y, eval_mode=False), norm) / len(x)  # grad of the batch MEAN
    expected = per.max() if reduction == "max" else per.mean()
    ce = F.cross_entropy(model(x), y)
    assert out.stats["penalty"] == pytest.approx(float(expected), rel=1e-10)
    assert float(out.loss.detach()) == pytest.approx(float(ce.detach() + lam * expected), rel=1e-10)
    l2 = vec_norm(per_sample_grads(model, x, y, eval_mode=False), "l2")
    assert out.stats["grad_norm_max"] == pytest.approx(float(l2.max()), rel=1e-10)


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_lip_weight_gradient_matches_finite_differences(norm):
    model = smooth_mlp().train()
    x, y = batch(5)
    defense = Lip(lam=2.0, penalty_norm=norm)
    grad = params_grad(lambda: defense(model, x, y).loss, model)
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        v = torch.randn(grad.shape, generator=gen, dtype=grad.dtype)
        fd = directional_fd(lambda: defense(model, x, y).loss.detach(), model, v)
        assert float(grad @ v) == pytest.approx(fd, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("norm", ["l2", "l1", "linf"])
def test_finite_difference_penalty_converges_to_double_backprop(norm):
    model = smooth_mlp().train()
    x, y = batch(6)
    exact = Lip(lam=1.0, penalty_norm=norm)
    ref = exact(model, x, y).stats["penalty"]
    ref_grad = params_grad(lambda: exact(model, x, y).loss, model)
    errs, grad_errs = [], []
    for h in (1e-1, 1e-2, 1e-3, 1e-4):
        fd = Lip(lam=1.0, penalty_norm=norm, method="finite_difference", h=h)
        errs.append(abs(fd(model, x, y).stats["penalty"] - ref))
        grad_errs.append(float((params_grad(lambda fd=fd: fd(model, x, y).loss, model) - ref_grad).norm()))
    assert all(a > b for a, b in itertools.pairwise(errs)), errs
    assert errs[-1] < 1e-3 * ref
    assert all(a > b for a, b in itertools.pairwise(grad_errs)), grad_errs
    assert grad_errs[-1] < 1e-3 * float(ref_grad.norm())


def test_tulip_is_j2_plus_penalty_at_perturbed_inputs():
    model = smooth_mlp().train()
    x, y = batch(6)
    eps, lam = 0.2, 0.5
    out = Tulip(eps=eps, lam=lam)(model, x, y)
    x_adv = AtL2(eps=eps).perturb(model, x, y).x_adv
    ref = Lip(lam=lam)(model, x_adv, y)
    assert float(out.loss.detach()) == pytest.approx(float(ref.loss.detach()), rel=1e-12)
    assert out.stats["penalty"] == pytest.approx(ref.stats["penalty"], rel=1e-12)
    # the clean logits go to the train error, not the perturbed ones
    torch.testing.assert_close(out.logits, model(x).detach())
    # finite differences along the reused J2 direction: close to the exact penalty at x' for small eps, h
    fd = Tulip(eps=0.01, lam=lam, method="finite_difference", h=1e-5)(model, x, y).stats["penalty"]
    exact = Tulip(eps=0.01, lam=lam)(model, x, y).stats["penalty"]
    assert fd == pytest.approx(exact, rel=2e-2)


# ---------------------------------------------------------------- margin (thesis eq 3.18)


@pytest.mark.parametrize("norm", ["l2", "l1"])
@pytest.mark.parametrize("batched", [True, False])
def test_margin_sensitivity_equals_jacobian_norm(norm, batched):
    model = smooth_mlp(k=5).train()
    x, y = batch(6, k=5)
    xr = x.clone().requires_grad_(True)
    logits = model(xr)
    hinge, sens = margin_terms(logits, xr, y, norm, batched)
    for i in range(len(x)):
        jac = torch.autograd.functional.jacobian(lambda z: model(z)[0], x[i:i + 1]).flatten(1)  # [K, d]
        diffs = [vec_norm((jac[y[i]] - jac[j])[None], norm)[0] for j in range(5) if j != y[i]]
        assert float(sens[i].detach()) == pytest.approx(float(max(diffs)), rel=1e-10)
        f = logits[i].detach()
        h_ref = max(max(0.0, 1 + float(f[j]) - float(f[y[i]])) for j in range(5) if j != y[i])
        assert float(hinge[i].detach()) == pytest.approx(h_ref, rel=1e-12, abs=1e-12)


def test_margin_weight_gradient_matches_finite_differences():
    model = smooth_mlp(k=5).train()
    x, y = batch(5, k=5)
    defense = Margin(C=0.5, penalty_norm="l2")
    grad = params_grad(lambda: defense(model, x, y).loss, model)
    v = torch.randn(grad.shape, generator=torch.Generator().manual_seed(0), dtype=grad.dtype)
    fd = directional_fd(lambda: defense(model, x, y).loss.detach(), model, v)
    assert float(grad @ v) == pytest.approx(fd, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("name", [n for n in NAMES if n not in ("none", "critic")])
def test_lenet5_fast_conv_trains_exactly_as_a_plain_conv(name):
    """LeNet-5's first layer is ``InputGradConv2d`` on CPU (a custom autograd.Function for the input gradient).
    Every defense must give the weights the same gradient as with a plain ``nn.Conv2d``: ``margin``'s batched
    logit gradients once came back through it with the right values but no graph, so its penalty trained
    nothing on LeNet-5 (the thesis's Table 3.1 margin rows identical for l1 and l2)."""
    from robust_cli.models.input_grad_conv import InputGradConv2d
    from robust_cli.models.lenet5 import LeNet5

    torch.manual_seed(0)
    fast = LeNet5((1, 28, 28), 10).double().train()
    assert any(isinstance(m, InputGradConv2d) for m in fast.modules())
    plain = copy.deepcopy(fast)
    for parent in plain.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, InputGradConv2d):
                conv = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, padding=child.padding)
                conv.load_state_dict(child.state_dict())
                setattr(parent, child_name, conv.double())
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(6, 1, 28, 28, generator=g, dtype=torch.float64), torch.randint(0, 10, (6,), generator=g)
    grads = []
    for model in (fast, plain):
        defense = make(name)
        torch.manual_seed(1)  # the same random starts and directions for both
        grads.append(params_grad(lambda defense=defense, model=model: defense(model, x, y).loss, model))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-7, atol=1e-10)


# ---------------------------------------------------------------- PGD-AT, TRADES, VAT


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_examples_stay_in_ball_and_box_and_raise_the_loss(norm):
    model = smooth_mlp(dtype=torch.float32).train()
    x, y = batch(32, dtype=torch.float32)
    eps = 0.1 if norm == "linf" else 0.5
    defense = PgdAt(norm=norm, eps=eps, steps=10, step_size=0.25)
    x_adv = defense.perturb(model, x, y).x_adv
    r = (x_adv - x).flatten(1)
    size = r.abs().amax(1) if norm == "linf" else r.norm(dim=1)
    assert (size <= eps * (1 + 1e-5)).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    model.eval()
    with torch.no_grad():
        clean = F.cross_entropy(model(x), y, reduction="none")
        adv = F.cross_entropy(model(x_adv), y, reduction="none")
    assert (adv >= clean - 1e-6).float().mean() > 0.9 and adv.mean() > clean.mean()


def test_l2_pgd_at_uses_its_whole_budget_on_mostly_black_images():
    """MNIST-like inputs (mostly 0): about half the ascent direction points out of the box. The exact projection
    onto ball ∩ box still reaches norm eps; rescaling into the ball and clipping after stalls short of it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.Tanh(), nn.Linear(32, 10)).train()
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(16, 1, 28, 28)
    x[:, :, 6:22, 10:18] = torch.rand(16, 1, 16, 8, generator=g).round()  # a stroke of 0/1 pixels
    y = torch.randint(0, 10, (16,), generator=g)
    eps = 2.0
    x_adv = PgdAt(norm="l2", eps=eps, steps=10, step_size=0.5).perturb(model, x, y).x_adv
    size = (x_adv - x).flatten(1).norm(dim=1)
    torch.testing.assert_close(size, torch.full_like(size, eps), rtol=1e-3, atol=0)
    assert (size <= eps * (1 + 1e-5)).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_l2_projection_closed_form():
    x0 = torch.full((2, 1, 2, 2), 0.5)
    far = x0 + torch.tensor([0.3, 0.0, 0.0, 0.4]).view(1, 1, 2, 2)  # norm 0.5, inside the box
    out = project(far, x0, 0.25, "l2")
    torch.testing.assert_close(out - x0, (far - x0) * 0.5)
    near = x0 + 0.01
    torch.testing.assert_close(project(near, x0, 0.25, "l2"), near)


def test_trades_with_zero_radius_is_clean_cross_entropy():
    model = smooth_mlp().train()
    x, y = batch(6)
    out = Trades(eps=0.0, beta=6.0)(model, x, y)
    assert float(out.loss.detach()) == pytest.approx(float(F.cross_entropy(model(x), y).detach()), rel=1e-12)
    out = Trades(eps=0.3, beta=6.0, steps=5, step_size=0.1 / 0.3)(model, x, y)
    assert out.stats["kl"] > 0


def test_vat_power_iteration_finds_top_hessian_eigenvector():
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(16, 4)).double()
    with torch.no_grad():
        lin[1].weight.mul_(4)  # peaked softmax: a clear eigen-gap
    x, _ = batch(4)
    d = vat_direction(lin, x, xi=1e-6, power_iterations=30).flatten(1)
    w = lin[1].weight.detach()
    with torch.no_grad():
        p = F.softmax(lin(x), dim=1)
    for i in range(len(x)):
        hess = w.T @ (torch.diag(p[i]) - torch.outer(p[i], p[i])) @ w  # Hessian of KL(p || q(x + r)) at r = 0
        top = torch.linalg.eigh(hess).eigenvectors[:, -1]
        assert abs(float(d[i] @ top)) > 0.999


def test_vat_direction_under_bf16_autocast_matches_float32():
    """Under autocast the power iteration still runs in float32: in bfloat16 ``x + xi d`` rounds to ``x``."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 5)).eval()
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(2)
    ref = vat_direction(model, x, xi=1e-3, power_iterations=1)
    torch.manual_seed(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = vat_direction(model, x, xi=1e-3, power_iterations=1)
    assert got.dtype == torch.float32
    assert (F.cosine_similarity(got.flatten(1), ref.flatten(1), dim=1) > 0.9).all()


def test_vat_loss_is_ce_plus_kl_at_eps_step():
    model = smooth_mlp().train()
    x, y = batch(6)
    out = Vat(eps=0.5, alpha=2.0)(model, x, y)
    ce = F.cross_entropy(model(x), y)
    assert float(out.loss.detach()) == pytest.approx(float(ce.detach()) + 2.0 * out.stats["lds"], rel=1e-12)
    assert out.stats["lds"] > 0


# ---------------------------------------------------------------- every defense: the interface contract


def make(name: str, **options):
    small = {"pgd_at": {"steps": 2}, "trades": {"steps": 2}, "lip": {}, "tulip": {},
             "critic": {"pretrain_epochs": 0, "critic_widths": [8]}}
    cfg = {"_target_": f"robust_cli.defenses.{name}.{_CLASSES[name]}", "name": name, **small.get(name, {}),
           **options}
    return build_defense(cfg)


_CLASSES = {"none": "NoDefense", "at_fgsm": "AtFgsm", "at_l2": "AtL2", "lip": "Lip", "tulip": "Tulip",
            "pgd_at": "PgdAt", "trades": "Trades", "vat": "Vat", "margin": "Margin",
            "fgsm_mix": "FgsmMix", "critic": "Critic"}

VARIANTS = [(n, {}) for n in NAMES] + [
    ("lip", {"method": "finite_difference"}), ("tulip", {"method": "finite_difference"}),
    ("pgd_at", {"norm": "l2", "eps": 0.5, "lam": 0.1}), ("at_fgsm", {"lam": 0.1, "method": "finite_difference"}),
    ("trades", {"norm": "l2", "eps": 0.5}),
]


@pytest.mark.parametrize("name,options", VARIANTS, ids=[f"{n}-{'-'.join(o)}" for n, o in VARIANTS])
def test_defense_contract_mode_grads_and_flags(name, options):
    model = bn_convnet().float().train()
    model[0].bias.requires_grad_(False)  # a frozen parameter must stay frozen
    flags = [p.requires_grad for p in model.parameters()]
    x, y = batch(8, dtype=torch.float32)
    out = make(name, **options)(model, x, y)
    assert model.training and all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters()), "the inner attack leaked a parameter gradient"
    assert out.loss.dim() == 0 and out.loss.requires_grad
    assert out.logits.shape == (8, 4) and not out.logits.requires_grad
    assert all(isinstance(v, float) and math.isfinite(v) for v in out.stats.values())
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_adversarial_loss_gradient_does_not_flow_through_the_attack():
    """The weight gradient of J2 is that of CE at a fixed x': nothing of the attack path reaches the weights."""
    model = bn_convnet().double().train()
    x, y = batch(8)
    eps = 0.2
    twin = copy.deepcopy(model)  # the defense's train forward moves BatchNorm's running statistics
    got = params_grad(lambda: AtL2(eps=eps)(model, x, y).loss, model)
    g = per_sample_grads(twin, x, y, eval_mode=True)
    x_adv = x + eps * g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    ref = params_grad(lambda: F.cross_entropy(twin(x_adv), y), twin)
    torch.testing.assert_close(got, ref)


def test_build_defense_from_every_yaml():
    from hydra import compose, initialize_config_module
    from hydra.errors import ConfigCompositionException

    from robust_cli.config import register_configs

    register_configs()
    with initialize_config_module(config_module="robust_cli.conf", version_base=None):
        for name in NAMES:
            cfg = compose(config_name="train", overrides=[f"defense={name}"])
            assert type(build_defense(cfg.defense)).__name__ == _CLASSES[name]
        cfg = compose(config_name="train", overrides=["defense=lip", "defense.penalty_norm=inf",
                                                      "defense.method=finite_difference"])
        lip = build_defense(canonicalize_config(cfg).defense)  # aliases are resolved at the CLI boundary
        assert lip.penalty.norm == "linf" and lip.penalty.method == "finite_difference"
        with pytest.raises(ConfigCompositionException):
            compose(config_name="train", overrides=["defense=tulip", "defense.epsilon=0.1"])
    with pytest.raises(ValueError):
        make("lip", method="double_backward")


# ---------------------------------------------------------------- behaviour on real data


def _digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    y = torch.tensor(data.target, dtype=torch.int64)
    return x[:1500], y[:1500], x[1500:], y[1500:]


def _train(defense, epochs: int = 6) -> tuple[float, float]:
    """A few epochs of Adam on digits; returns (test error, max_i ||grad_x l_i||_2 over the test set)."""
    x, y, xt, yt = _digits()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(100):
            out = defense(model, x[idx], y[idx])
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
    model.eval()
    xr = xt.clone().requires_grad_(True)
    logits = model(xr)
    (g,) = torch.autograd.grad(F.cross_entropy(logits, yt, reduction="sum"), xr)  # per-sample gradients
    return float((logits.argmax(1) != yt).float().mean()), float(g.flatten(1).norm(dim=1).max())


def test_tulip_lowers_the_max_input_gradient_norm_on_digits():
    err_none, grad_none = _train(NoDefense())
    err_tulip, grad_tulip = _train(Tulip(eps=0.1, lam=10.0))
    assert err_none < 0.2 and err_tulip < 0.2  # both learned (chance: 0.9)
    assert grad_tulip < 0.7 * grad_none, (grad_tulip, grad_none)


# ---------------------------------------------------------------- fgsm_mix (thesis eq 2.22)


def test_fgsm_mix_is_clean_plus_lam_times_ce_at_the_clipped_linf_fgsm_image():
    """On a linear model the FGSM image is known in closed form: ``clip(x + eps * sign(grad_x CE))``."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4)).double()
    x, y = torch.rand(6, 1, 4, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 0, 1])
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xr), y), xr)
    x_adv = (x + 0.2 * g.sign()).clamp(0, 1)
    want = F.cross_entropy(model(x), y) + 0.5 * F.cross_entropy(model(x_adv), y)
    out = make("fgsm_mix", eps=0.2, lam=0.5)(model, x, y)
    torch.testing.assert_close(out.loss, want)
    assert out.stats["adv_loss"] > out.stats["clean_loss"]  # the step raised the loss


def test_margin_loss_ce_replaces_the_hinge_by_cross_entropy():
    """Thesis §3.5.2 (NIN on CIFAR-10): CE + C * margin sensitivity, the same sensitivity as with the hinge."""
    model = smooth_mlp()
    x, y = torch.rand(6, 1, 4, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 0, 1])
    hinge = make("margin", C=0.5)(model, x, y)
    ce = make("margin", C=0.5, loss="ce")(model, x, y)
    want = F.cross_entropy(model(x), y) + 0.5 * ce.stats["penalty"]
    torch.testing.assert_close(ce.loss, want)
    assert ce.stats["penalty"] == pytest.approx(hinge.stats["penalty"])
    with pytest.raises(ValueError, match="loss"):
        make("margin", loss="mse")
