"""Diagnosis for issue 10: B&B's step or B&B's start? Ours and foolbox's B&B from the same starting points.

On the correctly classified images among the first ``--n`` test images of a ``robust train`` run, per norm:
the two starts the benchmark ``bench_ensemble.py`` compares, i.e. our ``minimal`` ensemble without its B&B
member (``ours``) and adv-lib's per-image best (``peers``, ``bench_ensemble.advlib_members``); foolbox's B&B
(1000 steps) from the peers' start, whose result joined with the peers' best is the benchmark's per-image
minimum; then our ``bb`` at its defaults from each start with each ``step`` solver. Printed per run: the mean
and the fraction of images at most 0.1% above the per-image minimum (as ``bench_ensemble.py``'s target), the
worst three images. Where ours from the peers' start is as good as foolbox's but ours from our start is not,
the gap is the start's basin, not the step. Every result is re-verified (``verified_sizes``)::

    .venv/bin/python scripts/bench_bb_start.py --run RUN_DIR --n 100 --norms l2 --advlib .bench-advlib \\
        --peers .bench-peers
"""

from __future__ import annotations

import inspect
import math

import torch
from _bench import add_peers, correct_test_images, load_advlib, peer_parser, timed, verified_sizes
from bench_ensemble import advlib_members, foolbox_bb


def main() -> None:
    args = peer_parser(__doc__.splitlines()[0], "l2,linf,l1", peers_required=True).parse_args()
    torch.set_num_threads(1)
    from robust_cli.attacks import list_attacks

    model, x, y, _ = correct_test_images(args.run, args.n)
    lib = load_advlib(args.advlib)
    add_peers(args.peers)
    attacks = list_attacks()
    defaults = inspect.signature(attacks["minimal"]).parameters
    for norm in [s.strip() for s in args.norms.split(",") if s.strip()]:
        members = [m for m in defaults[f"{norm}_attacks"].default if m != "bb"]
        torch.manual_seed(0)
        ours = attacks["minimal"](model, x, y, norm=norm, **{f"{norm}_attacks": members})
        peer_min, peers = torch.full((len(x),), math.inf, dtype=torch.float64), x.clone()
        for fn in advlib_members(lib, norm).values():
            torch.manual_seed(0)
            adv = fn(model, x, y).detach()
            d = verified_sizes(model, x, y, adv, norm)
            better = d < peer_min
            peer_min, peers[better] = torch.where(better, d, peer_min), adv[better]
        fb = verified_sizes(model, x, y, foolbox_bb(norm, peers)(model, x, y).detach(), norm)
        floor = torch.minimum(fb, peer_min)
        start_mean = verified_sizes(model, x, y, ours, norm).mean()
        print(f"{norm}: per-image minimum {floor.mean():.4f}; starts: ours {start_mean:.4f}, peers "
              f"{peer_min.mean():.4f}; foolbox B&B from the peers' {fb.mean():.4f}")
        for start_name, start in (("ours", ours), ("peers", peers)):
            for step in ("scaled", "exact"):
                torch.manual_seed(0)
                out, sec, _ = timed(model, lambda m, s=start, st=step, nm=norm: attacks["bb"](
                    m, x, y, norm=nm, x_init=s, step=st))
                d = verified_sizes(model, x, y, out, norm)
                worst = (d / floor - 1).topk(3)
                print(f"  bb step={step:6s} from {start_name:5s}: mean {d.mean():.4f}, within 0.1% "
                      f"{(d <= floor * 1.001).double().mean():.3f}, worst "
                      f"{[(i, f'{100 * v:.2f}%') for v, i in zip(worst.values.tolist(), worst.indices.tolist())]}, "
                      f"{sec:.0f} s")


if __name__ == "__main__":
    main()
