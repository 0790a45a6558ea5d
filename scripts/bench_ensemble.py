"""Benchmark: our ``minimal`` ensemble against the per-image best of the public minimal-norm attacks.

For each norm, on the correctly classified images among the first ``--n`` test images of a ``robust train``
run: our ``attack=minimal`` at its defaults (one call; its members start from the running best), and every
public minimal-norm attack we can run at its defaults (adv-lib 0.2.8: ALMA, DDN, FMN, FAB, PDPGD,
SuperDeepFool, sigma-zero, VFGA; foolbox 3: Brendel & Bethge started from the peers' per-image best). Every
returned image is re-verified here (inside [0,1], misclassified by the model) and its size recomputed (l0:
changed pixels). Printed per norm: mean/median of our result and of the peers' per-image minimum, the
forward passes per image each side spent, and the fraction of images where ours is at most the peers'
minimum (the target: >= 0.99), exactly and within 0.1%, with the images where it is more than 0.1% larger.

foolbox's B&B runs on the whole batch at once, and its trust region is ``lr * np.prod(x.shape)`` (the batch size
included), so its result depends on how many images the window holds: the peers' B&B here runs with a region
``N`` times its per-image default (a sub-batch at ``lr`` scaled by the ratio reproduces a window's run bit for
bit; BENCHMARKS.md, issue 10, session 9). It is run as a user running it on that batch would get it.

Peers live in side directories (``scripts/_bench.py`` says how to install them)::

    .venv/bin/python scripts/bench_ensemble.py --run RUN_DIR --n 100 --advlib .bench-advlib --peers .bench-peers

``--peer-cache DIR`` keeps the peers' per-image results (every peer's points and sizes, foolbox's start and
result, seconds, passes) in ``DIR/<norm>_n<n>_<run name>.pt`` and reuses them when present, so that ours can be
rerun alone against the same peers; ``--no-ours`` computes (and caches) only the peers; ``--images 9,15``
scores ours on those images only (indices among the correctly classified ones; ours runs on that sub-batch,
whose float rounding can differ from the full batch's), against the cached peers; ``--options random_starts=8``
passes options to our ``minimal`` (values read as YAML); ``--offset 40`` takes the test images from the 40th
on (an out-of-sample check of defaults chosen on the first ones).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from _bench import add_peers, correct_test_images, load_advlib, peer_parser, timed, verified_sizes

P = {"linf": float("inf"), "l2": 2.0, "l1": 1.0, "l0": 0.0}


def advlib_members(lib, norm: str) -> dict:
    """adv-lib's minimal-norm attacks for ``norm`` at their defaults: name -> ``f(model, x, y)``."""
    p = P[norm]
    members = {"fmn": lambda m, x, y: lib.fmn(m, x, y, norm=p, steps=1000)}
    if norm in ("linf", "l2", "l1"):
        members["fab"] = lambda m, x, y: lib.fab(m, x, y, norm=p)
    if norm in ("l2", "l1"):
        members["alma"] = lambda m, x, y: lib.alma(m, x, y, penalty=lib.augmented_lagrangian.all_penalties["P2"],
                                                   distance=norm, num_steps=1000)
    if norm == "l2":
        members["ddn"] = lambda m, x, y: lib.ddn(m, x, y, steps=1000, levels=None)
        members["sdf"] = lambda m, x, y: lib.sdf(m, x, y)
    if norm in ("l2", "l1", "l0"):
        members["pdpgd"] = lambda m, x, y: lib.pdpgd(m, x, y, norm=p)
    if norm == "l0":
        members["sigma_zero"] = lambda m, x, y: lib.sigma_zero(m, x, y)
        members["vfga"] = lambda m, x, y: lib.vfga(m, x, y, targeted=False)
    return members


def foolbox_bb(norm: str, start: torch.Tensor):
    """foolbox's Brendel & Bethge for ``norm`` from ``start`` (the peers' best), or None if not importable."""
    try:
        import foolbox as fb  # noqa: PLC0415
    except ImportError as err:
        print(f"foolbox not importable: {err}")
        return None
    cls = {"linf": fb.attacks.LinfinityBrendelBethgeAttack, "l2": fb.attacks.L2BrendelBethgeAttack,
           "l1": fb.attacks.L1BrendelBethgeAttack, "l0": fb.attacks.L0BrendelBethgeAttack}[norm]
    return lambda m, x, y: cls(steps=1000).run(fb.PyTorchModel(m, bounds=(0, 1)), x, y, starting_points=start)


