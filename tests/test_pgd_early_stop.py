"""PGD's early stop, probes and closed-form gradient, and the eps search built on them (``probe_search``).

On the linear reference model (``tests/linear_reference.py``) the smallest adversarial is known exactly, so
the searched distances are checked against it; early stop is checked to decide success exactly as the full
run does, to keep every image's result at its own index through the compaction of the batch, and to stop
only past the boundary by the margin the search's re-test needs.
"""

from __future__ import annotations

import pytest
import torch
from linear_reference import make_problem, minimal_distance

from robust_cli.attacks import pgd as pgd_module
from robust_cli.attacks.geometry import batch_norm, enforce_budget
from robust_cli.attacks.losses import attack_loss, margin, objective_gradient
from robust_cli.attacks.pgd import pgd, scale_free_ce_gradient
from robust_cli.evaluation import adaptive_search
from robust_cli.evaluation.eps_search import search_distance
from robust_cli.evaluation.runner import CountingModel


def _grey_problem(seed=0, n=24, num_classes=3):
    model, x, y = make_problem(n=n, in_shape=(1, 4, 4), num_classes=num_classes, seed=seed)
    return model, 0.5 + (x - 0.5) * 0.2, y  # towards grey: the box never binds


def _conv_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 6 * 6, 5)).eval()


@pytest.mark.parametrize("targeted", [False, True])
def test_closed_form_gradient_is_autograds_bit_for_bit(targeted):
    model = _conv_model()
    x = torch.rand(16, 1, 8, 8)
    y = torch.randint(0, 5, (16,))
    with torch.no_grad():  # a few confident points, where the float32 CE gradient would lose its true term
        x[:4] = x[:4] * 0
    grad, logits, others = scale_free_ce_gradient(model, x, y, targeted)
    ref, ref_logits = objective_gradient(model, x, lambda z: attack_loss(z, y, "ce", targeted, scale_free=True))
    assert torch.equal(grad, ref) and torch.equal(logits, ref_logits)
    assert torch.equal(others.gather(1, y[:, None]), torch.full((16, 1), float("-inf")))
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_early_stop_decides_success_as_the_full_run_and_keeps_indices(norm):
    """Images above and below their optimum, interleaved: early stop succeeds exactly where the full run
    does, each output belongs to its own image (its own eps, its own label), and a failure is the full run's."""
    model, x, y = _grey_problem(seed=1, n=24, num_classes=2)
    exact = minimal_distance(model, x, y, norm).float()
    scale = torch.tensor([2.0, 0.7, 1.3, 0.9] * 6)
    eps = exact * scale
    full = pgd(model, x, y, norm=norm, eps=eps, steps=20)
    stopped = torch.zeros(24)
    early = pgd(model, x, y, norm=norm, eps=eps, steps=20, early_stop=True, stopped=stopped)
    with torch.no_grad():
        ok_full = model(full).argmax(1) != y
        logits = model(early)
    ok_early = logits.argmax(1) != y
    assert torch.equal(ok_full, ok_early)
    # the attack's report of its stops, which the search trusts for failures: the steps a stop took, a fraction
    # of the run (the clean point is never adversarial: at least one step), inf where it never stopped
    assert torch.equal(torch.isfinite(stopped), ok_early)
    assert ((stopped[ok_early] > 0) & (stopped[ok_early] <= 1)).all()
    assert torch.equal(stopped[ok_early] * 20, (stopped[ok_early] * 20).round())
    assert ok_early[scale > 1].all() and not ok_early[scale < 1].any()  # the test can fail both ways
    assert (batch_norm(early - x, norm) <= eps * (1 + 1e-6)).all()
    # a stop is past the boundary by the margin the search's re-test needs
    deep = margin(logits, y) < -pgd_module.EARLY_STOP_DEPTH * (1 + logits.abs().amax(1))
    assert deep[ok_early].all()
    # failures ran every step, as without early stop (another batch composition: last bits only)
    assert torch.allclose(early[~ok_early], full[~ok_early], atol=1e-6)
    # a permuted batch gives the permuted outputs: the compaction kept every row with its image
    perm = torch.randperm(24, generator=torch.Generator().manual_seed(0))
    again = pgd(model, x[perm], y[perm], norm=norm, eps=eps[perm], steps=20, early_stop=True)
    assert torch.allclose(again, early[perm], atol=1e-6)


