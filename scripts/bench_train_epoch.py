#!/usr/bin/env python
"""Images/s of one training epoch of ``robust train``'s step, and how long the step waits for its data.

One epoch over a synthetic data set of the chosen shape (CIFAR 3x32x32 by default; the pixel values do not
change the cost of a step), batches served by the training loop's own loader
(robust_cli.training.batches.Batches: device-resident when it fits, else pinned host memory) with the
data set's augmentation (CIFAR: crop 4 + flip), and the loop's step (defense ``none``: forward, CE,
backward, SGD step; ``--amp``: bf16 autocast as ``amp=true``; ``--channels-last``). Printed side by side,
in one run, per model:

- ``epoch img/s``: the epoch with the loader;
- ``no-loader img/s``: the same number of steps on one batch already on the device (the step alone);
- ``loader wait``: ``1 - epoch / no-loader`` throughput, the share of the epoch the step waits for data
  (the loader's idle cost; ~0 when data loading is not the bottleneck), and the host time spent inside the
  loader's ``batch()`` calls as a share of the epoch.

    .venv/bin/python scripts/bench_train_epoch.py --device cuda                     # ResNet-18, ResNeXt-34
    .venv/bin/python scripts/bench_train_epoch.py --device cpu --models lenet5 --shape 1 28 28 --images 4096
    .venv/bin/python scripts/bench_train_epoch.py --quick                           # seconds: a smoke run

Target (issue 16): plain CIFAR-10 ResNet-18 training >= 25k images/s on an H100-class GPU with amp and
channels_last.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from omegaconf import OmegaConf

from robust_cli.data.info import DatasetInfo
from robust_cli.defenses import build_defense
from robust_cli.models import build_model
from robust_cli.training.batches import Batches

MODELS = {
    # the plain CIFAR ResNet-18: the ResNet class with basic blocks [2, 2, 2, 2], widths 64..512
    "resnet18": {"_target_": "robust_cli.models.resnet.ResNet34", "name": "resnet34", "blocks": [2, 2, 2, 2]},
    "resnext34": {"_target_": "robust_cli.models.resnext.ResNeXt34", "name": "resnext34"},
    "lenet5": {"_target_": "robust_cli.models.lenet5.LeNet5", "name": "lenet5"},
}
TINY = {"resnet18": {"width": 8}, "resnext34": {"width": 8, "blocks": [1, 1, 1]}}  # --quick


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def epoch(name: str, args, device: torch.device) -> dict[str, float]:
    shape = tuple(args.shape)
    info = DatasetInfo("synthetic", shape, 10, (0.5,) * shape[0], (0.25,) * shape[0])
    cfg = dict(MODELS[name], **(TINY.get(name, {}) if args.quick else {}))
    model = build_model(OmegaConf.create(cfg), info).to(device).train()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    defense = build_defense(OmegaConf.create({"name": "none", "_target_": "robust_cli.defenses.none.NoDefense"}))
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(args.images, *shape, generator=gen)
    y = torch.randint(0, 10, (args.images,), generator=gen)
    augment = OmegaConf.create({"crop_padding": 4 if shape[-1] == 32 else 0, "flip": shape[-1] == 32, "cutout": 0})
    amp = args.amp and device.type == "cuda"

    def step(xb, yb) -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            out = defense(model, xb, yb)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    batches = Batches(x, y, device, channels_last=args.channels_last)
    perm = torch.randperm(args.images, generator=gen)
    order = [perm[i:i + args.batch] for i in range(0, args.images - args.batch + 1, args.batch)]
    fixed = batches.batch(order[0], augment, gen)
    for _ in range(args.warmup):  # cudnn autotuning, allocator, lazy inits
        step(*fixed)
    sync(device)

    t0 = time.perf_counter()
    in_loader = 0.0
    for idx in order:
        t1 = time.perf_counter()
        xb, yb = batches.batch(idx, augment, gen)
        in_loader += time.perf_counter() - t1
        step(xb, yb)
    sync(device)
    with_loader = time.perf_counter() - t0

    t0 = time.perf_counter()
    for _ in order:
        step(*fixed)
    sync(device)
    alone = time.perf_counter() - t0
    n = len(order) * args.batch
    return {"images": n, "epoch": n / with_loader, "alone": n / alone, "wait": 1 - alone / with_loader,
            "in_loader": in_loader / with_loader, "resident": float(batches.resident)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", nargs="+", default=["resnet18", "resnext34"], choices=list(MODELS))
    p.add_argument("--shape", type=int, nargs=3, default=[3, 32, 32], help="C H W of the synthetic images")
    p.add_argument("--images", type=int, default=None, help="epoch size (default 50000 on CUDA, 2048 on CPU)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 512 on CUDA, 128 on CPU)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True, help="bf16 autocast (CUDA)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="tiny models and epoch: a smoke run in seconds")
    p.add_argument("--allocator", default="robust", choices=["robust", "glibc"],
                   help="glibc's allocator as `robust train` sets it (robust_cli.host_memory), or glibc's own")
    args = p.parse_args(argv)
    from robust_cli.host_memory import reuse_freed_host_memory

    allocator = "robust" if args.allocator == "robust" and reuse_freed_host_memory() else "glibc's"
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.images, args.batch, args.warmup = args.images or 64, args.batch or 16, args.warmup or 1
    args.images = args.images or (50_000 if cuda else 2048)
    args.batch = args.batch or (512 if cuda else 128)
    args.warmup = 10 if args.warmup is None and cuda else (args.warmup or 2)
    if cuda:
        torch.backends.cudnn.benchmark = True
    print(f"# torch {torch.__version__}, device {device}{' ' + torch.cuda.get_device_name(device) if cuda else ''}"
          f", threads {torch.get_num_threads()}, images {args.images} x {tuple(args.shape)}, batch {args.batch}, "
          f"amp {args.amp and cuda}, channels_last {args.channels_last}{', quick (tiny models)' if args.quick else ''}"
          f", host allocator {allocator}")
    print("\n| model | epoch img/s | no-loader img/s | loader wait | host time in loader | data on device |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        r = epoch(name, args, device)
        print(f"| {name} | {r['epoch']:.0f} | {r['alone']:.0f} | {100 * r['wait']:.1f}% | "
              f"{100 * r['in_loader']:.1f}% | {'yes' if r['resident'] else 'no'} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