def peer_results(model, x, y, lib, norm: str) -> dict:
    """Every peer on ``x``: ``per_peer`` name -> (points, sizes), the per-image min, foolbox's start, cost."""
    peer_min = torch.full((len(x),), math.inf, dtype=torch.float64)
    peer_best = x.clone()
    peer_sec, peer_rows, who, per_peer = 0.0, 0, [], {}
    members = advlib_members(lib, norm) if lib is not None else {}
    for name, fn in members.items():
        try:
            torch.manual_seed(0)
            adv, s, r = timed(model, lambda m, fn=fn: fn(m, x, y))
        except Exception as err:  # noqa: BLE001 - a peer that does not run is reported, not fatal
            print(f"| {norm} | adv-lib {name} failed: {type(err).__name__}: {str(err)[:80]} |")
            continue
        d = verified_sizes(model, x, y, adv, norm)
        per_peer[name] = (adv, d)
        better = d < peer_min
        peer_min = torch.where(better, d, peer_min)
        peer_best[better] = adv[better]
        peer_sec, peer_rows = peer_sec + s, peer_rows + r
        who.append(f"{name} {d[torch.isfinite(d)].mean():.4g}")
    # foolbox's B&B needs an adversarial start for every image it is given: it runs on the images some adv-lib
    # attack fooled (a sub-batch where one failed everywhere; its region then scales with that batch, session 9)
    found = torch.isfinite(peer_min)
    bb = foolbox_bb(norm, peer_best[found]) if members and bool(found.any()) else None
    if bb is not None:
        try:
            adv, s, r = timed(model, lambda m, bb=bb: bb(m, x[found], y[found]))
            adv = x.clone().index_put_((found,), adv)  # the clean image (not adversarial) where no start was
            d = verified_sizes(model, x, y, adv, norm)
            per_peer["foolbox_bb"] = (adv, d)
            better = d < peer_min
            peer_min = torch.where(better, d, peer_min)
            peer_sec, peer_rows = peer_sec + s, peer_rows + r
            who.append(f"foolbox bb {d[torch.isfinite(d)].mean():.4g}")
        except Exception as err:  # noqa: BLE001
            print(f"| {norm} | foolbox bb failed: {type(err).__name__}: {str(err)[:80]} |")
    return {"peer_min": peer_min, "peer_best": peer_best, "per_peer": per_peer, "sec": peer_sec,
            "rows": peer_rows, "who": who}


def main() -> None:
    ap = peer_parser(__doc__.splitlines()[0], "l2,linf,l1,l0", peers_required=False)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--peer-cache", default=None, help="directory for the peers' per-image results")
    ap.add_argument("--no-ours", action="store_true", help="only the peers (to fill --peer-cache)")
    ap.add_argument("--offset", type=int, default=0, help="the test images from this one on (out-of-sample checks)")
    ap.add_argument("--images", default=None, help="comma-separated indices: score ours on these only")
    ap.add_argument("--options", nargs="*", default=[], metavar="KEY=VALUE",
                    help="options of our minimal (values as YAML), e.g. random_starts=8")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from robust_cli.attacks import list_attacks

    model, x, y, n = correct_test_images(args.run, args.n, offset=args.offset)
    lib = load_advlib(args.advlib)
    add_peers(args.peers)
    print(f"model {args.run}; {len(x)}/{n} correctly classified test images (from image {args.offset})")
    sub = [int(i) for i in args.images.split(",")] if args.images else None
    import yaml

    options = {k: yaml.safe_load(v) for k, _, v in (o.partition("=") for o in args.options)}

    def cells(d):
        fin = d[torch.isfinite(d)]
        return f"{fin.mean():.4f} ({fin.numel()}/{len(d)})", f"{d.median():.4f}"

    print("| norm | side | mean | median | passes/img | s | ours <= peers' min |")
    print("|---|---|---|---|---|---|---|")
    for norm in [s.strip() for s in args.norms.split(",") if s.strip()]:
        ours = None
        if not args.no_ours:
            torch.manual_seed(0)
            xs, ys = (x, y) if sub is None else (x[sub], y[sub])

            def ours_run(m, norm=norm, xs=xs, ys=ys):
                return list_attacks()["minimal"](m, xs, ys, norm=norm, **options)

            out, sec, rows = timed(model, ours_run)
            ours = verified_sizes(model, xs, ys, out, norm)
        cached = None
        if args.peer_cache:
            at = f"_from{args.offset}" if args.offset else ""
            cache = Path(args.peer_cache) / f"{norm}_n{args.n}{at}_{Path(args.run).resolve().name}.pt"
            if cache.exists():
                cached = torch.load(cache)
        if cached is None:
            cached = peer_results(model, x, y, lib, norm)
            if args.peer_cache:
                cache.parent.mkdir(parents=True, exist_ok=True)
                torch.save(cached, cache)
        peer_min, peer_sec, peer_rows, who = (cached[k] for k in ("peer_min", "sec", "rows", "who"))
        members = cached["per_peer"]
        if sub is not None:
            peer_min = peer_min[sub]
        if ours is None:
            print(f"| {norm} | peers' per-image min | {cells(peer_min)[0]} | {cells(peer_min)[1]} | "
                  f"{peer_rows / len(x):.0f} | {peer_sec:.0f} | |")
            print(f"  peers ({norm}, mean over successes): {', '.join(who)}")
            continue

        le = ours <= peer_min * (1 + 1e-6) + 1e-9
        near = ours <= peer_min * (1 + 1e-3)  # within 0.1%: below any resolution the evaluation reports
        print(f"| {norm} | ours minimal | {' | '.join(cells(ours))} | {rows / len(ours):.0f} | {sec:.0f} | "
              f"{le.double().mean():.3f} (within 0.1%: {near.double().mean():.3f}) |")
        if members:
            print(f"| {norm} | peers' per-image min | {' | '.join(cells(peer_min))} | {peer_rows / len(x):.0f} | "
                  f"{peer_sec:.0f} | |")
            print(f"  peers ({norm}, mean over successes): {', '.join(who)}")
            worse = (~near).nonzero().squeeze(1).tolist()
            worse = [sub[i] for i in worse] if sub is not None else worse
            if worse:
                pos = [sub.index(i) for i in worse] if sub is not None else worse
                mine, theirs = ([round(float(d[i]), 4) for i in pos] for d in (ours, peer_min))
                print(f"  ours > peers by over 0.1% on images {worse}: ours {mine} peers {theirs}")


if __name__ == "__main__":
    main()