def test_early_stop_saves_passes_and_probe_needs_a_warm_start():
    model, x, y = _grey_problem(seed=2, n=16)
    eps = minimal_distance(model, x, y, "linf").float() * 2
    full, early = CountingModel(model), CountingModel(model)
    pgd(full, x, y, norm="linf", eps=eps, steps=30)
    pgd(early, x, y, norm="linf", eps=eps, steps=30, early_stop=True)
    assert early.backward_samples * 5 < full.backward_samples, (early.backward_samples, full.backward_samples)
    # probe without x_init: the ordinary attack; with one, only the short warm run
    plain = pgd(model, x, y, norm="linf", eps=eps, steps=30, early_stop=True)
    assert torch.equal(plain, pgd(model, x, y, norm="linf", eps=eps, steps=30, early_stop=True, probe=True))
    warm = pgd(model, x, y, norm="linf", eps=eps * 1.2, steps=30, early_stop=True)
    probe = CountingModel(model)
    out = pgd(probe, x, y, norm="linf", eps=eps, steps=30, early_stop=True, probe=True, x_init=warm)
    assert probe.backward_samples <= 16 * (30 // pgd_module.PROBE_RUN)
    assert (batch_norm(out - x, "linf") <= eps * (1 + 1e-6)).all()
    # a probe that fails everywhere: its start is tested by the first gradient's forward, not by one of its
    # own, so a run of k steps costs k + 1 forwards (the last iterate's test) and k backwards
    k = 30 // pgd_module.PROBE_RUN
    low = minimal_distance(model, x, y, "linf").float() * 0.5
    failing = CountingModel(model)
    stopped = torch.zeros(16)
    pgd(failing, x, y, norm="linf", eps=low, steps=30, early_stop=True, probe=True, x_init=x, stopped=stopped)
    assert torch.isinf(stopped).all()
    assert (failing.forward_samples, failing.backward_samples) == (16 * (k + 1), 16 * k)


def test_early_stop_is_deeper_than_the_searchs_safety():
    assert pgd_module.EARLY_STOP_DEPTH >= 2 * adaptive_search.SAFETY


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("targeted", [False, True])
def test_probe_search_distance_is_the_exact_one_within_tolerance(norm, targeted):
    model, x, y = _grey_problem(seed=3, n=20, num_classes=2)  # two classes: CE ascends the margin exactly
    if targeted:
        y = 1 - y  # two classes: the target is the other one, whose minimal distance is the untargeted one
    exact = minimal_distance(model, x, 1 - y if targeted else y, norm)
    counted = CountingModel(model)
    params = {"steps": 20, "targeted": targeted}
    found = search_distance(pgd, model, x, y, norm, params, method="adaptive", attack_model=counted)
    d = batch_norm(found.x_adv - x, norm).double()
    pred = model(found.x_adv).argmax(1)
    assert ((pred == y) if targeted else (pred != y)).all()
    assert (d >= exact * (1 - 1e-5)).all()  # a verified adversarial is never below the optimum
    assert (d <= exact * 1.01 + 1e-6).all(), (d / exact).max()
    assert (found.resolution <= 0.01 * found.eps * (1 + 1e-4)).all()
    one = CountingModel(model)
    pgd(one, x, y, norm=norm, eps=exact.float() * 1.05, **params)
    passes = counted.forward_samples + counted.backward_samples
    assert passes < 3 * (one.forward_samples + one.backward_samples), passes


def _staged_attack(model, x, y, log):
    """A fake budget attack with probes on the 2-class grey problem: the exact best step (``x + eps sign(a)``),
    which the full attack finds from ``eps >= 1.02 d`` (``d`` the exact distance; a margin deep enough for the
    search's re-test) and a probe only from ``1.06 d`` (a warm walk that stalls above the full attack's
    threshold); a full success below ``1.1 d`` reports that it took 90% of its run, 10% otherwise. ``log``
    gets ``(probe, [image ids], eps / d)`` per call."""
    exact = minimal_distance(model, x, y, "linf")
    row = {x[i].numpy().tobytes(): i for i in range(x.shape[0])}

    def attack(model_, xs, ys, *, norm, eps, early_stop=False, probe=False, stopped=None, x_init=None):
        ids = torch.tensor([row[r.numpy().tobytes()] for r in xs])
        d = exact[ids].float()
        ok = eps >= d * (1.06 if probe and x_init is not None else 1.02)
        log.append((probe, ids.tolist(), (eps / d).tolist()))
        a = torch.where(ys[:, None] == 0, model.fc.weight[1] - model.fc.weight[0],
                        model.fc.weight[0] - model.fc.weight[1]).detach().view_as(xs).sign()
        out = torch.where(ok.view(-1, 1, 1, 1), enforce_budget(xs + eps.view(-1, 1, 1, 1) * a, xs, eps, norm), xs)
        if stopped is not None:
            took = torch.where(eps < d * 1.1, torch.full_like(eps, 0.9), torch.full_like(eps, 0.1))
            stopped.copy_(torch.where(ok, took, torch.full_like(eps, float("inf"))))
        return out

    return attack, exact


def test_probe_search_full_attack_again_after_a_slow_success_and_in_one_call():
    """After a full success that took most of its run the next call on that image is the full attack (no
    probes: the warm walk is stuck above), and the full attack runs only once no image is left to probe, on all
    of them in one call; the distances stay within the tolerance above the full attack's own threshold."""
    model, x, y = _grey_problem(seed=4, n=16, num_classes=2)
    x = x + torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) * 1e-3  # every row its own
    log = []
    attack, exact = _staged_attack(model, x, y, log)
    found = search_distance(attack, model, x, y, "linf", method="adaptive", rtol=0.01)
    # never below the true boundary (the search's forward-only pulls may go below the fake attack's threshold),
    # never above the full attack's threshold by more than the tolerance
    assert (found.eps >= exact * (1 - 1e-5)).all() and (found.eps <= exact * 1.02 * 1.01 * (1 + 1e-4)).all()
    assert (found.resolution <= 0.01 * found.eps * (1 + 1e-4)).all()
    calls = {i: [] for i in range(16)}
    for probe, ids, ratio in log:
        for i, r in zip(ids, ratio):
            calls[i].append((probe, r))
    slow = 0
    for seq in calls.values():
        for (probe, r), (probe_next, _) in zip(seq, seq[1:]):
            if not probe and 1.02 <= r < 1.1:  # a full success that took 90% of its run
                slow += 1
                assert not probe_next, seq
    assert slow > 0  # the case is exercised
    fulls = [j for j, (probe, _, _) in enumerate(log) if not probe]
    for j in fulls[1:]:  # the first bracket aside: every image still searched is in each full call
        later = {i for _, ids, _ in log[j:] for i in ids}
        assert later <= set(log[j][1]), (j, later - set(log[j][1]))
