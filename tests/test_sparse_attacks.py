"""The sparse, black-box and ensemble attacks (minimal, sigma_zero, jsma, sparsefool, one_pixel, boundary, bb)
against the exact box-constrained optimum of the linear model (``linear_reference``; one channel, so pixels
are values): never below it, within 1.2x (l0, black-box) or 1.05x; the box, the model's state, query budgets,
compose-time checks, the ensemble's per-image guarantee and the evaluation's ``x_init`` plumbing."""

from __future__ import annotations

import re

import pandas as pd
import pytest
import torch

from linear_reference import make_problem, minimal_distance
from robust_cli.attacks import list_attacks
from robust_cli.attacks.best import perturbation_size
from robust_cli.evaluation.runner import CountingModel

torch.set_num_threads(1)

CASES = [  # (attack, norm, options, tolerance)
    # the paper's 1000 steps: one image of 2 optimal pixels ends at 3 (1.5x) at 100 steps under either order of
    # the step and the rate's annealing, and at 300 under the authors' order (the default since session 7)
    ("sigma_zero", "l0", {"steps": 1000}, 1.2),
    ("jsma", "l0", {}, 1.2),
    ("vfga", "l0", {}, 1.2),
    ("sparsefool", "l1", {"lam": 1.0}, 1.05),
    ("one_pixel", "l0", {"max_pixels": 3, "popsize": 40, "steps": 30, "max_queries": 4000}, 1.2),
    ("boundary", "l2", {"max_queries": 3000, "x_init": "deepfool"}, 1.2),
    ("bb", "l2", {"steps": 200}, 1.05),
    ("bb", "linf", {"steps": 200}, 1.05),
    ("bb", "l1", {"steps": 200, "x_init": "sparsefool"}, 1.05),
    ("bb", "l0", {"steps": 200, "x_init": "jsma"}, 1.2),
    ("minimal", "l0", {"l0_attacks": ["jsma", "sigma_zero"]}, 1.2),
    ("minimal", "l1", {"l1_attacks": ["sparsefool", "pgd"]}, 1.05),
    ("minimal", "l2", {"l2_attacks": ["deepfool", "bb"]}, 1.05),
    ("minimal", "linf", {"linf_attacks": ["deepfool", "pgd"]}, 1.05),
]


def _run(name, norm, options, model, x, y):
    options = dict(options)
    if options.get("x_init") == "deepfool":
        options["x_init"] = list_attacks()["deepfool"](model, x, y, norm="l2")
    elif options.get("x_init") in ("sparsefool", "jsma"):
        start = options["x_init"]
        options["x_init"] = list_attacks()[start](model, x, y, norm="l1" if start == "sparsefool" else "l0")
    return list_attacks()[name](model, x, y, norm=norm, **options)


