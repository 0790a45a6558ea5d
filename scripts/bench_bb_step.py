"""Benchmark: the cost of one B&B step, ``step=scaled`` against ``step=exact`` (the joint trust-region step).

On the first ``--n`` test images of a trained run, B&B (``robust_cli.attacks.bb``) is started from FMN's points
(``--fmn-steps``) and run for ``--steps`` steps with each step kind, in l2, linf and l1; printed: CPU seconds
of this one-threaded process per B&B step (``time.process_time``: a shared machine's load is not counted), the
median of ``--repeats`` interleaved runs, and the ratio. The start (FMN) is not timed.

``--ref DIR``: also run the exact step of another checkout's ``robust_cli`` (e.g. a ``git archive main``
snapshot) from the same starts, interleaved with ours, and print its cost beside ours and the largest relative
difference of the two B&B runs' end distances (per image, in the norm attacked): the two exact steps should
return the same points (or, where one search is more precise, end at about the same mean distance, also
printed). The two packages are imported one after the other under the same name; each function
keeps its own module's globals (as ``scripts/bench_floor.py --ref``).

Usage: ``OMP_NUM_THREADS=1 python scripts/bench_bb_step.py --run RUN_DIR [--n 50] [--steps 20] [--ref DIR]``.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_floor import imported_from  # noqa: E402


def load_bb(root: Path):
    """``bb`` of the ``robust_cli`` under ``root``, imported apart from ours (which stays in ``sys.modules``)."""
    with imported_from(root):
        return importlib.import_module("robust_cli.attacks.bb").bb


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a robust train run directory")
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--fmn-steps", type=int, default=50)
    p.add_argument("--norms", default="l2,linf,l1")
    p.add_argument("--repeats", type=int, default=1, help="interleaved timings per kind; the median is printed")
    p.add_argument("--ref", type=Path, default=None, help="another checkout holding robust_cli/ (e.g. main)")
    args = p.parse_args()
    torch.set_num_threads(1)

    from robust_cli.attacks.bb import bb
    from robust_cli.attacks.best import perturbation_size
    from robust_cli.attacks.fmn import fmn
    from robust_cli.data.sources import load_split
    from robust_cli.training.checkpoint import load_trained_model

    ref_bb = load_bb(args.ref) if args.ref else None
    model, cfg = load_trained_model(args.run)
    model.eval()
    x, y = load_split(cfg.dataset, cfg.data, "test")
    x, y = x[: args.n], y[: args.n]
    print(f"{args.run}: {len(x)} images, B&B {args.steps} steps from FMN ({args.fmn_steps} steps), CPU s per step"
          f" (median of {args.repeats})")
    kinds = {"scaled": (bb, "scaled"), "exact": (bb, "exact")}
    if ref_bb is not None:
        kinds["ref exact"] = (ref_bb, "exact")
        print("| norm | step=scaled | step=exact | ratio | ref step=exact | ref ratio | max rel. diff of end distances"
              " | mean end distance exact / ref exact |\n|---|---|---|---|---|---|---|---|")
    else:
        print("| norm | step=scaled | step=exact | ratio |\n|---|---|---|---|")
    for norm in [s for s in args.norms.split(",") if s]:
        start = fmn(model, x, y, norm=norm, steps=args.fmn_steps)
        times: dict[str, list[float]] = {k: [] for k in kinds}
        out = {}
        for _ in range(args.repeats):
            for kind, (fn, step) in kinds.items():
                t = time.process_time()
                out[kind] = fn(model, x, y, norm=norm, steps=args.steps, step=step, x_init=start)
                times[kind].append((time.process_time() - t) / args.steps)
        per_step = {k: statistics.median(v) for k, v in times.items()}
        row = (f"| {norm} | {per_step['scaled']:.3f} s | {per_step['exact']:.3f} s | "
               f"{per_step['exact'] / per_step['scaled']:.1f}x |")
        if ref_bb is not None:
            ours, theirs = (perturbation_size(out[k], x, norm).double() for k in ("exact", "ref exact"))
            ok = torch.isfinite(ours) & torch.isfinite(theirs) & (ours > 0) & (theirs > 0)  # both found one
            diff = ((ours - theirs).abs() / theirs.clamp_min(1e-12)).max().item()
            row += (f" {per_step['ref exact']:.3f} s | {per_step['ref exact'] / per_step['scaled']:.1f}x | {diff:.1e} |"
                    f" {ours[ok].mean():.6f} / {theirs[ok].mean():.6f} |")
        print(row, flush=True)


if __name__ == "__main__":
    main()
