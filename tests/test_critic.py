"""The adversary critic (thesis Ch.4): the straight-through estimator, the gradient penalty, training, resume."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from cli_helpers import robust
from torch import nn
from torch.nn import functional as F

from robust_cli.attacks.high_confidence import AIM, high_confidence_steps
from robust_cli.defenses.critic_net import CriticNet, critic_scores
from robust_cli.errors import UserError


def test_straight_through_gradient_equals_the_analytic_one_on_a_linear_model():
    """One step of Algorithm 1 on a 2-class linear model, ``s = u.x + c`` (``u = W_1 - W_0``, ``c = b_1 - b_0``),
    target 1: ``log p_1 = -softplus(-s)``, ``f = log C + softplus(-s)``, ``r = (max(f,0) + AIM) u / (sig(-s)
    ||u||^2) * I(f > 0)``. Backward, the indicator is ``sigmoid(f)``: for a moving sample (``f > 0``)
    ``d(v.x1)/dc = v.u/||u||^2 * [-1 + (f + AIM)(1 - sig(-s))/sig(-s) - (f + AIM) sig(f)(1 - sig(f))]``, for a
    stopped one (``f <= 0``, the forward step is 0) ``-AIM sig(f)(1 - sig(f)) v.u/||u||^2``."""
    torch.manual_seed(0)
    d = 6
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, 2)).double()
    with torch.no_grad():
        model[1].weight.mul_(0.05)
        model[1].bias.copy_(torch.tensor([0.0, -0.3]))
    x = torch.full((2, 1, 1, d), 0.5, dtype=torch.float64)
    x[1] += 0.2 * torch.sign(model[1].weight[1] - model[1].weight[0]).view(1, 1, d)  # a higher p_1
    target = torch.ones(2, dtype=torch.long)
    with torch.no_grad():
        p1 = model(x).softmax(1)[:, 1]
    c_conf = ((p1[0] + p1[1]) / 2).item()  # sample 0 below C (moves), sample 1 above (stopped)
    assert p1[0] < c_conf < p1[1]
    v = torch.randn(2, 1, 1, d, dtype=torch.float64)
    x1 = high_confidence_steps(model, x, target, c_conf, steps=1, create_graph=True)
    assert x1.min() > 0 and x1.max() < 1  # the box clip is inactive: the formula holds
    (gb,) = torch.autograd.grad((v * x1).sum(), model[1].bias, retain_graph=True)

    w, b = model[1].weight.detach(), model[1].bias.detach()
    u = w[1] - w[0]
    s = x.flatten(1) @ u + (b[1] - b[0])
    sig = torch.sigmoid(-s)
    f = math.log(c_conf) + F.softplus(-s)
    vu = v.flatten(1) @ u / u.dot(u)
    sf = torch.sigmoid(f) * (1 - torch.sigmoid(f))
    moving = -1 + (f + AIM) * (1 - sig) / sig - (f + AIM) * sf
    stopped = -AIM * sf
    dc = torch.where(f > 0, moving, stopped) * vu
    assert f[0] > 0 >= f[1]
    expected = torch.stack([-dc.sum(), dc.sum()])  # c = b_1 - b_0
    torch.testing.assert_close(gb, expected, rtol=1e-9, atol=1e-12)
    # the stopped sample still passes a (small) gradient: the estimator, not the hard 0 of the forward pass
    (g_stopped,) = torch.autograd.grad((v[1:] * x1[1:]).sum(), model[1].bias)
    assert g_stopped.abs().max() > 0 and (x1[1] == x[1]).all()


def test_gradient_penalty_matches_autograd_on_a_small_critic():
    """``gp = (||grad_x D_k(x)||_2 - 1)^2`` against the closed form of a one-hidden-layer leaky-ReLU critic,
    ``grad_x D_k = W1^T (leaky'(W1 x + b1) * W2[k])``, and its parameter gradient against finite differences."""
    torch.manual_seed(0)
    critic = CriticNet(5, 3, [4], noise_input=0.0, noise_hidden=0.0, leak=0.2).double()
    x = torch.rand(7, 1, 1, 5, dtype=torch.float64)
    k = torch.randint(0, 3, (7,))
    z, gp = critic_scores(critic, x, k, penalty=True)
    w1, b1, w2 = critic.hidden[0].weight, critic.hidden[0].bias, critic.out.weight
    a = x.flatten(1) @ w1.T + b1
    slope = torch.where(a > 0, 1.0, 0.2).to(a)
    grad = (slope * w2[k]) @ w1
    torch.testing.assert_close(gp, (grad.norm(dim=1) - 1).pow(2))
    torch.testing.assert_close(z, critic(x).gather(1, k[:, None]).squeeze(1))

    def penalty_of(w1_):
        def with_w1(xx):
            return torch.func.functional_call(critic, {"hidden.0.weight": w1_}, (xx,))
        return critic_scores(with_w1, x, k, penalty=True)[1].sum()

    assert torch.autograd.gradcheck(penalty_of, (w1.detach().clone().requires_grad_(True),))


def _compose(overrides: list[str]):
    from cli_helpers import compose_checked

    return compose_checked("train", overrides)


TINY = ["experiment=quickstart", "model=mlp", "model.widths=[32]", "defense=critic", "defense.critic_widths=[32]",
        "defense.pretrain_epochs=0", "device=cpu", "deterministic=true", "max_batches_per_epoch=2", "batch_size=32"]


def test_one_digits_run_writes_the_critic_stats_and_resumes_exactly(tmp_path, monkeypatch):
    """Two epochs with the critic (no pre-training here, see the next test); a run stopped after epoch 1 and
    started again ends with the classifier, critic, critic optimizer and confidences of the uninterrupted run,
    bit for bit."""
    from robust_cli.training import loop

    cfg = _compose([*TINY, "epochs=2"])
    loop.fit(cfg, tmp_path / "a", [])
    history = pd.read_csv(tmp_path / "a" / "history.csv")
    stats = ["critic_loss", "critic_acc_real", "critic_acc_adv", "nll", "fool", "cycle", "attack_success"]
    assert set(stats) <= set(history.columns)
    assert history[stats].notna().all().all()
    assert ((history.critic_acc_real >= 0) & (history.critic_acc_real <= 1)).all()
    assert ((history.critic_acc_adv >= 0) & (history.critic_acc_adv <= 1)).all()
    assert (history.attack_success > 0).all() and (history.critic_loss > 0).all()

    class Stop(Exception):
        pass

    def stop(epoch, row, run):
        if epoch == 1:
            raise Stop

    monkeypatch.setattr(loop, "EPOCH_END_HOOKS", [stop])
    with pytest.raises(Stop):
        loop.fit(cfg, tmp_path / "b", [])
    monkeypatch.setattr(loop, "EPOCH_END_HOOKS", [])
    loop.fit(cfg, tmp_path / "b", [])
    a, b = (torch.load(tmp_path / r / "checkpoints" / "last.pt", weights_only=True) for r in "ab")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["defense"]["critic"]:
        assert torch.equal(a["defense"]["critic"][key], b["defense"]["critic"][key]), key
    assert torch.equal(a["defense"]["confidence"], b["defense"]["confidence"])
    sa, sb = a["defense"]["optimizer"]["state"], b["defense"]["optimizer"]["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    assert list(pd.read_csv(tmp_path / "b" / "history.csv").epoch) == [1, 2]


def test_pre_training_is_plain_cross_entropy_then_the_critic_starts():
    """Before ``pretrain_epochs`` only the confidences move (critic stats NaN, loss = CE); after it the loss
    adds the critic terms and the critic's learning rate follows the classifier schedule's factor."""
    from robust_cli.defenses.critic import Critic

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 4)).double()
    x = torch.rand(8, 1, 4, 4, dtype=torch.float64)
    y = torch.randint(0, 4, (8,))
    critic = Critic(critic_widths=[8])
    critic.begin_epoch(0, 1.0)
    out = critic(model, x, y)
    torch.testing.assert_close(out.loss, F.cross_entropy(model(x), y))
    assert math.isnan(out.stats["critic_loss"]) and not math.isnan(out.stats["confidence"])
    assert critic.confidence.min() < 1  # moved from its start at 1
    critic.begin_epoch(40, 0.5)
    assert critic.optimizer.param_groups[0]["lr"] == pytest.approx(0.5e-3)
    out = critic(model, x, y)
    assert not math.isnan(out.stats["critic_loss"]) and out.stats["nll"] < out.loss.item()


