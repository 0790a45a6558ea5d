"""``attack=minimal``'s ensemble options: members written with options (``alma(lr=0.2)``), members run twice
(``cold_members``), the refiner's random starts (``random_starts``), and their compose-time checks."""

from __future__ import annotations

import functools
import re

import pytest
import torch

from linear_reference import make_problem
import robust_cli.attacks as attacks_pkg
from robust_cli.attacks.best import Best, perturbation_size
from robust_cli.attacks.minimal import _member_problem, _random_starts, parse_member

torch.set_num_threads(1)


def _spy_registry(monkeypatch, calls):
    """``list_attacks`` as ``minimal`` sees it, every attack recording ``(name, options, x_init, rows)``."""
    real = attacks_pkg.list_attacks()

    def wrap(name, fn):
        @functools.wraps(fn)
        def spy(model, x, y, **kw):
            calls.append((name, {k: v for k, v in kw.items() if k not in ("norm", "x_init")}, kw.get("x_init"),
                          x.shape[0]))
            return fn(model, x, y, **kw)

        spy.norms, spy.budget = fn.norms, fn.budget
        return spy

    wrapped = {k: (v if k == "minimal" else wrap(k, v)) for k, v in real.items()}
    monkeypatch.setattr(attacks_pkg, "list_attacks", lambda: wrapped)
    return real["minimal"]


def test_parse_member():
    assert parse_member("alma") == ("alma", {})
    assert parse_member("alma(lr=0.2, steps=500)") == ("alma", {"lr": 0.2, "steps": 500})
    assert parse_member(" fmn( targeted=true ) ") == ("fmn", {"targeted": True})
    for bad in ("alma(lr)", "a b", "alma(lr=0.2", "alma(0.2=lr)"):
        with pytest.raises(ValueError):
            parse_member(bad)


def test_member_problems_name_what_is_wrong():
    assert _member_problem("alma(lr=0.2)") is None
    assert _member_problem("not_an_attack") is None  # a bare unknown name is skipped when the attack runs
    assert "no attack 'nope'" in _member_problem("nope(lr=1)")
    assert "alma has no option 'lrr'" in _member_problem("alma(lrr=1)")
    assert "lr=-1: must be > 0" in _member_problem("alma(lr=-1)")
    assert _member_problem("fmn(x_init=null)") is None
    for bad in ("fmn(x_init=1)", "alma(x_init=null)"):  # only null; only for an attack that takes a start
        assert "x_init can only be null, for an attack that takes a start" in _member_problem(bad)
    assert _member_problem("fab(nearest=eq7, refine=true)") is None
    for bad in ("fab(refine=1)", "pgd(refine=true)"):  # a boolean; only for a minimal-norm attack
        assert "refine can only be true or false, for a minimal-norm attack" in _member_problem(bad)


def test_member_options_reach_the_member_and_cold_members_run_twice(monkeypatch):
    model, x, y = make_problem(n=6, in_shape=(1, 4, 4), num_classes=3, seed=0)
    calls = []
    minimal = _spy_registry(monkeypatch, calls)
    minimal(model, x, y, norm="l2", l2_attacks=["deepfool", "fmn(steps=7)", "ddn(steps=5)"], cold_members=["fmn"])
    seen = [(name, opts, x_init is None) for name, opts, x_init, _ in calls]
    assert seen == [("deepfool", {}, True), ("fmn", {"steps": 7}, False), ("fmn", {"steps": 7}, True),
                    ("ddn", {"steps": 5}, True)]
    calls.clear()
    minimal(model, x, y, norm="l2", l2_attacks=["deepfool", "fmn(steps=7)"], cold_members=[])
    assert [(name, x_init is None) for name, _, x_init, _ in calls] == [("deepfool", True), ("fmn", False)]
    calls.clear()  # a member whose options exclude the norm is skipped (FMN's advlib has no l0)
    minimal(model, x, y, norm="l0", l0_attacks=["fmn(steps=3, projection=advlib)", "fmn(steps=3)"], cold_members=[])
    assert [(name, opts) for name, opts, *_ in calls] == [("fmn", {"steps": 3})]
    calls.clear()  # x_init=null: from the clean image only, even as a cold member
    minimal(model, x, y, norm="l2", l2_attacks=["deepfool", "fmn(steps=7, x_init=null)"], cold_members=["fmn"])
    assert [(name, opts, x_init is None) for name, opts, x_init, _ in calls] == [("deepfool", {}, True),
                                                                                ("fmn", {"steps": 7}, True)]


def test_refiner_runs_from_ranked_and_random_starts_and_is_no_worse(monkeypatch):
    model, x, y = make_problem(n=6, in_shape=(1, 4, 4), num_classes=3, seed=1)
    calls = []
    minimal = _spy_registry(monkeypatch, calls)
    out = minimal(model, x, y, norm="l2", l2_attacks=["deepfool", "bb(steps=20)"], refine_starts=2,
                  random_starts=3, target_starts=0)
    bb_calls = [c for c in calls if c[0] == "bb"]
    assert len(bb_calls) == 1 and bb_calls[0][3] == 5 * len(x)  # 2 ranked + 3 random starts per image
    single = attacks_pkg.list_attacks()["deepfool"](model, x, y, norm="l2")
    with torch.no_grad():
        fooled = model(single).argmax(1) != y
    assert bool((perturbation_size(out, x, "l2")[fooled] <= perturbation_size(single, x, "l2")[fooled] + 1e-6).all())