@pytest.mark.parametrize("name,norm,options,tol", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_near_the_exact_optimum_inside_the_box_and_side_effect_free(name, norm, options, tol):
    model, x, y = make_problem(n=12, in_shape=(1, 6, 6), num_classes=3, seed=0)
    model.train()
    out = _run(name, norm, options, model, x, y)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    best = minimal_distance(model, x, y, norm)
    with torch.no_grad():
        assert bool((model(out).argmax(1) != y).all()), "every image of this problem is breakable"
    ratio = perturbation_size(out, x, norm).double() / best
    assert ratio.min() >= 1 - 1e-4, f"below the exact optimum: {ratio.min():.6f}"
    assert ratio.max() <= tol, f"{name}-{norm}: worst ratio {ratio.max():.3f} > {tol}"


CONFIDENT = [c for c in CASES if (c[0], c[1]) in {("sigma_zero", "l0"), ("jsma", "l0"), ("sparsefool", "l1"),
                                                    ("bb", "l2"), ("bb", "linf")}]


@pytest.mark.parametrize("name,norm,options,tol", CONFIDENT, ids=[f"{c[0]}-{c[1]}" for c in CONFIDENT])
def test_confident_over_scaled_model_does_not_defeat_the_gradient_attacks(name, norm, options, tol):
    """Logits x1000 (margins in the hundreds: float32 softmax gradients underflow there): the same decisions
    and the same optimum, so every image is still fooled, inside the box, never below the optimum, and as close
    to it as on the unscaled model."""
    model, x, y = make_problem(n=12, in_shape=(1, 6, 6), num_classes=3, seed=0)
    with torch.no_grad():
        model.fc.weight.mul_(1000.0)
        model.fc.bias.mul_(1000.0)
    out = _run(name, norm, options, model, x, y)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    with torch.no_grad():
        assert bool((model(out).argmax(1) != y).all()), f"{name}-{norm}: an image was not fooled"
    ratio = perturbation_size(out, x, norm).double() / minimal_distance(model, x, y, norm)
    assert ratio.min() >= 1 - 1e-4, f"below the exact optimum: {ratio.min():.6f}"
    assert ratio.max() <= tol, f"{name}-{norm}: worst ratio {ratio.max():.3f} > {tol}"


def test_vfga_breaks_the_saturated_vote_on_the_logits():
    """VFGA votes by the softmax probability ``p_y``, which is exactly 1 in float32 on every candidate of a
    confident model (logits x1000), so adv-lib's vote (``saturation=advlib``) takes the first draw blindly; the
    default breaks those ties by the logits' ``s = logsumexp_{j != y} f_j - f_y``. On this model the vote is
    then the margin's greedy (its softmax is a hard max): every image is still fooled, in the box, never below
    the optimum, and closer than the blind vote (one image of 2 optimal pixels: 3 against 4)."""
    model, x, y = make_problem(n=12, in_shape=(1, 6, 6), num_classes=3, seed=0)
    best = minimal_distance(model, x, y, "l0")
    with torch.no_grad():
        model.fc.weight.mul_(1000.0)
        model.fc.bias.mul_(1000.0)
    ratios = {}
    for mode in ("logits", "advlib"):
        out = list_attacks()["vfga"](model, x, y, norm="l0", saturation=mode)
        assert out.min() >= 0 and out.max() <= 1
        with torch.no_grad():
            assert bool((model(out).argmax(1) != y).all()), f"saturation={mode}: an image was not fooled"
        ratios[mode] = perturbation_size(out, x, "l0").double() / best
        assert ratios[mode].min() >= 1 - 1e-4
    assert ratios["logits"].mean() <= 1.05 and ratios["logits"].max() <= 1.5
    assert bool((ratios["logits"] <= ratios["advlib"]).all()) and ratios["logits"].sum() < ratios["advlib"].sum()


def test_boundary_from_noise_is_local_but_close_on_average():
    """Without a start the Boundary attack follows the boundary of the class its noise landed in (§3): the
    nearest boundary may belong to another class, so only the mean is held to 1.2x."""
    model, x, y = make_problem(n=12, in_shape=(1, 6, 6), num_classes=3, seed=0)
    out = list_attacks()["boundary"](model, x, y, norm="l2", max_queries=3000)
    ratio = perturbation_size(out, x, "l2").double() / minimal_distance(model, x, y, "l2")
    assert ratio.min() >= 1 - 1e-4 and ratio.mean() <= 1.2


class _BentSlab(torch.nn.Module):
    """Two classes on ``s = u . x`` (``u`` = +-1 alternating, so ``s = 0`` on the grey images below): class 1
    wins on the slab ``1 < s < 4``, ``f_1 - f_0 = s - 1 - 1.2 relu(s - 1.5)``. A ReLU network's bend past its
    boundary: the normal at the boundary is ``u``, the gradient at ``s > 1.5`` is ``-0.2 u``."""

    def __init__(self, d: int):
        super().__init__()
        self.u = torch.tensor([1.0, -1.0]).repeat(d // 2)

    def forward(self, x):
        s = x.flatten(1) @ self.u
        return torch.stack([torch.zeros_like(s), s - 1 - 1.2 * torch.relu(s - 1.5)], 1)


@pytest.mark.parametrize("norm", ["l1", "l0"])
def test_sparsefool_takes_the_normal_at_the_boundary_not_at_the_lam_scaled_point(norm):
    """At the defaults (lam 3) ``x_B`` lies at ``s ~ 3`` where the gradient points back at ``x``: the old code
    (normal at ``x_B``) moved nothing and fooled none of these images (like a third of MNIST). The normal at
    DeepFool's point fools each; in l1 the bisection brings it to the optimum (1: every ``|u_j|`` is 1; in l0
    it keeps the first point, the same pixels)."""
    d = 36
    model = _BentSlab(d)
    noise = torch.rand(6, d // 2, generator=torch.Generator().manual_seed(0)) * 0.4 - 0.2
    x = (0.5 + noise.repeat_interleave(2, dim=1)).view(6, 1, 6, 6)  # pairs equal: u . x = 0
    y = torch.zeros(6, dtype=torch.long)
    assert bool((model(x).argmax(1) == 0).all())
    out = list_attacks()["sparsefool"](model, x, y, norm=norm)
    assert out.min() >= 0 and out.max() <= 1
    assert bool((model(out).argmax(1) == 1).all()), "an image was not fooled"
    l1 = perturbation_size(out, x, "l1")
    assert bool((l1 >= 1 - 1e-4).all()) and bool((l1 <= (1.05 if norm == "l1" else 3.2)).all()), l1


def test_one_pixel_corner_sweep_finds_the_one_pixel_that_flips_the_class():
    """Only pixel 20, pushed below 0.5, fools this model (class 1's logit ``5 - 10 x_20`` against 0), so the
    minimal l0 is exactly 1: the corner sweep (pixel 20 at 0) finds it on every image without any evolution,
    in at most ``H W 2^C`` = 72 queries; with the sweep off, the same 72 random candidates miss some."""
    g = torch.Generator().manual_seed(0)
    x = 0.6 + 0.4 * torch.rand(16, 1, 6, 6, generator=g)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 2))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([0.0, 5.0]))
        model[1].weight[1, 20] = -10.0
    y = torch.zeros(16, dtype=torch.long)
    counted = CountingModel(model)
    out = list_attacks()["one_pixel"](counted, x, y, norm="l0", steps=0, popsize=8, max_queries=72)
    assert bool((model(out).argmax(1) == 1).all())
    assert torch.equal(perturbation_size(out, x, "l0"), torch.ones(16))
    assert counted.forward_samples <= 72 * 16
    blind = list_attacks()["one_pixel"](model, x, y, norm="l0", steps=8, popsize=8, max_queries=72, corners=False)
    assert bool((model(blind).argmax(1) == 0).any())


