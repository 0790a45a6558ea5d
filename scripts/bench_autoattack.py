"""Benchmark: our ``autoattack`` (and APGD-CE) against torchattacks' AutoAttack (and APGD) on the same images.

Same model, the first ``--n`` test images of the run's data set, the same eps; robust accuracy (over all
``n`` images, a misclassified clean image counts as broken) and seconds for each implementation, side by
side in one run. Every returned image is re-verified here: an image counts as broken only where the model
misclassifies it and its perturbation is within eps (ours exactly, the peer's within a relative 1e-5, its
float rounding). ``ours - peer`` is in percentage points; ours must be at most the peer's (and never more
than 0.2 points above).

Both AutoAttacks run twice, with the same iterations for APGD, APGD-T and FAB-T on both sides: at
torchattacks' default ``--peer-steps`` (10) and at the published ``--steps`` (100), 1 restart each, and
Square's ``--n-queries`` on both sides (published: 5000; set on torchattacks' Square member). APGD-CE is
also compared alone at ``--apgd-steps`` on both sides.

torchattacks is never a dependency of ``robust``: it lives in a side directory (``.bench-peers``), put on
``sys.path`` here only.

Usage: ``python scripts/bench_autoattack.py --run RUN_DIR [--n 200] [--steps 100] [--peer-steps 10]
[--n-queries 5000] [--peers .bench-peers] [--only linf]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
EPS = {"linf": (0.1, 0.2, 0.3), "l2": (1.0, 1.5, 2.0)}
PEER_NORM = {"linf": "Linf", "l2": "L2"}


def robust_accuracy(model, x, y, adv, eps, norm, rtol=0.0) -> float:
    """Fraction of images the model still classifies correctly at ``adv`` (or whose ``adv`` is out of eps)."""
    from robust_cli.attacks.geometry import batch_norm

    with torch.no_grad():
        wrong = model(adv.clamp(0, 1)).argmax(1) != y
    inside = batch_norm(adv.clamp(0, 1) - x, norm) <= eps * (1 + rtol)
    inside &= (adv >= 0).flatten(1).all(1) & (adv <= 1).flatten(1).all(1)
    return float((~(wrong & inside)).float().mean())


def timed(fn, *args, **kwargs):
    """``(fn(*args, **kwargs) detached, seconds)``."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out.detach(), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a robust train run directory")
    ap.add_argument("--n", type=int, default=200, help="first N test images")
    ap.add_argument("--steps", type=int, default=100, help="APGD/FAB iterations, the published count")
    ap.add_argument("--peer-steps", type=int, default=10, help="APGD/FAB iterations, torchattacks' default")
    ap.add_argument("--apgd-steps", type=int, default=100, help="APGD-CE alone, both sides")
    ap.add_argument("--n-queries", type=int, default=5000, help="Square's queries, both sides")
    ap.add_argument("--peers", default=str(ROOT / ".bench-peers"), help="directory holding torchattacks")
    ap.add_argument("--only", default="", help="one norm (linf or l2)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(args.peers).resolve()))
    import torchattacks

    from robust_cli.attacks.apgd import apgd
    from robust_cli.attacks.autoattack import autoattack
    from robust_cli.data.sources import load_split
    from robust_cli.training.checkpoint import load_trained_model

    model, run_cfg = load_trained_model(args.run)
    model.eval()
    x, y = load_split(run_cfg.dataset, run_cfg.data, "test")
    x, y = x[: args.n].float(), y[: args.n]
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    print(f"model {args.run}; n={args.n}, clean accuracy {clean:.3f}; torchattacks {torchattacks.__version__}; "
          f"threads {args.threads}")
    print("| norm | eps | attack | ours | peer | ours - peer (pts) | ours s | peer s |")
    print("|---|---|---|---|---|---|---|---|")
    worst_gap = -float("inf")
    for norm, budgets in EPS.items():
        if args.only and norm != args.only:
            continue
        for eps in budgets:
            for steps in sorted({args.peer_steps, args.steps}):
                peer_aa = torchattacks.AutoAttack(model, norm=PEER_NORM[norm], eps=eps, version="standard",
                                                  n_classes=10, seed=0)
                for member in peer_aa._autoattack.attacks:  # the same iterations and queries on both sides
                    if isinstance(member, torchattacks.Square):
                        member.n_queries = args.n_queries
                    else:
                        member.steps = steps
                peer_adv, peer_s = timed(peer_aa, x, y)
                peer_acc = robust_accuracy(model, x, y, peer_adv, eps, norm, rtol=1e-5)
                ours_adv, ours_s = timed(autoattack, model, x, y, norm=norm, eps=eps, steps=steps,
                                         n_queries=args.n_queries)
                ours_acc = robust_accuracy(model, x, y, ours_adv, eps, norm)
                worst_gap = max(worst_gap, 100 * (ours_acc - peer_acc))
                print(f"| {norm} | {eps:g} | AutoAttack standard ({steps} steps) | "
                      f"{ours_acc:.3f} | {peer_acc:.3f} | {100 * (ours_acc - peer_acc):+.1f} | {ours_s:.1f} | "
                      f"{peer_s:.1f} |", flush=True)
            peer_apgd = torchattacks.APGD(model, norm=PEER_NORM[norm], eps=eps, steps=args.apgd_steps, n_restarts=1,
                                          loss="ce", seed=0)
            peer_adv, peer_s = timed(peer_apgd, x, y)
            ours_adv, ours_s = timed(apgd, model, x, y, norm=norm, eps=eps, steps=args.apgd_steps)
            peer_acc = robust_accuracy(model, x, y, peer_adv, eps, norm, rtol=1e-5)
            ours_acc = robust_accuracy(model, x, y, ours_adv, eps, norm)
            print(f"| {norm} | {eps:g} | APGD-CE ({args.apgd_steps} steps) | {ours_acc:.3f} | {peer_acc:.3f} | "
                  f"{100 * (ours_acc - peer_acc):+.1f} | {ours_s:.1f} | {peer_s:.1f} |", flush=True)
    print(f"largest AutoAttack gap ours - peer: {worst_gap:+.1f} points (must be <= +0.2)")


if __name__ == "__main__":
    main()
