"""``precision=bf16|fp16`` for attacks (autocast; the verification in fp32) and ``compile=true``
(torch.compile) for attacks and training, on the CPU.

Low precision against the exact minimal distances of a linear model (tests/linear_reference.py) and against
the fp32 run on a small conv net: the same images broken, distances within a relative tolerance, and every
success misclassified by the fp32 model. torch.compile on the CPU takes tens of seconds to build its
kernels: the compiled runs are slow-marked; the refusals (no C++ compiler, a double-backprop defense) are not.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from linear_reference import make_problem, minimal_distance
from torch import nn

from robust_cli.acceleration import LowPrecision, attack_model, compile_model
from robust_cli.attacks.ddn import ddn
from robust_cli.attacks.deepfool import deepfool
from robust_cli.attacks.pgd import pgd
from robust_cli.errors import UserError
from robust_cli.evaluation.runner import predict, run_attack


def conv_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 3 * 3, 4)).eval()


def distances(model, x, y, attack, params, **kw) -> tuple[np.ndarray, object]:
    result = run_attack(model, x, y, attack, "l2", params, batch_size=8, search_steps=8, seed=0, **kw)
    return result.frame["distance"].to_numpy(), result


def assert_verified_in_fp32(model, result, y) -> None:
    """Every image the evaluation counts as broken is misclassified by the fp32 model."""
    ok = np.isfinite(result.frame["distance"].to_numpy()) & (result.frame["distance"].to_numpy() > 0)
    with torch.autocast("cpu", enabled=False):
        pred = predict(model, result.x_adv)
    assert (pred.numpy()[ok] != y.numpy()[ok]).all()


@pytest.mark.parametrize("precision, rtol", [("bf16", 0.03), ("fp16", 0.012)])
def test_low_precision_deepfool_finds_the_exact_linear_distances(precision, rtol):
    """Within ``rtol`` of the exact distance where it is >= 0.05; below, a perturbation approaches the
    resolution of the inputs themselves in bf16 (2^-8 of a pixel value): there only valid (>= exact) and
    found (an image low precision cannot break is attacked again in fp32)."""
    for seed in (1, 2):
        model, x, y = make_problem(n=16, in_shape=(1, 6, 6), num_classes=3, seed=seed)
        exact = minimal_distance(model, x, y, "l2").numpy()
        low = attack_model(model, torch.device("cpu"), precision=precision)
        assert isinstance(low, LowPrecision)
        d, result = distances(model, x, y, deepfool, {"overshoot": 0.0}, attack_model=low)
        assert np.isfinite(d).all(), "every image is broken, as in fp32"
        assert (d >= exact * (1 - 1e-5)).all(), "never below the exact minimum: the verification is fp32"
        far = exact >= 0.05
        assert far.sum() >= 10
        np.testing.assert_allclose(d[far], exact[far], rtol=rtol)
        assert_verified_in_fp32(model, result, y)


@pytest.mark.parametrize("attack, params", [(ddn, {"steps": 30}), (pgd, {"steps": 10})])
def test_low_precision_matches_fp32_on_a_conv_net(attack, params):
    model = conv_net()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 7, 7, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    fp32, _ = distances(model, x, y, attack, params)
    bf16, result = distances(model, x, y, attack, params,
                             attack_model=attack_model(model, torch.device("cpu"), precision="bf16"))
    assert np.isfinite(fp32).all() and np.isfinite(bf16).all()
    # the same images, each distance within 5% (bf16 keeps 8 mantissa bits) or, for the budget attack, two
    # steps of its eps search; the medians within 2% (and the search's resolution: on an AVX2 CPU the middle
    # one of the 16 PGD distances moved by 7%, one search step, which moved the median by 3.6%)
    np.testing.assert_allclose(bf16, fp32, rtol=0.05, atol=2 * result.resolution)
    assert abs(np.median(bf16) - np.median(fp32)) <= 0.02 * np.median(fp32) + np.max(result.resolution)
    assert_verified_in_fp32(model, result, y)


def test_unknown_precision_and_missing_compiler_are_one_line(monkeypatch):
    with pytest.raises(UserError, match="precision=fp8 is not a precision; expected one of fp32, bf16, fp16"):
        attack_model(conv_net(), torch.device("cpu"), precision="fp8")
    import robust_cli.acceleration as acc

    monkeypatch.setattr(acc.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="compile=true: no C\\+\\+ compiler .* use compile=false") as err:
        compile_model(conv_net(), torch.device("cpu"))
    assert "\n" not in str(err.value)


def test_double_backprop_defenses_are_recognised():
    from robust_cli.acceleration import needs_double_backward
    from robust_cli.defenses.at_l2 import AtL2
    from robust_cli.defenses.lip import Lip
    from robust_cli.defenses.margin import Margin
    from robust_cli.defenses.none import NoDefense
    from robust_cli.defenses.tulip import Tulip

    assert needs_double_backward(Tulip()) and needs_double_backward(Lip()) and needs_double_backward(Margin())
    assert not needs_double_backward(Tulip(method="finite_difference"))
    assert not needs_double_backward(AtL2()) and not needs_double_backward(NoDefense())


@pytest.mark.slow
def test_compile_is_refused_for_double_backprop_defenses(tmp_path):
    from test_shards import compose

    from robust_cli.training.loop import fit

    cfg = compose("train", ["experiment=quickstart", "defense=tulip", "compile=true", "epochs=1", "device=cpu"])
    with pytest.raises(UserError, match="defense=tulip differentiates input gradients"):
        fit(cfg, tmp_path / "run", [])
    assert not (tmp_path / "run").exists(), "refused before the run directory is touched"


@pytest.mark.slow
def test_compiled_attack_and_training_step_match_eager():
    """torch.compile (inductor, CPU): the attack's distances and one training step equal eager within 1e-4."""
    model = conv_net()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 7, 7, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    eager, _ = distances(model, x, y, ddn, {"steps": 10})
    compiled, result = distances(model, x, y, ddn, {"steps": 10},
                                 attack_model=attack_model(model, torch.device("cpu"), compile=True))
    np.testing.assert_allclose(compiled, eager, rtol=1e-4, atol=1e-6)
    assert_verified_in_fp32(model, result, y)

    steps = {}
    for name in ("eager", "compiled"):
        net = conv_net(seed=1).train()
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        run = compile_model(net, torch.device("cpu")) if name == "compiled" else net
        for _ in range(2):
            loss = nn.functional.cross_entropy(run(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        steps[name] = torch.cat([p.detach().flatten() for p in net.parameters()])
    torch.testing.assert_close(steps["compiled"], steps["eager"], rtol=1e-4, atol=1e-5)
