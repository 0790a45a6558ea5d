"""Check that attacks return the same tensors, bit for bit, as another checkout's (``--ref DIR``).

For a change meant to leave an attack's results untouched (fewer ops, in-place arithmetic, fused kernels in
the same order): both packages are imported in one process (as in ``scripts/bench_floor.py``), each attack
runs on the same LeNet-5 batches (8x8 digits and MNIST, randomly initialised, seed 0, labelled with the model's
own predictions) in several settings, and the outputs are compared with ``torch.equal``; the distances the
evaluation would measure are compared too. Prints one line per setting and exits 1 on any difference.

Usage: ``OMP_NUM_THREADS=1 python scripts/compare_attacks.py --ref <main checkout> [--batch 64] [--steps 20]``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_floor as bf  # noqa: E402

#: (module, function, options): the settings compared
SETTINGS = [
    ("apgd", "apgd", dict(norm="linf", eps=0.1)),
    ("apgd", "apgd", dict(norm="l2", eps=1.0)),
    ("apgd", "apgd", dict(norm="l1", eps=5.0)),
    ("apgd", "apgd", dict(norm="linf", eps=0.1, loss="dlr", restarts=2)),
    ("apgd", "apgd_t", dict(norm="linf", eps=0.1, target_classes=2)),
    ("fmn", "fmn", dict(norm="l2")),
    ("fmn", "fmn", dict(norm="linf")),
    ("fmn", "fmn", dict(norm="l1")),
    ("fmn", "fmn", dict(norm="l0")),
    ("fmn", "fmn", dict(norm="l2", targeted=True)),
    ("ddn", "ddn", dict(norm="l2")),
    ("ddn", "ddn", dict(norm="l2", targeted=True)),
    ("pdpgd", "pdpgd", dict(norm="l2")),
    ("pdpgd", "pdpgd", dict(norm="linf")),
    ("pdpgd", "pdpgd", dict(norm="l1")),
    ("pdpgd", "pdpgd", dict(norm="l0")),
    ("pdpgd", "pdpgd", dict(norm="l2", optimizer="sgd", restarts=2)),
    ("pdpgd", "pdpgd", dict(norm="l1", proximal_exact=False)),
    ("pdpgd", "pdpgd", dict(norm="l2", proximal_exact=False)),  # the thesis's inexact step (exact by default)
    ("pdpgd", "pdpgd", dict(norm="linf", proximal_exact=False)),
    ("pdpgd", "pdpgd", dict(norm="l2", targeted=True, loss_margin=0.5)),
    ("pdpgd", "pdpgd", dict(norm="linf", loss="hinge")),
    ("pdpgd", "pdpgd", dict(norm="l2", loss="squared_hinge")),
    ("pdpgd", "pdpgd", dict(norm="l1", loss="linear", targeted=True)),
    ("pdpgd", "pdpgd", dict(norm="l2", loss="exp")),
    ("pdgd", "pdgd", dict(norm="l2")),
    ("pdgd", "pdgd", dict(norm="l2", targeted=True, loss="exp", loss_margin=0.1)),
    ("fgsm", "fgsm", dict(norm="linf", eps=0.1)),
    ("fgm", "fgm", dict(norm="l2", eps=1.0, targeted=True)),
    ("pgd", "pgd", dict(norm="linf", eps=0.1)),
    ("pgd", "pgd", dict(norm="l2", eps=1.0)),
    ("alma", "alma", dict(norm="l2")),
    ("alma", "alma", dict(norm="l1")),
    ("cw", "cw", dict(norm="l2", search_steps=2)),
    ("cw", "cw", dict(norm="linf", search_steps=2, initial_const=1e-3)),
]


def load(root: Path | None) -> dict:
    with bf.imported_from(root):
        return {(m, f): getattr(importlib.import_module(f"robust_cli.attacks.{m}"), f) for m, f, _ in SETTINGS}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ref", type=Path, required=True)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--models", default="digits,mnist")
    p.add_argument("--mnist", default="/work/shared/data")
    args = p.parse_args()
    torch.set_num_threads(1)
    ref, ours = load(args.ref), load(None)
    from robust_cli.attacks.geometry import batch_norm

    bad = 0
    for name in args.models.split(","):
        model, x, y, _ = bf.build(name, args.mnist, args.batch)
        for m, f, kw in SETTINGS:
            kw = kw if m in ("fgsm", "fgm") else dict(kw, steps=args.steps)
            yy = (y + 1) % 10 if kw.get("targeted") else y
            outs = []
            for fns in (ref, ours):
                torch.manual_seed(1)
                outs.append(fns[(m, f)](model, x, yy, **kw))
            norm = kw["norm"]
            same = torch.equal(outs[0], outs[1]) and torch.equal(batch_norm(outs[0] - x, norm),
                                                                  batch_norm(outs[1] - x, norm))
            bad += not same
            print(f"{name} {f} {kw}: {'equal' if same else 'DIFFERENT'}", flush=True)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
