"""Benchmark: our SparseFool (l1 and l0 sizes of the same search) against torchattacks' SparseFool, on the
correctly classified images among the first ``--n`` test images of a ``robust train`` run.

Every returned image is re-verified with the bare model (inside [0,1], misclassified; ``_bench.verified_sizes``)
and its l1 and l0 (changed pixels) sizes recomputed; a failure counts as ``inf``. Per row: success, mean
(over the successes) and median (over all, ``inf`` counted) l1 and l0, model passes per image, seconds.

    OMP_NUM_THREADS=1 python scripts/bench_sparsefool.py --run <train run> --n 40 [--peers .bench-peers]
        [--lam 3] [--steps 20]

torchattacks (``--peers``, a side directory, never a dependency) runs at the authors' settings (steps 20,
lam 3, overshoot 0.02).
"""

from __future__ import annotations

import argparse

import torch
from _bench import add_peers, correct_test_images, timed, verified_sizes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--peers", default=None, help="directory holding torchattacks")
    p.add_argument("--lam", type=float, default=3.0)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    torch.set_num_threads(1)
    from robust_cli.attacks import list_attacks

    model, x, y, n = correct_test_images(args.run, args.n)
    runs = [("ours sparsefool", lambda m: list_attacks()["sparsefool"](m, x, y, norm="l1", lam=args.lam,
                                                                       steps=args.steps)),
            ("ours sparsefool search_steps=0", lambda m: list_attacks()["sparsefool"](
                m, x, y, norm="l1", lam=args.lam, steps=args.steps, search_steps=0))]
    if add_peers(args.peers):
        import torchattacks as ta

        runs.append(("torchattacks SparseFool", lambda m: ta.SparseFool(m, steps=args.steps, lam=args.lam,
                                                                         overshoot=0.02)(x, y)))
    print(f"model {args.run}; {len(x)}/{n} correctly classified images attacked")
    print("| impl | success | l1 mean / median | l0 mean / median | passes/img | s |")
    print("|---|---|---|---|---|---|")
    for name, fn in runs:
        out, sec, rows = timed(model, fn)
        d1, d0 = (verified_sizes(model, x, y, out, nm) for nm in ("l1", "l0"))
        ok = torch.isfinite(d1)
        print(f"| {name} | {int(ok.sum())}/{len(x)} | {d1[ok].mean():.3f} / {d1.median():.3f} | "
              f"{d0[ok].mean():.2f} / {d0.median():.1f} | {rows / len(x):.0f} | {sec:.1f} |", flush=True)


if __name__ == "__main__":
    main()