def test_the_cycle_term_is_differentiated_through_both_attacks(monkeypatch):
    """Eq. 4.5's ``||A(A(x, y_t), y_s) - x||_2``: the classifier's gradient of the cycle term is the one through
    the second attack *and* its starting point ``A(x, y_t)``; the same term with the start detached (a data
    point) gives another gradient, so the path through the first attack is really there."""
    import robust_cli.defenses.critic as critic_mod
    from robust_cli.defenses.critic import Critic

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 4)).double()
    x = torch.rand(16, 1, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)  # every image correctly classified: the cycle averages over the hits

    def cycle_gradient():
        torch.manual_seed(1)
        critic = Critic(critic_widths=[8], lam=0.0, lam_rec=1.0, pretrain_epochs=0)
        critic.begin_epoch(0, 1.0)
        model.zero_grad()
        out = critic(model, x, y)
        (out.loss - F.cross_entropy(model(x), y)).backward()  # the cycle term alone
        assert out.stats["attack_success"] > 0 and out.stats["cycle"] > 0
        return model[1].weight.grad.clone()

    through = cycle_gradient()
    real_steps, calls = critic_mod.high_confidence_steps, []

    def detached_start(net, start, *args, **kwargs):
        calls.append(start)
        return real_steps(net, start.detach() if len(calls) == 2 else start, *args, **kwargs)

    monkeypatch.setattr(critic_mod, "high_confidence_steps", detached_start)
    detached = cycle_gradient()
    assert len(calls) == 2 and calls[1].requires_grad  # the defense hands the second attack a live x_adv
    assert not torch.allclose(through, detached, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("override, expected", [
    ("defense.critic_widths=[]", "defense.critic_widths=[]: must be a list of at least 1 entry"),
    ("defense.lam=-0.1", "defense.lam=-0.1: must be >= 0"),
    ("defense.lam_rec=-1", "defense.lam_rec=-1"),
    ("defense.lam_grad=-10", "defense.lam_grad=-10"),
])
def test_bad_critic_options_fail_at_compose_time(override, expected):
    with pytest.raises(UserError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        _compose(["defense=critic", override])


@pytest.mark.slow  # a subprocess (the generic one-line path is covered by tests/test_train.py)
def test_bad_critic_option_is_one_line_on_the_command_line(tmp_path):
    proc = robust("train", "defense=critic", "defense.critic_widths=[]", f"out_dir={tmp_path}")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "defense.critic_widths" in lines[0] and "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())


def test_presets_compose_with_the_thesis_settings():
    lenet = _compose(["experiment=thesis_mnist_lenet5_critic"])
    mlp = _compose(["experiment=thesis_mnist_mlp_critic"])
    assert lenet.defense.lam == 0.1 and mlp.defense.lam == 0.5 and list(mlp.model.widths) == [1200] * 3
    for cfg in (lenet, mlp):
        assert cfg.optimizer.lr == 5e-4 and list(cfg.optimizer.betas)[0] == 0.5 and cfg.defense.critic_lr == 1e-3
        assert list(cfg.schedule.milestones) == [40, 80] and cfg.schedule.gamma == 0.5 and cfg.epochs == 100
        assert cfg.defense.lam_rec == 0.01 and cfg.defense.lam_grad == 10 and cfg.defense.steps == 5
        assert list(cfg.defense.critic_widths) == [1200, 1200] and cfg.defense.pretrain_epochs == 1
