"""Benchmark: the cost and the distances of a budget attack's eps search, bisection against adaptive.

On the first ``--n`` test images of a trained run, each budget attack (``pgd`` linf and l2 at ``--steps``)
is evaluated by ``robust_cli.evaluation.runner.run_attack`` three ways, side by side:

- ``bisection``: the old default, 10 halvings over ``[0, box radius]`` after a try at the radius;
- ``adaptive``: per image to 1% of the distance (``eps_rtol=0.01``), the batch shrinking; for ``pgd``
  with early stop per image and probes (short runs from the held adversarial), the full attack only where
  its failure resolves the image (``adaptive_search.probe_search``);
- ``adaptive+fmn``: the same with the distances of a minimal-norm attack (``fmn``, ``--steps``) of the same
  evaluation as first upper brackets (``upper``; fmn's own passes are reported separately).

Every pass through the model is counted (a counting wrapper around the model handed to ``run_attack``:
the attack's passes and the search's own success tests alike), per image: forward and backward. The cost
of one attack at one eps is measured the same way (one call of the attack on the correctly classified
images); ``x one attack`` is the ratio of passes (forward + backward; a forward-only test counts as much as
a backward, which overstates it: it costs about a third of a forward + backward). Distances:
the median, and the fraction of images whose adaptive distance is larger than the bisection's by more than
the tolerance (``d_new > d_old * (1 + rtol) + bisection resolution``): the search must not be weaker.

Usage: ``OMP_NUM_THREADS=1 python scripts/bench_search.py --run RUN_DIR [--n 100] [--steps 50]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn


class Counter(nn.Module):
    """The model, counting images forwards and backwards (a hook on the output, as the runner's)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.fwd, self.bwd = model, 0, 0

    def forward(self, x):
        out = self.model(x)
        n = int(x.shape[0])
        self.fwd += n
        if out.requires_grad:
            def count(_):
                self.bwd += n

            out.register_hook(count)
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--norms", default="linf,l2")
    p.add_argument("--rtol", type=float, default=0.01)
    args = p.parse_args()
    torch.set_num_threads(1)

    from robust_cli.attacks.fmn import fmn
    from robust_cli.attacks.pgd import pgd
    from robust_cli.data import load_split
    from robust_cli.evaluation.runner import run_attack
    from robust_cli.rundir import RunDir
    from robust_cli.training.checkpoint import load_trained_model

    model, cfg = load_trained_model(RunDir(args.run), device="cpu")
    x, y = load_split(cfg.dataset, cfg.get("data"), "test")
    x, y = x[:args.n].float(), y[:args.n]
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    print(f"{args.run}: {args.n} images ({int(correct.sum())} correct), pgd steps={args.steps}, "
          f"eps_rtol={args.rtol}\n")
    print("| attack | search | fwd/img | bwd/img | x one attack | CPU s | median dist | max resolution "
          "| worse than bisection beyond tol |")
    print("|---|---|---|---|---|---|---|---|---|")
    for norm in args.norms.split(","):
        params = {"steps": args.steps}
        one = Counter(model)
        start = time.process_time()
        pgd(one, x[correct], y[correct], norm=norm, eps=0.3 if norm == "linf" else 1.5, **params)
        one_secs = time.process_time() - start
        k = int(correct.sum())
        unit = (one.fwd + one.bwd) / k  # passes (forward + backward) per image of one attack at one eps
        fc = Counter(model)
        fres = run_attack(fc, x, y, fmn, norm, {"steps": args.steps}, batch_size=args.n)
        upper = torch.tensor(fres.frame["distance"].to_numpy())
        rows = {}
        for label, kw in (("bisection", {"eps_search": "bisection"}),
                          ("adaptive", {"eps_search": "adaptive", "rtol": args.rtol}),
                          ("adaptive+fmn", {"eps_search": "adaptive", "rtol": args.rtol, "upper": upper})):
            c = Counter(model)
            start = time.process_time()
            res = run_attack(c, x, y, pgd, norm, params, batch_size=args.n, search_steps=10, **kw)
            secs = time.process_time() - start
            d = res.frame["distance"].to_numpy()
            rows[label] = (c.fwd / args.n, c.bwd / args.n, secs, d, res.resolution)
        d_old, res_old = rows["bisection"][3], rows["bisection"][4]
        for label, (f, b, secs, d, res) in rows.items():
            worse = np.mean(d > d_old * (1 + args.rtol) + res_old + 1e-9) if label != "bisection" else 0.0
            print(f"| pgd {norm} | {label} | {f:.1f} | {b:.1f} | {(f + b) / unit:.2f} | {secs:.1f} | "
                  f"{np.median(d):.4f} | {res:.2e} | {worse:.3f} |")
        print(f"| fmn {norm} | (the upper brackets) | {fc.fwd / args.n:.1f} | {fc.bwd / args.n:.1f} | | | "
              f"{np.median(upper.numpy()):.4f} | | |")
        print(f"| pgd {norm} | one attack at one eps (correct images) | {one.fwd / k:.1f} | {one.bwd / k:.1f} | 1.00 "
              f"| {one_secs * args.n / k:.1f} | | | |")


if __name__ == "__main__":
    main()
