"""CUDA paths (marker ``gpu``; skipped without CUDA): attacks on CUDA agree with the CPU, a training step on
CUDA agrees with the CPU's, amp (bf16 autocast) and channels_last train, and the training loader's device
placements (resident, pinned + non_blocking) serve exactly the CPU's batches.

Run by scripts/gpu_check.sh; ``pytest -m gpu`` alone runs these.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from linear_reference import make_problem, minimal_distance
from omegaconf import OmegaConf
from torch import nn

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
CUDA = torch.device("cuda")
CPU = torch.device("cpu")


def conv_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(16 * 8 * 8, 10))


@pytest.fixture(autouse=True)
def exact_matmuls():
    """fp32 matmuls and convolutions in full fp32 on CUDA (no TF32), so CPU and CUDA agree to ~1e-5."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def run(model, x, y, attack, norm, params, device, **kw):
    from robust_cli.evaluation.runner import run_attack

    model = model.to(device).eval()
    return run_attack(model, x, y, attack, norm, params, batch_size=16, search_steps=8, device=device, seed=0, **kw)


@pytest.mark.parametrize("attack_name, norm", [("deepfool", "l2"), ("ddn", "l2"), ("fmn", "linf"),
                                               ("pgd", "linf"), ("cw", "l2")])
def test_attacks_on_cuda_equal_cpu(attack_name, norm):
    import importlib

    attack = getattr(importlib.import_module(f"robust_cli.attacks.{attack_name}"), attack_name)
    model, x, y = make_problem(n=32, in_shape=(3, 6, 6), num_classes=4, seed=3)
    params = {"ddn": {"steps": 20}, "fmn": {"steps": 20}, "pgd": {"steps": 20},
              "cw": {"steps": 100, "search_steps": 5}}.get(attack_name, {})
    cpu = run(model, x, y, attack, norm, params, CPU).frame
    gpu = run(model, x, y, attack, norm, params, CUDA).frame
    assert (cpu["adv_pred"] != cpu["label"]).sum() == (gpu["adv_pred"] != gpu["label"]).sum()
    d_cpu, d_gpu = cpu["distance"].to_numpy(), gpu["distance"].to_numpy()
    assert (np.isfinite(d_cpu) == np.isfinite(d_gpu)).all()
    ok = np.isfinite(d_cpu)
    # different kernels, different summation orders: the same distances up to the search's resolution
    np.testing.assert_allclose(d_gpu[ok], d_cpu[ok], rtol=2e-2, atol=1e-3)
    if attack_name == "deepfool":
        exact = minimal_distance(model.cpu(), x, y, norm).numpy()
        assert (d_gpu >= exact * (1 - 1e-5)).all()


def test_low_precision_attack_on_cuda_matches_fp32():
    from robust_cli.acceleration import attack_model
    from robust_cli.attacks.ddn import ddn

    model = conv_net().eval().to(CUDA)
    x = torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x.to(CUDA)).argmax(1).cpu()
    fp32 = run(model, x, y, ddn, "l2", {"steps": 30}, CUDA).frame["distance"].to_numpy()
    for precision in ("bf16", "fp16"):
        low = attack_model(model, CUDA, precision=precision)
        d = run(model, x, y, ddn, "l2", {"steps": 30}, CUDA, attack_model=low).frame["distance"].to_numpy()
        assert np.isfinite(d).all() == np.isfinite(fp32).all()
        assert abs(np.median(d) - np.median(fp32)) <= 0.03 * np.median(fp32), precision


def test_training_step_on_cuda_equals_cpu_and_amp_trains():
    x = torch.rand(32, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (32,), generator=torch.Generator().manual_seed(2))
    params = {}
    for name, device, amp, channels_last in (("cpu", CPU, False, False), ("cuda", CUDA, False, False),
                                             ("cuda", CUDA, False, True), ("cuda", CUDA, True, True)):
        net = conv_net(seed=4).to(device).train()
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        xb, yb = x.to(device), y.to(device)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        losses = []
        for _ in range(5):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                loss = nn.functional.cross_entropy(net(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss))
        params[name, amp, channels_last] = torch.cat([p.detach().cpu().flatten() for p in net.parameters()])
        assert np.isfinite(losses).all() and losses[-1] < losses[0], (device, amp, channels_last, losses)
    torch.testing.assert_close(params["cuda", False, False], params["cpu", False, False], rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(params["cuda", False, True], params["cpu", False, False], rtol=1e-3, atol=1e-4)
    # bf16 autocast: the same training up to bf16's precision
    torch.testing.assert_close(params["cuda", True, True], params["cpu", False, False], rtol=0.05, atol=0.02)


@pytest.mark.parametrize("resident", [True, False])
def test_loader_placements_serve_the_cpu_batches(resident):
    from robust_cli.training.batches import Batches

    x = torch.rand(100, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (100,), generator=torch.Generator().manual_seed(1))
    aug = OmegaConf.create({"crop_padding": 2, "flip": True, "cutout": 3})
    cpu, gpu = Batches(x, y, CPU), Batches(x, y, CUDA, resident=resident, channels_last=True)
    g_cpu, g_gpu = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for idx in torch.randperm(100, generator=torch.Generator().manual_seed(2)).split(16):
        xa, ya = cpu.batch(idx, aug, g_cpu)
        xb, yb = gpu.batch(idx, aug, g_gpu)
        assert xb.device.type == "cuda" and xb.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(xa, xb.cpu()) and torch.equal(ya, yb.cpu())


def test_robust_train_on_cuda_with_amp_and_channels_last(tmp_path):
    from test_shards import compose

    from robust_cli.training.loop import fit

    cfg = compose("train", ["experiment=quickstart", "epochs=1", "device=cuda", "amp=true", "channels_last=true",
                            "max_batches_per_epoch=5"])
    final = fit(cfg, tmp_path / "run", [])
    assert 0 <= final["test_error"] <= 1 and np.isfinite(final["train_loss"])
