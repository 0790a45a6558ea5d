"""Benchmark: our best single minimal-norm attack against the best single public one, per norm.

Issue 10 asks, per norm, that our best single attack's mean and median minimal norm over the correctly
classified images be at most the best public implementation's at comparable forward/backward passes. For each
norm this runs, on the correctly classified images among the first ``--n`` test images of a ``robust train``
run, every one of our minimal-norm attacks that supports it (the iterative ones at ``--steps``; the rest at
their defaults) and every public one (adv-lib 0.2.8 at its defaults, as ``bench_ensemble.py`` runs them: FMN
and ALMA at 1000 steps, DDN 1000, FAB, SuperDeepFool, PDPGD, sigma-zero, VFGA), each from the clean image
(no starting point: B&B finds its own, ``init``: DeepFool's point then 1000 steps, or 100 steps of DDN or
FMN then 900). Every returned image is re-verified
(inside [0,1], misclassified by the model) and its size recomputed; a failure counts as ``inf`` (so an attack
that misses an image cannot be the best). Printed per norm: each attack's success, mean, median and forward
passes per image, then per statistic (mean, median) the best single attack of each side (among those that
succeed on every image; ours among those within 1.5x the passes of the costliest peer) and whether ours is
at most theirs.

    OMP_NUM_THREADS=1 python scripts/bench_single.py --run RUN_DIR --n 40 --advlib .bench-advlib
"""

from __future__ import annotations

import torch
from _bench import correct_test_images, load_advlib, peer_parser, timed, verified_sizes
from bench_ensemble import advlib_members

#: our single attacks per norm: (label, attack name, options); ``steps`` is filled in from ``--steps``
#: where the attack takes it (``None``: its own default)
OURS = {
    "l2": [("fmn", "fmn", {"steps": None}), ("ddn", "ddn", {"steps": None}), ("alma", "alma", {"steps": None}),
           ("alma lr 0.2", "alma", {"steps": None, "lr": 0.2}), ("fab", "fab", {}), ("pdpgd", "pdpgd", {}),
           ("deepfool", "deepfool", {}), ("bb from deepfool", "bb", {}),
           ("bb from ddn", "bb", {"init": "ddn", "steps": 900}), ("bb from fmn", "bb", {"init": "fmn", "steps": 900})],
    "linf": [("fmn", "fmn", {"steps": None}), ("fab", "fab", {}), ("pdpgd", "pdpgd", {}),
             ("deepfool", "deepfool", {}), ("bb from deepfool", "bb", {}),
             ("bb from fmn", "bb", {"init": "fmn", "steps": 900})],
    "l1": [("fmn", "fmn", {"steps": None}), ("alma", "alma", {"steps": None}), ("ead", "ead", {}),
           ("fab", "fab", {}), ("pdpgd", "pdpgd", {}),
           ("pdpgd exact lr 0.5", "pdpgd", {"lr": 0.5, "proximal_exact": True}),
           ("sparsefool", "sparsefool", {}), ("bb from deepfool", "bb", {}),
           ("bb from fmn", "bb", {"init": "fmn", "steps": 900})],
    "l0": [("fmn", "fmn", {"steps": None}), ("sigma_zero", "sigma_zero", {"steps": None}), ("pdpgd", "pdpgd", {}),
           ("jsma", "jsma", {}), ("sparsefool", "sparsefool", {}), ("bb from deepfool", "bb", {}),
           ("bb from fmn", "bb", {"init": "fmn", "steps": 900})],
}


def summary(d: torch.Tensor) -> tuple[float, float, int]:
    """``(mean, median, successes)`` of ``[B]`` sizes, ``inf`` where an image was missed."""
    return float(d.mean()), float(d.median()), int(torch.isfinite(d).sum())


def best_of(rows: list[tuple[str, torch.Tensor, float]], stat: int) -> tuple[str, torch.Tensor, float] | None:
    """The row with the lowest mean (``stat`` 0) or median (1) among those with no miss (None if every one
    missed an image)."""
    full = [r for r in rows if bool(torch.isfinite(r[1]).all())]
    return min(full, key=lambda r: summary(r[1])[stat]) if full else None


def main() -> None:
    ap = peer_parser(__doc__.splitlines()[0], "l2,linf,l1,l0", peers_required=False)
    ap.add_argument("--steps", type=int, default=1000, help="iterations of our iterative attacks (adv-lib's: 1000)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if not args.advlib:
        ap.error("--advlib is required (the peers' side directory)")
    torch.set_num_threads(args.threads)
    from robust_cli.attacks import list_attacks

    registry = list_attacks()
    model, x, y, n = correct_test_images(args.run, args.n)
    lib = load_advlib(args.advlib)
    print(f"model {args.run}; {len(x)}/{n} correctly classified test images; ours at {args.steps} steps")
    print("| norm | side | attack | success | mean | median | passes/img |")
    print("|---|---|---|---|---|---|---|")
    verdicts = []
    for norm in [s.strip() for s in args.norms.split(",") if s.strip()]:
        sides = {"ours": [], "adv-lib": []}
        runs = [("ours", label, lambda m, x, y, fn=registry[name], o=opts, norm=norm: fn(
                    m, x, y, norm=norm, **{k: (args.steps if v is None else v) for k, v in o.items()}))
                for label, name, opts in OURS[norm] if name in registry and norm in registry[name].norms]
        runs += [("adv-lib", label, fn) for label, fn in advlib_members(lib, norm).items()]
        for side, label, fn in runs:
            torch.manual_seed(0)
            try:
                adv, _, rows = timed(model, lambda m, fn=fn: fn(m, x, y))
            except Exception as err:  # noqa: BLE001 - a peer that does not run is reported, not fatal
                print(f"| {norm} | {side} | {label} | failed: {type(err).__name__}: {str(err)[:60]} | | | |")
                continue
            d = verified_sizes(model, x, y, adv, norm)
            mean, median, ok = summary(d)
            sides[side].append((label, d, rows / len(x)))
            print(f"| {norm} | {side} | {label} | {ok}/{len(d)} | {mean:.5f} | {median:.5f} | {rows / len(x):.0f} |",
                  flush=True)
        budget = 1.5 * max((r[2] for r in sides["adv-lib"]), default=0.0)  # comparable passes: at most this
        ours = [r for r in sides["ours"] if r[2] <= budget]
        for stat, pick in (("mean", 0), ("median", 1)):
            o, t = best_of(ours, pick), best_of(sides["adv-lib"], pick)
            if o is None or t is None:
                verdicts.append(f"{norm} {stat}: no attack without a miss on one side")
                continue
            ov, tv = summary(o[1])[pick], summary(t[1])[pick]
            verdicts.append(f"{norm} {stat}: ours {o[0]} {ov:.5f} ({o[2]:.0f} passes/img) against adv-lib {t[0]} "
                            f"{tv:.5f} ({t[2]:.0f}): {'<=' if ov <= tv * (1 + 1e-9) else '>'} "
                            f"({100 * (ov / tv - 1):+.3f}%)")
    print("\nbest single attack per side and statistic (among those without a miss; ours at most 1.5x the "
          "passes of the peers' costliest):")
    for line in verdicts:
        print(" ", line)


if __name__ == "__main__":
    main()
