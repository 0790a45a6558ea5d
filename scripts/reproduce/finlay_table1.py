"""Finlay, Oberman & Abbasi, Table 1 (CIFAR-10 part): ResNeXt-34 trained as J0 (baseline), J1 (FGSM-style
l2 step, ``at_fgsm``), J2 (``at_l2``) and J2-Lip with the tanh head (``tulip model.tanh_head=true``); median
l2 adversarial distance and % error at l2 eps 0.1 (worst case over the attacks), % error at linf eps 1/16,
and the maximum observed ||grad loss|| and ||J|| (the report's Lipschitz table).

A GPU job (the recipe of ``experiment=finlay_cifar10_resnext34``: 200 epochs, batch 128, SGD). Cost, not
measured here (no GPU was lent to this work): ResNeXt-34 (cardinality 2, width 32) is a ~ResNet-34-sized
network; one CIFAR-10 epoch of J0 is of the order of 15-30 s on one current data-centre GPU, J1/J2 about
twice that (a second forward/backward for the step), J2-Lip about four times (double backprop), so the four
runs need roughly 8-12 GPU-hours, and the evaluation (six l2 attacks with eps search on ``--n`` images)
another 1-2 hours at n=1000. Run each training as its own job on a cluster: ``hydra/launcher=slurm``
(pass it through ``--launcher slurm``).

    python scripts/reproduce/finlay_table1.py [--epochs 200] [--n 1000] [--launcher slurm]
"""

from __future__ import annotations

from _common import eval_runs, parser, robust, run_dirs, train_common, train_sweep

# Finlay et al. §4.1 attack every model with six attacks, distances in l2: the gradient attack (fgm), PGD
# (l2), FGSM, I-FGSM, DeepFool and the Boundary attack. This project's fgsm is the linf attack (its distance
# is the linf one), so the l2 evaluation runs C&W in its place; Finlay report PGD as the strongest of the six
ATTACKS = "attack=[fgm,ifgsm,pgd,deepfool,cw,boundary]"


def main() -> None:
    p = parser(__doc__, epochs=200, seeds="0", n=1000)
    p.add_argument("--launcher", default=None, help="hydra/launcher (slurm, local); default: in process")
    args = p.parse_args()
    common = train_common(args) + ([f"hydra/launcher={args.launcher}"] if args.launcher else [])
    exp = "experiment=finlay_cifar10_resnext34"
    sweeps = [train_sweep(args.out, "finlay1_j0_j1_j2", [exp, "defense=none,at_fgsm,at_l2", *common]),
              train_sweep(args.out, "finlay1_j2lip", [exp, "defense=tulip", "model.tanh_head=true", *common])]
    runs = [r for s in sweeps for r in run_dirs(s)]
    ev = [f"n_examples={args.n}", f"device={args.device}", "eps.l2=0.1", "eps.linf=0.0625"]
    eval_runs(args.out, "finlay1_eval_l2", runs, [ATTACKS, "norm=l2", *ev])
    eval_runs(args.out, "finlay1_eval_linf", runs, ["attack=[pgd,deepfool]", "norm=linf", *ev])
    robust("report", "runs=[" + ",".join(str(s) for s in sweeps) + "]", "name=finlay_table1",
           "by=[defense,model.tanh_head]", f"out_dir={args.out}")


if __name__ == "__main__":
    main()
