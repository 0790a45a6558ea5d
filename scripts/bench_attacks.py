"""Benchmark: our minimal-norm C&W (l2, linf), DDN, FMN (l0, l1, l2, linf) and ALMA (l1, l2) against adv-lib's.

Same model, same correctly classified images among the first ``--n`` test images of the run's data set, the
same iteration counts (the passes each implementation actually made are counted by a wrapper around the
model and printed: forward passes per image; each but the success checks has its backward). Every returned
image is re-verified here (in [0,1], misclassified by the model) and its norm recomputed; reported per
attack and implementation: success rate, mean and median norm over the successes, and the fraction of
images where ours is at most the peer's (a failure counts as an infinite norm).

adv-lib is never a dependency of ``robust``: install it (and tqdm, which it imports) into a side directory,
    .venv/bin/pip install --no-deps --target .bench-advlib adv-lib tqdm
Its optional ``visdom`` import is satisfied by an empty stub module.

Usage: ``python scripts/bench_attacks.py --run RUN_DIR [--n 100] [--steps 300] [--advlib DIR] [--out x.json]
[--only 'fmn l2,ddn l2']``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from _bench import Counter, load_advlib
from _bench import verified_sizes as verified_norms

ROOT = Path(__file__).resolve().parents[1]


def attacks(steps: int, rounds: int,
            cw_tau_decrease: float | None = None) -> list[tuple[str, str, str, dict, str, dict]]:
    """(label, our attack, norm, our options, adv-lib function, adv-lib options) at the same iterations.
    ``cw_tau_decrease``: our C&W linf's ``tau_decrease`` (None: its default); adv-lib's stays at its own."""
    per_round = max(steps // rounds, 1)
    tau = {} if cw_tau_decrease is None else {"tau_decrease": cw_tau_decrease}
    return [
        ("cw l2", "cw", "l2", {"steps": per_round, "search_steps": rounds},
         "carlini_wagner_l2", {"max_iterations": per_round, "binary_search_steps": rounds}),
        ("cw linf", "cw", "linf", {"steps": per_round, "search_steps": rounds, **tau},
         "carlini_wagner_linf", {"max_iterations": per_round}),
        ("ddn l2", "ddn", "l2", {"steps": steps}, "ddn", {"steps": steps, "levels": None}),
        *[(f"fmn {n}", "fmn", n, {"steps": steps}, "fmn", {"norm": p, "steps": steps})
          for n, p in (("l0", 0), ("l1", 1), ("l2", 2), ("linf", float("inf")))],
        ("alma l2", "alma", "l2", {"steps": steps}, "alma", {"distance": "l2", "num_steps": steps}),
        ("alma l1", "alma", "l1", {"steps": steps}, "alma", {"distance": "l1", "num_steps": steps}),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a robust train run directory")
    ap.add_argument("--n", type=int, default=100, help="first N test images")
    ap.add_argument("--steps", type=int, default=300, help="iterations (C&W: in total over its rounds)")
    ap.add_argument("--rounds", type=int, default=5, help="C&W search rounds")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--advlib", default=os.environ.get("ADVLIB_PATH"), help="directory holding adv_lib")
    ap.add_argument("--only", default="", help="comma-separated labels, e.g. 'fmn l2,ddn l2'")
    ap.add_argument("--cw-tau-decrease", type=float, default=None, help="our C&W linf's tau_decrease")
    ap.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from robust_cli.attacks import list_attacks
    from robust_cli.data.sources import load_split
    from robust_cli.training.checkpoint import load_trained_model

    model, run_cfg = load_trained_model(args.run)
    model.eval()
    x_all, y_all = load_split(run_cfg.dataset, run_cfg.data, "test")
    x_all, y_all = x_all[: args.n], y_all[: args.n]
    with torch.no_grad():
        correct = model(x_all).argmax(1) == y_all
    x_all, y_all = x_all[correct], y_all[correct]
    print(f"model {args.run}; {int(correct.sum())}/{len(correct)} test images correctly classified; "
          f"steps {args.steps}; threads {args.threads}")
    print("| attack | impl | passes/img | success | mean | median | ours <= peer | s |")
    print("|---|---|---|---|---|---|---|---|")
    lib = load_advlib(args.advlib)
    ours = list_attacks()
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    rows = []
    for label, name, norm, our_kw, lib_name, lib_kw in attacks(args.steps, args.rounds, args.cw_tau_decrease):
        if only and label not in only:
            continue
        impls = [("robust", lambda m, xb, yb, fn=ours[name], norm=norm, kw=our_kw: fn(m, xb, yb, norm=norm, **kw))]
        if lib is not None:
            peer = getattr(lib, lib_name)
            impls.append(("adv-lib", lambda m, xb, yb, fn=peer, kw=lib_kw: fn(m, xb, yb, **kw)))
        dists = {}
        for impl, attack in impls:
            counted, parts, t0 = Counter(model), [], time.perf_counter()
            for i in range(0, len(x_all), args.batch_size):
                xb, yb = x_all[i: i + args.batch_size], y_all[i: i + args.batch_size]
                parts.append(verified_norms(model, xb, yb, attack(counted, xb, yb).detach(), norm))
            d = dists[impl] = torch.cat(parts)
            ok = torch.isfinite(d)
            good = d[ok]
            row = {"attack": label, "impl": impl, "passes": counted.rows / len(x_all),
                   "success": ok.float().mean().item(),
                   "mean": good.mean().item() if len(good) else float("nan"),
                   "median": good.median().item() if len(good) else float("nan"),
                   "seconds": time.perf_counter() - t0}
            if impl == "adv-lib":
                row["ours_le_peer"] = (dists["robust"] <= d * (1 + 1e-6)).float().mean().item()
            rows.append(row)
            le = f"{row['ours_le_peer']:.2f}" if "ours_le_peer" in row else ""
            print(f"| {label} | {impl} | {row['passes']:.0f} | {row['success']:.3f} | {row['mean']:.4f} | "
                  f"{row['median']:.4f} | {le} | {row['seconds']:.0f} |", flush=True)
    if args.out:
        from robust_cli import io

        io.write_json(args.out, {"run": str(args.run), "n": args.n, "steps": args.steps, "rows": rows})


if __name__ == "__main__":
    main()
