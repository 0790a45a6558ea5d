"""Benchmark: our sparse, black-box and ensemble attacks against torchattacks (JSMA, SparseFool, OnePixel) and
foolbox 3 (Boundary, Brendel & Bethge l2), side by side in one run.

Same model (a ``robust train`` run), same first ``--n`` test images. Every returned image is re-verified here
(clipped to [0,1], classified by the model) and its norm recomputed (l0: changed pixels); a failure counts as
``inf``. Per row: success over the correctly classified images, mean and median norm of the successes, model
passes (forward samples; for black-box attacks these are the queries) per image, seconds, and the fraction
of images where ours is <= the peer's.

The peers are never dependencies of ``robust``: install them into a side directory,
    .venv/bin/pip install --no-deps --target .bench-peers torchattacks foolbox eagerpy
    .venv/bin/python scripts/bench_sparse_attacks.py --peers .bench-peers --run <train run dir> --n 100

Usage: ``python scripts/bench_sparse_attacks.py --run RUN_DIR [--n 100] [--peers DIR] [--queries 5000]
[--bb-steps 200] [--bb-lr 0.3,1,3]``. ``--bb-lr`` runs our B&B once per listed ``lr`` (``default``: its own),
against one foolbox run per norm with the same start and ``--bb-steps``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from _bench import add_peers, timed
from _bench import verified_sizes as verify

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--peers", default=None, help="directory holding torchattacks, foolbox, eagerpy")
    p.add_argument("--queries", type=int, default=5000, help="query budget of the black-box attacks per image")
    p.add_argument("--only", default="", help="comma-separated labels to run (default: all)")
    p.add_argument("--bb-steps", type=int, default=200, help="steps of both B&B runs (ours and foolbox's)")
    p.add_argument("--bb-lr", default="", help="comma-separated lr values of our B&B, 'default' its own")
    args = p.parse_args()
    torch.set_num_threads(1)
    add_peers(args.peers)
    from robust_cli.attacks import list_attacks
    from robust_cli.data import load_split
    from robust_cli.training.checkpoint import load_trained_model

    model, cfg = load_trained_model(args.run, device="cpu")
    model.eval()
    x, y = load_split(cfg.dataset, cfg.data, "test")
    x, y = x[:args.n].float(), y[:args.n]
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    x, y = x[correct], y[correct]
    ours = list_attacks()
    q = args.queries
    starts = {  # the common start of both B&B runs, per norm
        "l2": ours["deepfool"](model, x, y, norm="l2"), "linf": ours["deepfool"](model, x, y, norm="linf"),
        "l1": ours["sparsefool"](model, x, y, norm="l1"), "l0": ours["jsma"](model, x, y, norm="l0")}
    start = starts["l2"]
    bb_steps = args.bb_steps
    lrs = [None if v == "default" else float(v) for v in args.bb_lr.split(",")] if args.bb_lr else [None]

    def bb_rows(label, nm):
        return [(label if len(lrs) == 1 else f"{label} lr={'default' if lr is None else f'{lr:g}'}", nm,
                 lambda m, nm=nm, lr=lr: ours["bb"](m, x, y, norm=nm, x_init=starts[nm], steps=bb_steps,
                                                    **({} if lr is None else {"lr": lr})),
                 f"foolbox {nm.upper() if nm == 'l2' else nm.capitalize()}BrendelBethge",
                 "fb_bb" if nm == "l2" else f"fb_bb_{nm}") for lr in lrs]
    rows = [  # (label, norm, ours, peer name, peer)
        ("jsma", "l0", lambda m: ours["jsma"](m, x, y, norm="l0"), "torchattacks JSMA", "ta_jsma"),
        ("sparsefool", "l0", lambda m: ours["sparsefool"](m, x, y, norm="l0"), "torchattacks SparseFool", "ta_sf"),
        ("sigma_zero", "l0", lambda m: ours["sigma_zero"](m, x, y, norm="l0", steps=1000), None, None),
        ("one_pixel", "l0", lambda m: ours["one_pixel"](m, x, y, norm="l0", popsize=99, steps=q // 99 - 1,
                                                       max_queries=q), "torchattacks OnePixel", "ta_op"),
        ("minimal l0", "l0", lambda m: ours["minimal"](m, x, y, norm="l0"), None, None),
        ("boundary", "l2", lambda m: ours["boundary"](m, x, y, norm="l2", max_queries=q), "foolbox Boundary", "fb_ba"),
        *bb_rows("bb (deepfool start)", "l2"),
        ("minimal l2", "l2", lambda m: ours["minimal"](m, x, y, norm="l2"), None, None),
        *[r for nm, first in (("linf", "deepfool linf"), ("l1", "sparsefool"), ("l0", "jsma"))
          for r in bb_rows(f"bb ({first} start)", nm)],
    ]
    if args.only:
        keep = {s.strip() for s in args.only.split(",")}
        rows = [r for r in rows if r[0] in keep or r[0].split(" (")[0] + " " + r[1] in keep]

    def peer(kind, m):
        if kind.startswith("ta_"):
            import torchattacks as ta
            atk = {"ta_jsma": lambda: ta.JSMA(m, theta=1.0, gamma=1.0),
                   "ta_sf": lambda: ta.SparseFool(m, steps=20, lam=3, overshoot=0.02),
                   "ta_op": lambda: ta.OnePixel(m, pixels=1, steps=q // 99 - 1, popsize=33, inf_batch=4096)}[kind]()
            return atk(x, y)
        import foolbox as fb
        fm = fb.PyTorchModel(m, bounds=(0, 1))
        if kind == "fb_ba":
            return fb.attacks.BoundaryAttack(steps=q // 2)(fm, x, y, epsilons=None)[1]
        if kind.startswith("fb_bb_"):
            nm = kind[len("fb_bb_"):]
            cls = {"linf": fb.attacks.LinfinityBrendelBethgeAttack, "l1": fb.attacks.L1BrendelBethgeAttack,
                   "l0": fb.attacks.L0BrendelBethgeAttack}[nm]
            return cls(steps=bb_steps).run(fm, x, y, starting_points=starts[nm])
        return fb.attacks.L2BrendelBethgeAttack(steps=bb_steps).run(fm, x, y, starting_points=start)

    peer_done = {}  # kind -> (verified sizes, seconds, passes) or the error: a peer runs once, whatever our variants

    print(f"model {args.run}; {int(correct.sum())}/{len(correct)} correctly classified images attacked")
    print("| attack | norm | impl | success | mean | median | passes/img | s | ours <= peer |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, norm, fn, peer_name, kind in rows:
        out, sec, n = timed(model, fn)
        d = verify(model, x, y, out, norm)
        cells = [(f"ours {label}", d, sec, n)]
        if kind is not None:
            try:
                if kind not in peer_done:
                    try:
                        pout, psec, pn = timed(model, lambda m, kind=kind: peer(kind, m))
                        peer_done[kind] = (verify(model, x, y, pout, norm), psec, pn)
                    except Exception as err:  # noqa: BLE001 - kept, so a variant does not rerun a failing peer
                        peer_done[kind] = err
                if isinstance(peer_done[kind], Exception):
                    raise peer_done[kind]
                cells.append((peer_name, *peer_done[kind]))
            except Exception as err:  # noqa: BLE001 - a peer that does not run is reported, not fatal
                print(f"| {peer_name} | {norm} | failed: {type(err).__name__}: {str(err)[:80]} |")
        for name, dd, s, nn in cells:
            fin = dd[torch.isfinite(dd)]
            frac = "" if name.startswith("ours") or len(cells) < 2 else f"{float((d <= dd).double().mean()):.2f}"
            print(f"| {label} | {norm} | {name} | {fin.numel() / len(dd):.2f} | "
                  f"{fin.mean():.4f} | {dd.median():.4f} | {nn / len(x):.0f} | {s:.1f} | {frac} |", flush=True)


if __name__ == "__main__":
    main()