@pytest.mark.parametrize("name,options", [
    ("one_pixel", {"max_pixels": 3, "popsize": 20, "steps": 50, "max_queries": 333}),
    ("boundary", {"max_queries": 257}),
])
def test_black_box_attacks_stay_within_their_query_budget_and_take_no_gradient(name, options):
    model, x, y = make_problem(n=8, in_shape=(1, 6, 6), num_classes=3, seed=1)
    counted = CountingModel(model)
    norm = list_attacks()[name].norms[0]
    list_attacks()[name](counted, x, y, norm=norm, **options)
    assert counted.forward_samples <= options["max_queries"] * x.shape[0]
    assert counted.forward_samples > 0.5 * options["max_queries"] * x.shape[0] or name == "one_pixel"
    assert counted.backward_samples == 0


def test_a_member_started_from_a_good_point_is_no_worse_and_minimal_beats_each_member():
    model, x, y = make_problem(n=12, in_shape=(1, 6, 6), num_classes=3, seed=2)
    attacks = list_attacks()
    good = attacks["bb"](model, x, y, norm="l2", steps=200)
    for name in ("bb", "boundary"):
        out = attacks[name](model, x, y, norm="l2", x_init=good, **({"max_queries": 50} if name == "boundary" else
                                                                    {"steps": 200}))
        assert bool((perturbation_size(out, x, "l2") <= perturbation_size(good, x, "l2") + 1e-6).all()), name
    members = ["deepfool", "pdpgd", "unknown_attack_name"]
    ens = attacks["minimal"](model, x, y, norm="l2", l2_attacks=members)
    first = attacks["deepfool"](model, x, y, norm="l2")
    for name in members[:2]:
        # pdpgd takes x_init: inside the ensemble it starts from DeepFool's points, so compare with that run
        single = attacks[name](model, x, y, norm="l2", **({"x_init": first} if name == "pdpgd" else {}))
        with torch.no_grad():
            fooled = model(single).argmax(1) != y
        ens_size, single_size = perturbation_size(ens, x, "l2")[fooled], perturbation_size(single, x, "l2")[fooled]
        assert bool((ens_size <= single_size + 1e-6).all())
    from_init = attacks["minimal"](model, x, y, norm="l2", l2_attacks=["deepfool"], x_init=good)
    assert bool((perturbation_size(from_init, x, "l2") <= perturbation_size(good, x, "l2") + 1e-6).all())


@pytest.mark.parametrize("overrides,message", [
    (["attack=jsma", "attack.jsma.saliency=foo"], "attack.jsma.saliency='foo': expected one of pairs, margin"),
    (["attack=one_pixel", "attack.one_pixel.max_queries=0"], "attack.one_pixel.max_queries=0: must be >= 1"),
    (["attack=sparsefool", "attack.sparsefool.lam=0.5"], "attack.sparsefool.lam=0.5: must be >= 1"),
    (["attack=boundary", "attack.boundary.step_adaptation=1"], "attack.boundary.step_adaptation=1.0: must be > 1"),
    (["attack=minimal", "attack.minimal.search_steps=0"], "attack.minimal.search_steps=0: must be >= 1"),
])
def test_bad_options_fail_at_compose_time(overrides, message, hydra_compose):
    from robust_cli.config import check_config
    from robust_cli.errors import UserError

    cfg = hydra_compose(config_name="eval", overrides=["run=x", *overrides])
    with pytest.raises(UserError, match=re.escape(message)):
        check_config(cfg)


