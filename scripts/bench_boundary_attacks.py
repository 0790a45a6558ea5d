"""Benchmark: our FAB (linf, l2, l1) and EAD (l1) against adv-lib's ``fab`` and torchattacks' ``EADL1``.

Same model (a ``robust train`` run), same first ``--n`` test images (the correctly classified ones), same
iterations. FAB: ``--steps`` iterations, each one forward/backward on K-1 class gradients plus one forward
check, in every implementation. EAD: ``--ead-search`` binary-search rounds of ``--ead-steps`` iterations, one
forward/backward and one forward each (torchattacks' early abort off). Every returned image is re-verified here
(in [0,1], misclassified) and its norm recomputed; reported: success, mean/median norm over the images, seconds,
and the fraction of images where ours <= the peer's (failures count as infinite norm).

Peers are never dependencies of ``robust``; install them into side directories:
    .venv/bin/pip install --no-deps --target .bench-advlib adv-lib
    .venv/bin/pip install --no-deps --target .bench-peers torchattacks
    .venv/bin/python scripts/bench_boundary_attacks.py --run RUN_DIR --advlib .bench-advlib --peers .bench-peers
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from _bench import add_peers
from _bench import verified_sizes as verify


def load_advlib_fab(path: str | None):
    """adv-lib's ``fab`` loaded from its own module (the package would import every attack); None if unset."""
    if not add_peers(path):
        return None
    from adv_lib.attacks.fast_adaptive_boundary import fab as advlib_fab  # noqa: PLC0415

    return advlib_fab


def load_torchattacks(path: str | None):
    """The ``torchattacks`` module from ``path``; None if unset or not importable."""
    if not add_peers(path):
        return None
    try:
        import torchattacks  # noqa: PLC0415
    except ImportError as err:
        print(f"torchattacks not importable: {err}")
        return None
    return torchattacks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a robust train run directory")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--steps", type=int, default=100, help="FAB iterations")
    ap.add_argument("--ead-steps", type=int, default=100)
    ap.add_argument("--ead-search", type=int, default=9)
    ap.add_argument("--norms", default="linf,l2,l1", help="FAB norms")
    ap.add_argument("--skip-ead", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--advlib", default=None)
    ap.add_argument("--peers", default=None, help="directory holding torchattacks")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from robust_cli.attacks.ead import ead
    from robust_cli.attacks.fab import fab
    from robust_cli.data import load_split
    from robust_cli.training.checkpoint import load_trained_model

    model, cfg = load_trained_model(args.run)
    model.eval()
    x, y = load_split(cfg.dataset, cfg.data, "test")
    x, y = x[: args.n], y[: args.n]
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    x, y = x[correct], y[correct]
    k = model(x[:1]).shape[1]
    print(f"model {args.run}; {len(x)}/{args.n} correctly classified; {k} classes")
    print(f"FAB: {args.steps} iterations x (1 forward/backward of {k - 1} class gradients + 1 forward)")
    print(f"EAD: {args.ead_search} x {args.ead_steps} iterations x (1 forward/backward + 1 forward)")
    advlib_fab = load_advlib_fab(args.advlib)
    ta = load_torchattacks(args.peers)
    pnorm = {"linf": float("inf"), "l2": 2, "l1": 1}

    rows = []  # (attack, impl, distances, seconds)

    def bench(label, impl, fn, norm):
        t0 = time.process_time()  # CPU seconds of this one-threaded process: the neighbours' load not counted
        out = fn()
        seconds = time.process_time() - t0
        rows.append((label, impl, verify(model, x, y, out, norm), seconds))

    for norm in [s for s in args.norms.split(",") if s]:
        label = f"fab {norm}"
        bench(label, "robust", lambda norm=norm: fab(model, x, y, norm=norm, steps=args.steps), norm)
        if advlib_fab is not None:
            bench(label, "adv-lib", lambda norm=norm: advlib_fab(model, x, y, norm=pnorm[norm], n_iter=args.steps),
                  norm)
        # torchattacks' FAB (AutoAttack's eps-bounded port) fails here: UnboundLocalError 'res' in perturb
    if not args.skip_ead:
        opts = {"steps": args.ead_steps, "search_steps": args.ead_search}
        bench("ead l1", "robust", lambda: ead(model, x, y, **opts), "l1")
        bench("ead l1 (beta=1e-3)", "robust", lambda: ead(model, x, y, beta=1e-3, **opts), "l1")
        if ta is not None:
            atk = ta.EADL1(model, max_iterations=args.ead_steps, binary_search_steps=args.ead_search,
                           abort_early=False)
            bench("ead l1 (beta=1e-3)", "torchattacks", lambda: atk(x, y), "l1")

    print("\n| attack | impl | success | mean norm | median norm | ours <= peer | seconds |")
    print("|---|---|---|---|---|---|---|")
    ours = {}
    for label, impl, d, secs in rows:
        base = label.split(" (")[0]
        if impl == "robust" and base not in ours:
            ours[base] = d
        ok = torch.isfinite(d)
        good = d[ok]
        mean = f"{good.mean().item():.4f}" if len(good) else "nan"
        med = f"{good.median().item():.4f}" if len(good) else "nan"
        frac = "" if impl == "robust" else f"{(ours[base] <= d * (1 + 1e-6)).float().mean().item():.2f}"
        print(f"| {label} | {impl} | {ok.float().mean().item():.3f} | {mean} | {med} | {frac} | {secs:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
