"""Data-parallel training (robust_cli.training.distributed) on CPU with the gloo backend and 2 processes.

The reference is single-process training: with a global batch B split as B/2 per rank, a DistributedSampler
(whose rank batches together are the single-process batch) and DDP's gradient averaging, every SGD step is
the gradient of the mean loss over the same B examples, so the parameters must agree up to floating-point
summation order (see the module docstring of distributed.py). The model has no BatchNorm and no dropout,
the one case where the equality is exact in exact arithmetic.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from robust_cli.models.wrappers import unwrap
from robust_cli.training import distributed as D

N, DIM, K, BATCH, EPOCHS, EPS = 64, 12, 3, 16, 2, 0.05


def _data() -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(N, DIM, generator=g)
    y = torch.randint(0, K, (N,), generator=g)
    return torch.utils.data.TensorDataset(x, y)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(DIM, 16), nn.Tanh(), nn.Linear(16, K))


def _train(cfg) -> dict:
    """Adversarial-training-shaped loop: an inner FGSM step through the (DDP) model in eval mode, then a
    training step on the perturbed inputs, as a defense does. Returns rank 0's parameters and the globally
    summed count of training mistakes and examples."""
    ctx = D.init(cfg.trainer, "cpu")
    try:
        data = _data()
        model = D.wrap(_model(), ctx)
        opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
        smp = D.sampler(data, ctx, shuffle=True, seed=3)
        loader = torch.utils.data.DataLoader(data, batch_size=D.per_rank_batch_size(BATCH, ctx), sampler=smp)
        wrong = torch.zeros(2, dtype=torch.float64)  # [mistakes, examples]
        for epoch in range(EPOCHS):
            smp.set_epoch(epoch)
            for x, y in loader:
                model.eval()
                xa = x.clone().requires_grad_(True)
                (gx,) = torch.autograd.grad(F.cross_entropy(model(xa), y), xa)
                xa = (x + EPS * gx.sign()).detach()
                model.train()
                logits = model(xa)
                loss = F.cross_entropy(logits, y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                wrong += torch.tensor([(logits.argmax(1) != y).sum().item(), len(y)], dtype=torch.float64)
        D.all_reduce_sum(wrong, ctx)
        D.barrier(ctx)
        params = {k: v.detach().clone() for k, v in unwrap(model).state_dict().items()}
        return {"params": params, "wrong": wrong.tolist(), "world_size": ctx.world_size}
    finally:
        D.cleanup(ctx)


def _fail_on_rank1(cfg) -> None:
    ctx = D.init(cfg.trainer, "cpu")
    try:
        if ctx.rank == 1:
            raise RuntimeError("rank 1 fails on purpose")
    finally:
        D.cleanup(ctx)


def _cfg(devices: int):
    return OmegaConf.create({"trainer": {"devices": devices, "backend": "auto"}})


def test_single_process_context_is_identity(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    ctx = D.init(_cfg(1).trainer, "cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.distributed) == (0, 1, True, False)
    m = _model()
    assert D.wrap(m, ctx) is m and unwrap(m) is m
    t = torch.tensor([1.0, 2.0])
    assert D.all_reduce_sum(t, ctx).tolist() == [1.0, 2.0]
    assert D.per_rank_batch_size(16, ctx) == 16
    with pytest.raises(ValueError, match="divisible"):
        D.per_rank_batch_size(15, D.DistContext(world_size=2))
    # The W=1 sampler visits every index once per epoch, in an order that changes with the epoch.
    smp = D.sampler(_data(), ctx, shuffle=True, seed=3)
    smp.set_epoch(0)
    e0 = list(smp)
    smp.set_epoch(1)
    assert sorted(e0) == list(range(N)) and list(smp) != e0


def test_rank_batches_union_is_single_process_batch():
    """The property the equivalence rests on, checked on the samplers alone."""
    data = _data()
    single = D.sampler(data, D.DistContext(), seed=3)
    ranks = [D.sampler(data, D.DistContext(rank=r, world_size=2), seed=3) for r in (0, 1)]
    for epoch in (0, 1):
        for s in [single, *ranks]:
            s.set_epoch(epoch)
        order = list(single)
        per_rank = [list(s) for s in ranks]
        half = BATCH // 2
        for t in range(N // BATCH):
            union = set(per_rank[0][t * half:(t + 1) * half]) | set(per_rank[1][t * half:(t + 1) * half])
            assert union == set(order[t * BATCH:(t + 1) * BATCH])


def test_ddp_two_gloo_processes_match_single_process():
    single = D.launch(_train, _cfg(1))
    ddp = D.launch(_train, _cfg(2))
    assert single["world_size"] == 1 and ddp["world_size"] == 2
    # Same examples seen, and the same mistakes on them (logits agree to float precision).
    assert ddp["wrong"][1] == single["wrong"][1] == EPOCHS * N
    assert ddp["wrong"][0] == single["wrong"][0]
    init = _model().state_dict()
    for k, p in single["params"].items():
        assert not torch.allclose(p, init[k]), "training did not move the parameters"
        torch.testing.assert_close(ddp["params"][k], p, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_launch_raises_when_a_rank_fails():
    with pytest.raises(Exception, match="rank 1 fails on purpose"):
        D.launch(_fail_on_rank1, _cfg(2))


@pytest.mark.slow
def test_robust_train_devices_2_matches_devices_1(tmp_path):
    """End to end: `robust train experiment=quickstart` with trainer.devices=2 vs 1 ends with the same
    clean test error, and only rank 0 wrote the run directory (one history row per epoch)."""
    import pandas as pd

    robust = shutil.which("robust", path=str(Path(sys.executable).parent))
    if robust is None or not (Path(__file__).parents[1] / "conf" / "experiment" / "quickstart.yaml").exists():
        pytest.skip("`robust train experiment=quickstart` is not available yet")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    runs = {}
    for devices in (1, 2):
        out = tmp_path / f"d{devices}"
        res = subprocess.run(
            [robust, "train", "experiment=quickstart", "epochs=3", f"trainer.devices={devices}", f"out_dir={out}",
             "device=cpu"],
            check=True, env=env, timeout=300, capture_output=True, text=True,
        )
        # the epochs are reported once, by rank 0 (a spawned rank has no log handler of its own)
        assert sum("epoch 3/3" in line for line in res.stderr.splitlines()) == 1, res.stderr[-2000:]
        (hist,) = list(out.glob("train/**/history.csv"))
        runs[devices] = pd.read_csv(hist)
    h1, h2 = runs[1], runs[2]
    assert list(h2["epoch"]) == list(h1["epoch"]) == list(range(1, len(h1) + 1))
    assert h2["test_error"].iloc[-1] == pytest.approx(h1["test_error"].iloc[-1], abs=1.5 / 297)
