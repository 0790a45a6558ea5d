"""Learning-rate schedules, the Tikhonov penalty and checkpoint round trips."""

import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from robust_cli.errors import UserError
from robust_cli.training.optim import build_optimizer, tikhonov_penalty
from robust_cli.training.schedules import lr_at


def sched(**kw):
    base = {"name": "multistep", "milestones": [], "gamma": 0.1, "eta_min": 0.0, "warmup_epochs": 0}
    return OmegaConf.create({**base, **kw})


def test_finlay_multistep_divides_by_five_at_60_120_180():
    s = sched(milestones=[60, 120, 180], gamma=0.2)
    lrs = [lr_at(e, 0.1, s, 200) for e in (0, 59, 60, 119, 120, 180, 199)]
    assert lrs == pytest.approx([0.1, 0.1, 0.02, 0.02, 0.004, 0.0008, 0.0008])


def test_exponential_cosine_constant_and_warmup():
    assert lr_at(10, 1e-3, sched(name="exponential", gamma=0.95), 100) == pytest.approx(1e-3 * 0.95**10)
    cos = sched(name="cosine", eta_min=0.001)
    assert lr_at(0, 0.1, cos, 10) == pytest.approx(0.1)
    assert lr_at(5, 0.1, cos, 10) == pytest.approx(0.001 + 0.5 * 0.099 * (1 + math.cos(math.pi / 2)))
    assert lr_at(7, 0.3, sched(name="constant"), 10) == 0.3
    # within an epoch: cosine moves every step, step schedules wait for the epoch boundary
    assert lr_at(0.5, 0.1, cos, 1) == pytest.approx(0.001 + 0.5 * 0.099)
    assert lr_at(59.9, 0.1, sched(milestones=[60], gamma=0.2), 100) == pytest.approx(0.1)
    assert lr_at(2.5, 1.0, sched(name="exponential", gamma=0.5), 10) == pytest.approx(0.25)
    warm = sched(name="constant", warmup_epochs=4)
    assert [lr_at(e, 1.0, warm, 10) for e in range(5)] == pytest.approx([0.1, 0.325, 0.55, 0.775, 1.0])
    with pytest.raises(UserError):
        lr_at(0, 0.1, sched(name="sawtooth"), 10)


def test_tikhonov_counts_only_non_bias_weights():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(2.0)
    expected = 4.0 * (2 * 1 * 3 * 3 + 3 * 2)  # conv weight and linear weight only
    assert tikhonov_penalty(model).item() == pytest.approx(expected)


def test_optimizers():
    params = [nn.Parameter(torch.zeros(2))]
    base = {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.0, "betas": [0.5, 0.9]}
    assert isinstance(build_optimizer(params, OmegaConf.create({**base, "name": "sgd"})), torch.optim.SGD)
    adam = build_optimizer(params, OmegaConf.create({**base, "name": "adam"}))
    assert isinstance(adam, torch.optim.Adam) and adam.defaults["betas"] == (0.5, 0.9)
    assert isinstance(build_optimizer(params, OmegaConf.create({**base, "name": "adamw"})), torch.optim.AdamW)


def test_channels_last_and_tikhonov_train_in_process(tmp_path):
    """The options that change how a step runs (channels_last, tikhonov, amp on CPU -> fp32) still train."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from robust_cli.config import register_configs
    from robust_cli.training.loop import fit

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module("robust_cli.conf", version_base=None):
        cfg = compose("train", overrides=["experiment=quickstart", "model=resnet34", "channels_last=true",
                                          "tikhonov=5e-4", "amp=true", "epochs=1", "device=cpu",
                                          "max_batches_per_epoch=3", "batch_size=16"])
    GlobalHydra.instance().clear()
    final = fit(cfg, tmp_path / "run", [])
    assert final["epoch"] == 1 and 0 <= final["test_error"] <= 1 and final["train_loss"] > 0
    assert (tmp_path / "run" / "model.pt").is_file()


class _RunsCode:
    """Unpickling this calls ``os.system``: what a hostile checkpoint would do."""

    def __reduce__(self):
        import os

        return (os.system, ("touch should-not-exist",))


def test_checkpoints_refuse_pickles_that_run_code(tmp_path, monkeypatch):
    """``load_checkpoint`` and ``load_trained_model`` read with weights_only: a pickle carrying a callable is
    refused with one line, and the callable never runs."""
    from robust_cli.training.checkpoint import load_checkpoint, load_trained_model

    monkeypatch.chdir(tmp_path)
    torch.save({"model": _RunsCode()}, tmp_path / "last.pt")
    with pytest.raises(UserError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "last.pt")
    torch.save({"state_dict": _RunsCode()}, tmp_path / "model.pt")
    with pytest.raises(UserError, match="cannot read"):
        load_trained_model(tmp_path)
    assert not (tmp_path / "should-not-exist").exists()


def test_unwrap_strips_ddp_dataparallel_and_compile_wrappers():
    from robust_cli.defenses import base
    from robust_cli.models import wrappers
    from robust_cli.training import checkpoint

    assert base.unwrap is wrappers.unwrap is checkpoint.unwrap
    bare = nn.Linear(2, 2)
    assert wrappers.unwrap(bare) is bare
    assert wrappers.unwrap(nn.DataParallel(bare)) is bare

    class Compiled(nn.Module):  # the shape of torch.compile's OptimizedModule
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

    assert wrappers.unwrap(Compiled(nn.DataParallel(bare))) is bare
    holder = nn.Sequential()
    holder.add_module("module", bare)  # a plain model with a child named "module" is not a wrapper
    assert wrappers.unwrap(holder) is holder


def test_divergence_checks_and_the_lr_origin():
    """``training.divergence``: non-finite losses, weights beyond the bound, an epoch whose every step is far
    above chance-level cross-entropy; the message blames the schedule only where it raised the lr."""
    from robust_cli.training import divergence as dv

    cfg = OmegaConf.create({"optimizer": {"lr": 0.01}, "dataset": {"num_classes": 10},
                            "schedule": {**sched(milestones=[2], gamma=1e30)}})
    dv.check_step(2.3, 1, 0, 0.0, 0.01, cfg)
    with pytest.raises(dv.Diverged, match=r"epoch 3: the loss became nan at step 2; at lr 0.01 .*lower optimizer.lr"):
        dv.check_step(float("nan"), 3, 1, 2.5, 0.01, cfg)
    with pytest.raises(dv.Diverged, match=r"schedule.gamma=1e\+30 at milestones \[2\].*fix the schedule"):
        dv.check_step(float("inf"), 3, 0, 2.0, 1e28, cfg)
    model = nn.Linear(3, 2)
    dv.check_epoch(model, 4, 5, 1, 0.8, 0.01, cfg)  # one step below the bound: not diverged
    with pytest.raises(dv.Diverged, match=r"stayed above 2303 \(1000 x chance-level cross-entropy ln 10\)"):
        dv.check_epoch(model, 5, 5, 2, 1.8, 0.01, cfg)
    with torch.no_grad():
        model.weight[0, 0] = 2 * dv.MAX_WEIGHT
    with pytest.raises(dv.Diverged, match=r"max \|weight\| 2e\+04 .*checkpoint of epoch 1 kept"):
        dv.check_epoch(model, 0, 5, 2, 1.8, 0.01, cfg)
    with torch.no_grad():
        model.bias[0] = float("nan")
    with pytest.raises(dv.Diverged, match="max \\|weight\\| nan"):
        dv.check_epoch(model, 0, 5, 1, 0.8, 0.01, cfg)
