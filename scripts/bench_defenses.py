#!/usr/bin/env python
"""Cost of one training step of each defense relative to ``defense=none`` (same model, same batch).

One training step = ``defense(model, x, y)``, ``zero_grad``, ``loss.backward()``, ``optimizer.step()``.
All defenses are timed in one process, interleaved round-robin (every repeat runs every defense once, in a
rotated order so that no defense always follows the same one), and each defense's median over the repeats is
divided by the median of ``none``. Inputs are synthetic tensors of the data sets' shapes (MNIST 1x28x28,
CIFAR 3x32x32, 10 classes): the cost of a step does not depend on the pixel values.

    .venv/bin/python scripts/bench_defenses.py                     # CPU defaults, about 2-3 minutes
    .venv/bin/python scripts/bench_defenses.py --device cuda --batch 128 --repeats 20 \
        --resnet-width 64 --resnet-blocks 3 4 6 3                  # ResNet-34 on a GPU
    .venv/bin/python scripts/bench_defenses.py --profile tulip     # where one defense's step spends its time
    .venv/bin/python scripts/bench_defenses.py --models lenet5 mlp --defenses critic critic_nocycle \
        --batch 100                                                # the adversary critic (issue 12)

Targets (issue 3): at_fgsm, at_l2 <= 2.0x; tulip (double backprop) <= 3.5x; tulip (finite differences)
<= 2.5x; pgd_at with k steps <= (k + 1.2)x. Other defenses are listed without a target.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from robust_cli.defenses import build_defense

# name in the table -> (defense config, target ratio or None)
VARIANTS: dict[str, tuple[dict, float | None]] = {
    "none": ({"name": "none", "_target_": "robust_cli.defenses.none.NoDefense"}, None),
    "at_fgsm": ({"name": "at_fgsm", "_target_": "robust_cli.defenses.at_fgsm.AtFgsm"}, 2.0),
    "at_l2": ({"name": "at_l2", "_target_": "robust_cli.defenses.at_l2.AtL2"}, 2.0),
    "lip": ({"name": "lip", "_target_": "robust_cli.defenses.lip.Lip"}, None),
    "lip_fd": ({"name": "lip", "_target_": "robust_cli.defenses.lip.Lip", "method": "finite_difference"}, None),
    "tulip": ({"name": "tulip", "_target_": "robust_cli.defenses.tulip.Tulip"}, 3.5),
    "tulip_fd": ({"name": "tulip", "_target_": "robust_cli.defenses.tulip.Tulip",
                  "method": "finite_difference"}, 2.5),
    "pgd_at": ({"name": "pgd_at", "_target_": "robust_cli.defenses.pgd_at.PgdAt", "steps": 7}, 7 + 1.2),
    "trades": ({"name": "trades", "_target_": "robust_cli.defenses.trades.Trades", "steps": 10}, None),
    "vat": ({"name": "vat", "_target_": "robust_cli.defenses.vat.Vat"}, None),
    "margin": ({"name": "margin", "_target_": "robust_cli.defenses.margin.Margin"}, None),
    # the adversary critic past its pre-training epoch: 5 attack steps with their graph (second order), the
    # critic's own step, the 5-step cycle attack; critic_nocycle leaves out the cycle term (lam_rec=0)
    "critic": ({"name": "critic", "_target_": "robust_cli.defenses.critic.Critic", "pretrain_epochs": 0}, None),
    "critic_nocycle": ({"name": "critic", "_target_": "robust_cli.defenses.critic.Critic", "pretrain_epochs": 0,
                        "lam_rec": 0.0}, None),
}


def build(kind: str, width: int, blocks: list[int]) -> tuple[nn.Module, tuple[int, int, int]]:
    """The benchmark models through ``robust_cli.models.build_model`` (LeNet-5 on MNIST, a CIFAR ResNet)."""
    from robust_cli.data.info import DatasetInfo
    from robust_cli.models import build_model

    if kind in ("lenet5", "mlp"):
        info = DatasetInfo("mnist", (1, 28, 28), 10, (0.1307,), (0.3081,))
        cfg = ({"_target_": "robust_cli.models.lenet5.LeNet5", "name": "lenet5"} if kind == "lenet5" else
               {"_target_": "robust_cli.models.mlp.MLP", "name": "mlp", "widths": [1200, 1200, 1200]})
    else:
        info = DatasetInfo("cifar10", (3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
        cfg = {"_target_": "robust_cli.models.resnet.ResNet34", "name": "resnet34", "width": width,
               "blocks": list(blocks)}
    return build_model(cfg, info), info.in_shape


def step_fn(defense: Callable, model: nn.Module, opt: torch.optim.Optimizer, x, y) -> Callable[[], None]:
    def step() -> None:
        out = defense(model, x, y)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    return step


def time_model(kind: str, args, device: torch.device) -> dict[str, float]:
    model, shape = build(kind, args.resnet_width, args.resnet_blocks)
    model = model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, *shape, generator=gen).to(device)
    y = torch.randint(0, 10, (args.batch,), generator=gen).to(device)
    names = [n for n in args.defenses if n in VARIANTS]
    steps = {n: step_fn(build_defense(VARIANTS[n][0]), model, opt, x, y) for n in names}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for n in names:  # warm-up: allocator, kernels, lazy inits
        for _ in range(args.warmup):
            steps[n]()
    sync()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            sync()
            t0 = time.perf_counter()
            for _ in range(args.inner):
                steps[n]()
            sync()
            times[n].append((time.perf_counter() - t0) / args.inner)
        print(f"  {kind}: round {r + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    return {n: statistics.median(v) for n, v in times.items()}


def profile(name: str, kind: str, args, device: torch.device) -> None:
    """Print the top operators (self time) of a few steps of one defense, and of ``none`` for comparison."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    model, shape = build(kind, args.resnet_width, args.resnet_blocks)
    model = model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    x = torch.rand(args.batch, *shape, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for n in ("none", name):
        step = step_fn(build_defense(VARIANTS[n][0]), model, opt, x, y)
        step()
        with tprofile(activities=acts) as prof:
            for _ in range(args.inner * 2):
                step()
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(f"\n### {kind}: {n} ({args.inner * 2} steps)")
        print(prof.key_averages().table(sort_by=key, row_limit=args.profile_rows))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--models", nargs="+", default=["lenet5", "resnet"], choices=["lenet5", "mlp", "resnet"])
    p.add_argument("--defenses", nargs="+", default=list(VARIANTS), help=f"subset of {list(VARIANTS)}")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5, help="round-robin rounds; the median is reported")
    p.add_argument("--inner", type=int, default=1, help="steps per timing (their mean is one sample)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--resnet-width", type=int, default=8, help="first-stage channels (ResNet-34: 64)")
    p.add_argument("--resnet-blocks", type=int, nargs=4, default=[1, 1, 1, 1], help="ResNet-34: 3 4 6 3")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    p.add_argument("--profile", default=None, help="profile this defense instead of timing all")
    p.add_argument("--profile-rows", type=int, default=15)
    p.add_argument("--no-mkldnn", action="store_true",
                   help="CPU: PyTorch's native convolutions instead of oneDNN's (whose input-gradient kernel "
                        "for a 1-channel convolution is slow; see BENCHMARKS.md)")
    args = p.parse_args(argv)
    if args.no_mkldnn:
        torch.backends.mkldnn.enabled = False
    if "none" not in args.defenses:
        args.defenses = ["none", *args.defenses]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    print(f"# torch {torch.__version__}, device {device}"
          f"{' ' + torch.cuda.get_device_name(device) if device.type == 'cuda' else ''}, "
          f"threads {torch.get_num_threads()}, mkldnn {torch.backends.mkldnn.enabled}, batch {args.batch}, "
          f"repeats {args.repeats} x {args.inner} steps")
    if args.profile:
        for kind in args.models:
            profile(args.profile, kind, args, device)
        return 0
    results = {kind: time_model(kind, args, device) for kind in args.models}
    label = {"lenet5": "LeNet-5 (MNIST 1x28x28)", "mlp": "MLP 3x1200 (MNIST)",
             "resnet": f"ResNet w{args.resnet_width} {args.resnet_blocks} (CIFAR 3x32x32)"}
    print("\n| defense | target | " + " | ".join(f"{label[k]}: ms / ratio" for k in args.models) + " |")
    print("|---|---|" + "---|" * len(args.models))
    missed = []
    for n in args.defenses:
        target = VARIANTS[n][1]
        cells = []
        for kind in args.models:
            t = results[kind][n]
            ratio = t / results[kind]["none"]
            flag = "" if target is None or ratio <= target else " (missed)"
            if flag:
                missed.append(f"{n}@{kind}")
            cells.append(f"{t * 1e3:.1f} / {ratio:.2f}x{flag}")
        tgt = "" if target is None else f"<= {target:g}x"
        print(f"| {n} | {tgt} | " + " | ".join(cells) + " |")
    if missed:
        print(f"\nmissed targets: {', '.join(missed)} (see --profile)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