def test_a_refine_member_adds_its_points_as_refiner_starts(monkeypatch):
    """``refine=true``: the member's own point is one more refiner start per image, after the ranked and random
    ones (the clean image where the member failed), even where it is larger than the running best and in the
    same class, so that ``_ranked_starts`` alone would not pick it."""
    model, x, y = make_problem(n=6, in_shape=(1, 4, 4), num_classes=3, seed=1)
    calls = []
    minimal = _spy_registry(monkeypatch, calls)
    members = ["deepfool", "fmn(steps=3, lr=0.05, refine=true)", "bb(steps=2)"]
    minimal(model, x, y, norm="l2", l2_attacks=members, refine_starts=1, random_starts=0, target_starts=0,
            cold_members=[])
    fmn_out = attacks_pkg.list_attacks()["fmn"](model, x, y, norm="l2", steps=3, lr=0.05,
                                                x_init=next(c[2] for c in calls if c[0] == "fmn"))
    (bb_call,) = [c for c in calls if c[0] == "bb"]
    assert bb_call[1] == {"steps": 2} and bb_call[3] == 2 * len(x)  # 1 ranked start + the refine member's
    with torch.no_grad():
        fooled = model(fmn_out).argmax(1) != y
    expected = torch.where(fooled[:, None, None, None], fmn_out, x)
    assert torch.equal(bb_call[2][len(x):], expected)
    calls.clear()  # without refine=true the same run refines the ranked start only
    minimal(model, x, y, norm="l2", l2_attacks=["deepfool", "fmn(steps=3, lr=0.05)", "bb(steps=2)"],
            refine_starts=1, random_starts=0, target_starts=0, cold_members=[])
    assert [c[3] for c in calls if c[0] == "bb"] == [len(x)]


def test_random_starts_are_adversarial_perturbed_copies_of_the_best_and_seeded():
    model, x, y = make_problem(n=8, in_shape=(1, 4, 4), num_classes=3, seed=2)
    adv = attacks_pkg.list_attacks()["deepfool"](model, x, y, norm="l2")
    best = Best(x, "l2")
    best.start(model, y, adv)
    best.found[0] = False  # one image without an adversarial yet: its starts are the clean image
    best.x_adv[0] = x[0]
    starts = _random_starts(model, best, y, 4, 1.0, torch.Generator().manual_seed(0)).view(4, *x.shape)
    again = _random_starts(model, best, y, 4, 1.0, torch.Generator().manual_seed(0)).view(4, *x.shape)
    other = _random_starts(model, best, y, 4, 1.0, torch.Generator().manual_seed(1)).view(4, *x.shape)
    assert torch.equal(starts, again) and not torch.equal(starts, other)
    assert starts.min() >= 0 and starts.max() <= 1
    assert torch.equal(starts[:, 0], x[0].expand(4, *x.shape[1:]))
    with torch.no_grad():
        fooled = model(starts[:, 1:].flatten(0, 1)).argmax(1) != y[1:].repeat(4)
    assert bool(fooled.all())
    moved = (starts[:, 1:] - best.x_adv[1:]).flatten(2).norm(dim=2)  # [4, B-1]
    found = best.found[1:]
    assert bool((moved[:, found] > 0).float().mean() > 0.5)  # most copies are moved (the rest fall back)


@pytest.mark.parametrize("overrides,message", [
    (["attack=minimal", "attack.minimal.random_starts=-1"], "attack.minimal.random_starts=-1: must be >= 0"),
    (["attack=minimal", "attack.minimal.random_scale=0"], "attack.minimal.random_scale=0.0: must be > 0"),
    (["attack=minimal", "attack.minimal.l2_attacks=['alma(lrr=0.2)']"],
     "attack.minimal.l2_attacks=['alma(lrr=0.2)']: each entry: member 'alma(lrr=0.2)': alma has no option 'lrr'"),
    (["attack=minimal", "attack.minimal.l1_attacks=['fmn(steps=0)']"],
     "each entry: member 'fmn(steps=0)': steps=0: must be >= 1"),
])
def test_bad_ensemble_options_fail_at_compose_time(overrides, message, hydra_compose):
    from robust_cli.config import check_config
    from robust_cli.errors import UserError

    cfg = hydra_compose(config_name="eval", overrides=["run=x", *overrides])
    with pytest.raises(UserError, match=re.escape(message)):
        check_config(cfg)


