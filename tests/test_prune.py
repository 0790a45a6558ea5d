"""``prune`` (robust_cli.attacks.prune): l0 support pruning, checked against the exact l0 optimum of the linear
reference model (``linear_reference``): a start made of the optimal support plus useless pixels is pruned to
the optimum, a start at the optimum is returned unchanged, the output is always adversarial, in [0,1] and no
larger than its start; bad options fail at compose time."""

from __future__ import annotations

import re

import pytest
import torch

from linear_reference import make_problem, minimal_distance
from robust_cli.attacks.best import perturbation_size
from robust_cli.attacks.prune import prune


def _optimal_and_padded(model, x, y, extra: int):
    """Per image the exact l0-optimal point (the fewest largest capacities ``|a_i| room_i`` towards the easiest
    class, each value at its box face) and the same point with ``extra`` more pixels (the next capacities)
    moved half way to their face: adversarial, but ``extra`` pixels larger than needed."""
    weight = model.fc.weight.detach()
    xf = x.flatten(1)
    logits = xf @ weight.T
    best_k = torch.full((x.shape[0],), 10**9)
    opt, pad = x.clone().flatten(1), x.clone().flatten(1)
    for j in range(weight.shape[0]):
        a = weight[j][None] - weight[y]
        gap = (logits.gather(1, y[:, None]).squeeze(1) - logits[:, j]).clamp_min(0)
        face = (a > 0).to(x.dtype)
        cap, order = (a.abs() * (face - xf).abs()).sort(dim=1, descending=True)
        k = (cap.cumsum(1) < gap[:, None]).sum(1) + 1
        k = torch.where((y != j) & (cap.sum(1) >= gap), k, torch.full_like(k, 10**9))
        for b in (k < best_k).nonzero().squeeze(1).tolist():
            best_k[b] = k[b]
            top, more = order[b, : k[b]], order[b, k[b]: k[b] + extra]
            opt[b] = xf[b]
            opt[b, top] = face[b, top]
            pad[b] = opt[b]
            pad[b, more] = (xf[b, more] + face[b, more]) / 2
    return opt.view_as(x), pad.view_as(x)


def _fooled(model, z, y):
    with torch.no_grad():
        return model(z).argmax(1) != y


def test_useless_pixels_are_pruned_down_to_the_exact_optimum():
    model, x, y = make_problem(n=12, in_shape=(1, 6, 6), num_classes=3, seed=0)
    exact = minimal_distance(model, x, y, "l0")
    opt, padded = _optimal_and_padded(model, x, y, extra=3)
    assert bool(_fooled(model, padded, y).all())
    start = perturbation_size(padded, x, "l0").double()
    assert bool((start == exact + 3).all()), "the start carries three pixels more than the optimum"
    model.train()
    out = prune(model, x, y, x_init=padded)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert out.min() >= 0 and out.max() <= 1 and bool(_fooled(model, out, y).all())
    assert torch.equal(perturbation_size(out, x, "l0").double(), exact)


def test_an_optimal_start_is_returned_unchanged_and_a_failed_start_as_the_image():
    model, x, y = make_problem(n=12, in_shape=(1, 6, 6), num_classes=3, seed=1)
    opt, _ = _optimal_and_padded(model, x, y, extra=0)
    assert bool(_fooled(model, opt, y).all())
    start = opt.clone()
    start[:3] = x[:3]  # not adversarial: prune finds no start of its own, these rows come back as x
    out = prune(model, x, y, x_init=start)
    assert torch.equal(out[3:], opt[3:]), "nothing can be removed from the exact optimum"
    assert torch.equal(out[:3], x[:3])
    assert torch.equal(prune(model, x, y), x)  # no start at all


def test_always_adversarial_in_the_box_and_never_larger_than_its_start_on_pixels_of_several_channels():
    model, x, y = make_problem(n=16, in_shape=(3, 4, 4), num_classes=4, seed=2)
    g = torch.Generator().manual_seed(0)
    # random starts: a random third of the pixels (all channels) set to random values, kept where adversarial
    pixels = torch.rand(x.shape[0], 1, 4, 4, generator=g) < 0.6
    start = torch.where(pixels, torch.rand(x.shape, generator=g), x)
    fooled = _fooled(model, start, y)
    assert 4 <= int(fooled.sum()) < x.shape[0]
    out = prune(model, x, y, x_init=start, swaps=4)
    size, before = perturbation_size(out, x, "l0"), perturbation_size(start, x, "l0")
    assert out.min() >= 0 and out.max() <= 1
    assert bool(_fooled(model, out, y)[fooled].all())
    assert torch.equal(out[~fooled], x[~fooled])
    assert bool((size[fooled] <= before[fooled]).all())
    assert bool((size[fooled] < before[fooled]).any()), "random supports have pixels to spare"


def test_max_support_leaves_larger_supports_alone():
    model, x, y = make_problem(n=12, in_shape=(1, 6, 6), num_classes=3, seed=0)
    _, padded = _optimal_and_padded(model, x, y, extra=3)
    size = perturbation_size(padded, x, "l0")
    cap = int(size.median())
    out = prune(model, x, y, x_init=padded, max_support=cap)
    large = size > cap
    assert bool(large.any()) and bool((~large).any())
    assert torch.equal(out[large], padded[large])
    assert bool((perturbation_size(out, x, "l0")[~large] < size[~large]).all())


@pytest.mark.parametrize("overrides,message", [
    (["attack=prune", "attack.prune.steps=0"], "attack.prune.steps=0: must be >= 1"),
    (["attack=prune", "attack.prune.lr=2"], "attack.prune.lr=2.0: must be > 0 and <= 1"),
    (["attack=prune", "attack.prune.swaps=-1"], "attack.prune.swaps=-1: must be >= 0"),
])
def test_bad_options_fail_at_compose_time(overrides, message, hydra_compose):
    from robust_cli.config import check_config
    from robust_cli.errors import UserError

    cfg = hydra_compose(config_name="eval", overrides=["run=x", *overrides])
    with pytest.raises(UserError, match=re.escape(message)):
        check_config(cfg)


def test_norms_other_than_l0_are_refused():
    model, x, y = make_problem(n=2, in_shape=(1, 6, 6), num_classes=3, seed=0)
    with pytest.raises(Exception, match="l2"):
        prune(model, x, y, norm="l2", x_init=x)


def test_prune_is_the_last_l0_member_of_minimal_and_never_makes_it_larger():
    import inspect

    from robust_cli.attacks import list_attacks

    minimal = list_attacks()["minimal"]
    default = inspect.signature(minimal).parameters["l0_attacks"].default
    assert default[-1] == "prune" and default.index("bb") < default.index("prune")
    model, x, y = make_problem(n=8, in_shape=(1, 6, 6), num_classes=3, seed=0)
    without = minimal(model, x, y, norm="l0", l0_attacks=["jsma"])
    with_prune = minimal(model, x, y, norm="l0", l0_attacks=["jsma", "prune"])
    a, b = perturbation_size(without, x, "l0"), perturbation_size(with_prune, x, "l0")
    assert bool((b <= a).all()) and bool(_fooled(model, with_prune, y).all())
