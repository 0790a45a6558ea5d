"""Benchmark: the cost of one B&B step, ``step=scaled`` against ``step=exact`` (the joint trust-region step).

On the first ``--n`` test images of a trained run, B&B (``robust_cli.attacks.bb``) is started from FMN's points
(``--fmn-steps``) and run for ``--steps`` steps with each step kind, in l2, linf and l1; printed: CPU seconds
of this one-threaded process per B&B step (``time.process_time``: a shared machine's load is not counted) and
the ratio. The start (FMN) is not timed.

Usage: ``OMP_NUM_THREADS=1 python scripts/bench_bb_step.py --run RUN_DIR [--n 50] [--steps 20]``.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a robust train run directory")
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--fmn-steps", type=int, default=50)
    p.add_argument("--norms", default="l2,linf,l1")
    args = p.parse_args()
    torch.set_num_threads(1)

    from robust_cli.attacks.bb import bb
    from robust_cli.attacks.fmn import fmn
    from robust_cli.data.sources import load_split
    from robust_cli.training.checkpoint import load_trained_model

    model, cfg = load_trained_model(args.run)
    model.eval()
    x, y = load_split(cfg.dataset, cfg.data, "test")
    x, y = x[: args.n], y[: args.n]
    print(f"{args.run}: {len(x)} images, B&B {args.steps} steps from FMN ({args.fmn_steps} steps), CPU s per step")
    print("| norm | step=scaled | step=exact | ratio |\n|---|---|---|---|")
    for norm in [s for s in args.norms.split(",") if s]:
        start = fmn(model, x, y, norm=norm, steps=args.fmn_steps)
        per_step = {}
        for step in ("scaled", "exact"):
            t = time.process_time()
            bb(model, x, y, norm=norm, steps=args.steps, step=step, x_init=start)
            per_step[step] = (time.process_time() - t) / args.steps
        print(f"| {norm} | {per_step['scaled']:.3f} s | {per_step['exact']:.3f} s | "
              f"{per_step['exact'] / per_step['scaled']:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