@pytest.mark.parametrize("norm,rows", [("linf", 1 + 8), ("l2", 1 + 4)])
def test_random_starts_default_per_norm(monkeypatch, norm, rows):
    model, x, y = make_problem(n=4, in_shape=(1, 4, 4), num_classes=3, seed=3)
    calls = []
    minimal = _spy_registry(monkeypatch, calls)
    minimal(model, x, y, norm=norm, **{f"{norm}_attacks": ["deepfool", "bb(steps=1)"]}, refine_starts=1,
            target_starts=0)
    assert [c[3] for c in calls if c[0] == "bb"] == [rows * len(x)]


@pytest.mark.parametrize("norm,runs", [("l2", 3), ("l1", 0), ("linf", 0)])
def test_target_starts_default_per_norm_run_fmn_against_the_likeliest_classes(monkeypatch, norm, runs):
    model, x, y = make_problem(n=5, in_shape=(1, 4, 4), num_classes=4, seed=4)
    calls, targets = [], []
    minimal = _spy_registry(monkeypatch, calls)
    real_fmn = attacks_pkg.list_attacks()["fmn"]
    spy_fmn = attacks_pkg.list_attacks()["fmn"]

    @functools.wraps(real_fmn)
    def fmn_seeing_y(model, x, y, **kw):
        if kw.get("targeted"):
            targets.append(y.clone())
        return spy_fmn(model, x, y, **kw)

    fmn_seeing_y.norms, fmn_seeing_y.budget = real_fmn.norms, real_fmn.budget
    wrapped = {**attacks_pkg.list_attacks(), "fmn": fmn_seeing_y}
    monkeypatch.setattr(attacks_pkg, "list_attacks", lambda: wrapped)
    minimal(model, x, y, norm=norm, **{f"{norm}_attacks": ["deepfool" if norm != "l1" else "fab", "bb(steps=2)"]})
    seen = [name for name, opts, _, _ in calls if opts.get("targeted")]
    assert seen == ["fmn"] * runs  # target_classes=3 runs where target_starts (l2: 1) is not 0
    assert [name for name, *_ in calls][-1] == "bb"  # the targeted runs come before the refiner
    starts = 3 + {"l2": 4, "l1": 4, "linf": 8}[norm] + (1 if runs else 0)  # ranked + random + targeted
    assert [rows for name, _, _, rows in calls if name == "bb"] == [starts * len(x)]
    if runs:
        with torch.no_grad():
            order = model(x).scatter(1, y[:, None], float("-inf")).argsort(1, descending=True)
        assert [t.tolist() for t in targets] == [order[:, j].tolist() for j in range(runs)]
        assert all(bool((t != y).all()) for t in targets)


def test_target_points_add_refiner_starts_new_classes_first(monkeypatch):
    model, x, y = make_problem(n=6, in_shape=(1, 4, 4), num_classes=4, seed=5)
    calls = []
    minimal = _spy_registry(monkeypatch, calls)
    kw = {"l2_attacks": ["deepfool", "bb(steps=2)"], "refine_starts": 3, "random_starts": 0}
    minimal(model, x, y, norm="l2", **kw, target_starts=2)
    starts = [x_init for name, _, x_init, _ in calls if name == "bb"][0].view(5, *x.shape)
    # deepfool is the only member: ranked starts 1 and 2 are its point or the clean image (targeted points,
    # which may have become the running best, take neither) ...
    df = attacks_pkg.list_attacks()["deepfool"](model, x, y, norm="l2")
    for i in (1, 2):
        assert all(torch.equal(starts[i, b], x[b]) or torch.equal(starts[i, b], df[b]) for b in range(len(x)))
    with torch.no_grad():
        classes = model(starts.flatten(0, 1)).argmax(1).view(5, len(x))
    # ... and starts 3, 4 are targeted points, of a class other than the best's where one was found
    assert bool(((classes[3] != classes[0]) & (classes[3] != y)).any())
    calls.clear()
    minimal(model, x, y, norm="l2", **kw, target_starts=0)
    assert [rows for name, _, _, rows in calls if name == "bb"] == [3 * len(x)]
    assert not [1 for _, opts, _, _ in calls if opts.get("targeted")]


def test_l1_members_run_pdpgd_at_its_default_and_with_the_exact_prox_at_both_earlier_lrs(monkeypatch):
    import inspect

    default = inspect.signature(attacks_pkg.list_attacks()["minimal"]).parameters["l1_attacks"].default
    exact = ["pdpgd(lr=0.5, proximal_exact=true)", "pdpgd(lr=0.1, proximal_exact=true)"]
    assert default.index("pdpgd") < default.index(exact[0]) < default.index(exact[1]) < default.index("bb")
    model, x, y = make_problem(n=4, in_shape=(1, 4, 4), num_classes=3, seed=6)
    calls = []
    minimal = _spy_registry(monkeypatch, calls)
    minimal(model, x, y, norm="l1", l1_attacks=[m for m in default if m.startswith("pdpgd")])
    assert [(name, opts) for name, opts, _, _ in calls] == [
        ("pdpgd", {}), ("pdpgd", {"lr": 0.5, "proximal_exact": True}), ("pdpgd", {"lr": 0.1, "proximal_exact": True}),
        ("pdpgd", {"lr_decay": "exponential"})]  # the authors' decay, from scratch only (x_init=null)
    assert calls[-1][2] is None
