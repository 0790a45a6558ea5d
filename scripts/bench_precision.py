#!/usr/bin/env python
"""Attacks under ``precision=fp32|bf16|fp16`` and ``compile=true``: wall time and distances, side by side.

Every variant runs through the evaluation's runner (robust_cli.evaluation.runner.run_attack: the fp32
verification, the low-precision finish in fp32) on the same model and images, one after another in one
process; printed per variant: seconds, the ratio to fp32, the median distance and the largest per-image
relative difference to the fp32 distances, and the success rate.

    .venv/bin/python scripts/bench_precision.py                      # CPU: LeNet-5, MNIST-shaped, ~1 min
    .venv/bin/python scripts/bench_precision.py --device cuda --model resnet18 --n 1024 --batch 512
    .venv/bin/python scripts/bench_precision.py --compile            # adds torch.compile (slow to build)

The model is randomly initialised (a trained model's cost is the same; its distances are only compared
between the variants).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from omegaconf import OmegaConf

from robust_cli.acceleration import attack_model
from robust_cli.attacks.ddn import ddn
from robust_cli.attacks.pgd import pgd
from robust_cli.data.info import DatasetInfo
from robust_cli.evaluation.runner import run_attack
from robust_cli.models import build_model

MODELS = {
    "lenet5": ((1, 28, 28), {"_target_": "robust_cli.models.lenet5.LeNet5", "name": "lenet5"}),
    "resnet18": ((3, 32, 32), {"_target_": "robust_cli.models.resnet.ResNet34", "name": "resnet34",
                               "blocks": [2, 2, 2, 2]}),
}
ATTACKS = {"ddn": (ddn, "l2", {"steps": 50}), "pgd": (pgd, "linf", {"steps": 10})}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="lenet5", choices=list(MODELS))
    p.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=list(ATTACKS))
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--search-steps", type=int, default=5, help="eps search steps of the budget attack (pgd)")
    p.add_argument("--compile", action="store_true", help="also torch.compile (fp32 and bf16)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shape, cfg = MODELS[args.model]
    info = DatasetInfo("synthetic", shape, 10, (0.5,) * shape[0], (0.25,) * shape[0])
    torch.manual_seed(0)
    model = build_model(OmegaConf.create(cfg), info).to(device).eval()
    x = torch.rand(args.n, *shape, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        y = model(x).argmax(1)
    variants = [("fp32", False), ("bf16", False), ("fp16", False)]
    if args.compile:
        variants += [("fp32", True), ("bf16", True)]
    print(f"# torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, {args.model} "
          f"{shape}, {args.n} images, batch {args.batch}")
    for name in args.attacks:
        attack, norm, params = ATTACKS[name]
        print(f"\n{name} ({norm}, {params})\n")
        print("| precision | compile | seconds | vs fp32 | median distance | max rel. diff to fp32 | success |")
        print("|---|---|---|---|---|---|---|")
        ref = None
        for precision, compiled in variants:
            queried = attack_model(model, device, precision=precision, compile=compiled)
            if compiled:  # build the kernels outside the timing
                run_attack(model, x[:args.batch], y[:args.batch], attack, norm, params, batch_size=args.batch,
                           search_steps=1, device=device, seed=0, attack_model=queried)
            t0 = time.perf_counter()
            r = run_attack(model, x, y, attack, norm, params, batch_size=args.batch, device=device, seed=0,
                           search_steps=args.search_steps, attack_model=queried)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            d = r.frame["distance"].to_numpy()
            if ref is None:
                ref = (seconds, d)
            ok = np.isfinite(d) & np.isfinite(ref[1]) & (ref[1] > 0)
            rel = float(np.max(np.abs(d[ok] - ref[1][ok]) / ref[1][ok])) if ok.any() else float("nan")
            print(f"| {precision} | {compiled} | {seconds:.2f} | {seconds / ref[0]:.2f}x | {np.median(d):.4f} | "
                  f"{rel:.3f} | {np.isfinite(d).mean():.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
