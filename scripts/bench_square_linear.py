"""Square Attack l2 against torchattacks' Square l2 on linear models whose minimal l2 distance is exact.

A score-based random search over square windows cannot be expected to reach the exact l2 boundary of a
random-weight linear model (its optimal perturbation has no spatial structure to find), so this measures
instead how far above the optimum each implementation has to be given eps before it breaks every image:
per factor ``f``, the fraction of 16 images broken within ``eps = f x optimum`` at ``--queries`` queries,
both re-verified here (misclassified, inside [0,1], l2 size <= eps). torchattacks' Square takes one scalar
eps, so it runs image by image (its l2 start needs images of side >= 5).

    OMP_NUM_THREADS=1 python scripts/bench_square_linear.py --peers .bench-peers
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench import add_peers, verified_sizes  # noqa: E402
from linear_reference import make_problem, minimal_distance  # noqa: E402
from robust_cli.attacks.square import square  # noqa: E402


def broken(model, x, y, x_adv, eps) -> torch.Tensor:
    """``[B]`` bool: re-verified adversarial (``_bench.verified_sizes``) within ``eps`` (float rounding aside)."""
    return verified_sizes(model, x, y, x_adv, "l2") <= eps.double() * (1 + 1e-5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", default=None, help="side directory holding torchattacks")
    parser.add_argument("--queries", type=int, default=1000)
    args = parser.parse_args()
    torchattacks = None
    if add_peers(args.peers):
        import torchattacks  # noqa: PLC0415
    torch.manual_seed(0)
    for shape in ((3, 10, 10), (1, 28, 28)):
        model, x, y = make_problem(n=16, in_shape=shape, num_classes=2, seed=3)
        opt = minimal_distance(model, x, y, "l2").float()
        print(f"linear model on {shape}, {args.queries} queries: fraction of 16 images broken at f x optimum")
        for f in (1.05, 1.5, 2.0, 3.0):
            eps = opt * f
            ours = broken(model, x, y, square(model, x, y, norm="l2", eps=eps, n_queries=args.queries), eps)
            line = f"  f={f:<4} ours {ours.float().mean():.3f}"
            if torchattacks is not None:
                theirs = torch.zeros(len(x), dtype=torch.bool)
                for i in range(len(x)):
                    atk = torchattacks.Square(model, norm="L2", eps=float(eps[i]), n_queries=args.queries,
                                              n_restarts=1, seed=0, p_init=0.8, loss="margin")
                    xi, yi = x[i:i + 1], y[i:i + 1]
                    theirs[i] = bool(broken(model, xi, yi, atk(xi, yi), eps[i:i + 1]))
                line += f"  torchattacks {theirs.float().mean():.3f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