@pytest.mark.slow  # ~40 s: two evals of several attacks; the plumbing of x_init has fast tests too
def test_eval_minimal_end_to_end_and_later_attacks_start_from_the_running_best(tmp_path):
    from cli_helpers import robust

    res = robust("train", "experiment=quickstart", "epochs=1", f"out_dir={tmp_path}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    run = next(p.parent for p in (tmp_path / "train").rglob("model.pt"))
    res = robust("eval", f"run={run}", "attack=minimal", "norm=l2", "n_examples=12", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    ens = pd.read_csv(run / "eval" / "minimal-l2" / "per_sample.csv")
    res = robust("eval", f"run={run}", "attack=[deepfool,boundary]", "norm=l2", "n_examples=12",
                 "attack.boundary.max_queries=30", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    first = pd.read_csv(run / "eval" / "deepfool-l2" / "per_sample.csv")
    later = pd.read_csv(run / "eval" / "boundary-l2" / "per_sample.csv")
    # 30 queries cannot find a start from noise and walk far: boundary's numbers come from deepfool's points
    assert (later["distance"] <= first["distance"] + 1e-5).all()
    assert (ens["distance"] <= first["distance"] + 1e-5).all()  # deepfool is a member of minimal's l2 set
    import json

    started = {name: json.loads((run / "eval" / f"{name}-l2" / "summary.json").read_text())["started_from"]
               for name in ("deepfool", "boundary")}
    assert started == {"deepfool": [], "boundary": ["deepfool"]}  # where a result's start came from


def test_refiner_starts_prefer_other_classes_then_distinct_sizes():
    """``minimal``'s refiner starts: the running best, then the smallest point of a class not taken yet, then
    the smallest of a size not taken yet; the clean image where nothing is left (found or not)."""
    from robust_cli.attacks.best import Best
    from robust_cli.attacks.minimal import _ranked_starts

    class FirstPixelClass(torch.nn.Module):  # the class is ten times the first value
        def forward(self, z):
            return torch.nn.functional.one_hot((z.flatten(1)[:, 0] * 10).round().long(), 11).float()

    def point(size, cls):
        z = torch.zeros(1, 2, 2)
        z[0, 0, 0], z[0, 1, 1] = cls / 10, size
        return z

    x = torch.zeros(3, 1, 2, 2)
    best = Best(x, "l2")
    best.x_adv = torch.stack([point(0.1, 1), point(0.2, 2), x[2]])
    best.size = torch.tensor([0.1, 0.2, float("inf")], dtype=torch.float64)
    members = [([point(0.1, 1), point(0.3, 2), point(0.5, 3)], [0.1, 0.3, 0.5]),
               ([point(0.2, 1), point(0.25, 3), x[2]], [0.2, 0.25, float("inf")]),
               ([point(0.15, 1), point(0.4, 2), x[2]], [0.15, 0.4, float("inf")])]
    results = [(torch.stack(p), torch.tensor(s, dtype=torch.float64)) for p, s in members]
    starts = _ranked_starts(FirstPixelClass(), best, results, 3).view(3, 3, -1)  # [start, image, values]
    assert torch.allclose(starts[..., 3], torch.tensor([[0.1, 0.2, 0.0], [0.15, 0.25, 0.5], [0.2, 0.3, 0.0]]))
    assert torch.allclose(starts[..., 0] * 10, torch.tensor([[1.0, 2, 0], [1, 3, 3], [1, 2, 0]]))


@pytest.mark.parametrize(("init", "norm"), [("ddn", "l2"), ("fmn", "l1"), ("deepfool", "linf")])
def test_bb_starts_from_its_init_attack_where_no_start_is_given(init, norm, monkeypatch):
    """``bb(init=...)`` runs that attack (and only that one) for the images without a start; B&B never returns a
    point larger than the start it refined, nor one below the exact optimum. (Not asked: the optimum itself.
    On this 3-class model DDN's and FMN's starts put one image of 12 in a class whose boundary is 6% farther,
    and B&B stays in its start's class; DeepFool's start is exact on a linear model.)"""
    import robust_cli.attacks.bb as bb_module

    model, x, y = make_problem(n=6, in_shape=(1, 6, 6), num_classes=3, seed=0)
    called, starts = [], {}
    for name in ("deepfool", "ddn", "fmn"):
        real = getattr(bb_module, name)

        def spy(*args, _name=name, _real=real, **kwargs):
            called.append(_name)
            starts[_name] = _real(*args, **kwargs)
            return starts[_name]

        monkeypatch.setattr(bb_module, name, spy)
    out = list_attacks()["bb"](model, x, y, norm=norm, steps=20, init=init)
    assert called == [init]
    start = starts[init]
    with torch.no_grad():
        fooled = model(start).argmax(1) != y
        assert bool((model(out).argmax(1) != y).all())
    size = perturbation_size(out, x, norm).double()
    assert bool((size <= perturbation_size(start, x, norm).double() * (1 + 1e-6))[fooled].all())
    assert bool((size >= minimal_distance(model, x, y, norm) * (1 - 1e-4)).all())
