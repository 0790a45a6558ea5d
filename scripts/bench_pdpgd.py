"""Benchmark: our PDPGD (linf, l2, l1, l0) and PDGD (l2) against the published adv-lib implementation.

Same model (a LeNet-5 trained by ``robust train`` on the real MNIST), same first ``--n`` test images, same
number of iterations. Reports, per attack and implementation: success rate over the correctly classified
images, mean and median norm of the successful perturbations, seconds, and seconds per iteration.
Every returned image is re-verified here (in [0,1], misclassified by the model) and its distance recomputed.

adv-lib is never a dependency of ``robust``: install it into a separate directory and point this script at it,
    .venv/bin/pip install --no-deps --target .bench-advlib adv-lib
    .venv/bin/python scripts/bench_pdpgd.py --advlib .bench-advlib --run outputs/train/mnist/lenet5/...
Its optional ``visdom`` import is satisfied by an empty stub module.

Usage: ``python scripts/bench_pdpgd.py [--run RUN_DIR] [--n 100] [--offset 0] [--steps 500] [--advlib DIR]
[--out x.json]`` (``ADVLIB_PATH`` works as well as ``--advlib``; without either, only our attacks run).
``--npz FILE`` takes the test images from ``x_test`` / ``y_test`` of an npz (e.g. the coloured MNIST of
``scripts/coloured_mnist.py``, with a run trained by ``robust train dataset=npz``) instead of torchvision's MNIST;
``--ours`` and ``--advlib-kw`` pass extra options to each side (``--advlib-kw proximal_operator=23``).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import sys
import time
from pathlib import Path

import torch
from _bench import add_peers

ROOT = Path(__file__).resolve().parents[1]

# (label, our attack, our norm, adv-lib function name, adv-lib keyword arguments)
ATTACKS = [
    ("pdpgd linf", "pdpgd", "linf", "pdpgd", {"norm": float("inf")}),
    ("pdpgd l2", "pdpgd", "l2", "pdpgd", {"norm": 2}),
    ("pdpgd l1", "pdpgd", "l1", "pdpgd", {"norm": 1}),
    ("pdpgd l0", "pdpgd", "l0", "pdpgd", {"norm": 0}),
    ("pdgd l2", "pdgd", "l2", "pdgd", {}),
]


def find_run(out_dir: Path) -> Path:
    """The first finished MNIST LeNet-5 run (holding model.pt) under ``out_dir``."""
    runs = sorted(p.parent for p in (out_dir / "train" / "mnist" / "lenet5").rglob("model.pt"))
    if not runs:
        sys.exit(f"no trained LeNet-5 under {out_dir}/train/mnist/lenet5; run e.g.\n"
                 "  robust train dataset=mnist model=lenet5 data.root=../shared/data optimizer=adam "
                 "schedule=constant epochs=3 batch_size=100")
    return runs[0]


def load_advlib(path: str | None):
    """adv-lib's ``primal_dual_gradient_descent`` module from ``path``; None if unset.

    The module file is loaded by itself: the ``adv_lib.attacks`` package would import every other attack
    and their extra requirements (tqdm, ...). Its optional ``visdom`` import gets an empty stub module.
    """
    if not add_peers(path):
        return None
    root = Path(path).resolve()
    spec = importlib.util.spec_from_file_location(
        "advlib_primal_dual", root / "adv_lib" / "attacks" / "primal_dual_gradient_descent.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def norms_of(model, x, y, adv, norm):
    """Success mask ``[B]`` and distances ``[B]`` (inf where failed), recomputed from the returned images."""
    from robust_cli.attacks.primal_steps import perturbation_norm

    with torch.no_grad():
        inside = (adv >= 0).flatten(1).all(1) & (adv <= 1).flatten(1).all(1)
        ok = inside & (model(adv).argmax(1) != y)
    dist = perturbation_norm(adv - x, norm, "pixel")
    return ok, torch.where(ok, dist, torch.full_like(dist, float("inf")))


def options(text: str) -> dict:
    """``'lr=0.05,proximal_exact=False,l0_prox=l23'`` -> keyword arguments (numbers and booleans parsed)."""
    pairs = dict(kv.split("=", 1) for kv in text.split(",") if kv)
    return {k: (ast.literal_eval(v) if v[:1] in "0123456789.[-" or v in ("True", "False") else v)
            for k, v in pairs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=None, help="robust train run dir (default: first under outputs/)")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "outputs")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--n", type=int, default=100, help="first N test images (500 for the full benchmark)")
    ap.add_argument("--offset", type=int, default=0, help="skip the first OFFSET test images")
    ap.add_argument("--npz", type=Path, default=None, help="test images x_test, y_test [N,C,H,W] of this npz")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--advlib", default=os.environ.get("ADVLIB_PATH"), help="directory holding adv_lib")
    ap.add_argument("--only", default="", help="comma-separated labels, e.g. 'pdpgd l0,pdgd l2'")
    ap.add_argument("--ours", default="", help="extra options for our attacks, e.g. 'lr=0.05,restarts=2'")
    ap.add_argument("--advlib-kw", default="", help="extra options for adv-lib, e.g. 'proximal_operator=23'")
    ap.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    import torchvision

    from robust_cli.attacks.pdgd import pdgd
    from robust_cli.attacks.pdpgd import pdpgd
    from robust_cli.training.checkpoint import load_trained_model

    run = args.run or find_run(args.out_dir)
    model, _ = load_trained_model(run)
    model.eval()
    window = slice(args.offset, args.offset + args.n)
    if args.npz is not None:
        import numpy as np

        with np.load(args.npz) as arrays:
            xs = arrays["x_test"][window]
            x_all = torch.as_tensor(xs).float().div(255 if xs.dtype == np.uint8 else 1)  # uint8 or [0,1] floats
            y_all = torch.as_tensor(arrays["y_test"][window]).long()
    else:
        test = torchvision.datasets.MNIST(str(args.data), train=False, download=False)
        x_all = test.data[window].float().div(255).unsqueeze(1)
        y_all = test.targets[window].long()
    with torch.no_grad():
        correct = model(x_all).argmax(1) == y_all
    x_all, y_all = x_all[correct], y_all[correct]
    print(f"model {run}; {int(correct.sum())}/{args.n} test images correctly classified; "
          f"steps {args.steps}; threads {args.threads}")

    adv_lib = load_advlib(args.advlib)
    ours = {"pdpgd": pdpgd, "pdgd": pdgd}
    extra, lib_extra = options(args.ours), options(args.advlib_kw)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    rows = []
    for label, our_name, norm, lib_name, lib_kw in ATTACKS:
        if only and label not in only:
            continue
        def run_ours(xb, yb, fn=ours[our_name], norm=norm):
            return fn(model, xb, yb, norm=norm, steps=args.steps, **extra)

        impls = [("robust", run_ours)]
        if adv_lib is not None:
            fn = getattr(adv_lib, lib_name)
            impls.append(("adv-lib", lambda xb, yb, fn=fn, kw={**lib_kw, **lib_extra}:
                          fn(model, xb, yb, num_steps=args.steps, **kw)))
        for impl, attack in impls:
            oks, dists, t0 = [], [], time.perf_counter()
            for i in range(0, len(x_all), args.batch_size):
                xb, yb = x_all[i: i + args.batch_size], y_all[i: i + args.batch_size]
                adv = attack(xb, yb).detach()
                ok, d = norms_of(model, xb, yb, adv, norm)
                oks.append(ok)
                dists.append(d)
            secs = time.perf_counter() - t0
            ok, d = torch.cat(oks), torch.cat(dists)
            good = d[ok]
            row = {"attack": label, "impl": impl, "success": ok.float().mean().item(),
                   "mean": good.mean().item() if len(good) else float("nan"),
                   "median": good.median().item() if len(good) else float("nan"),
                   "seconds": secs, "ms_per_iter": 1000 * secs / args.steps}
            rows.append(row)
            print(f"| {label} | {impl} | {row['success']:.3f} | {row['mean']:.4f} | {row['median']:.4f} | "
                  f"{secs:.1f} | {row['ms_per_iter']:.1f} |", flush=True)
    if args.out:
        from robust_cli import io

        io.write_json(args.out, {"run": str(run), "n": args.n, "steps": args.steps, "rows": rows})


if __name__ == "__main__":
    main()
