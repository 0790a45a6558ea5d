"""Finlay, Oberman & Abbasi, Appendix B Tables 3-6: AllCNN, ResNet-34 and ResNeXt-34 on CIFAR-10 and
CIFAR-100; rows baseline / Lipschitz penalty / tanh head / tanh head + penalty, each without and with
adversarial training (J2): ``none, lip, none+tanh, lip+tanh`` and ``at_l2, tulip, at_l2+tanh, tulip+tanh``.
Tables 3 and 5 (adversarial statistics: median l2 distance, % error at 0 and at l2 eps 0.1) are the
report's Finlay table; Tables 4 and 6 (stability statistics: max ||grad loss||, max ||J||) its Lipschitz
table.

48 GPU trainings of 200 epochs: of the order of 100-150 GPU-hours in all (see finlay_table1.py for the
per-run cost); submit with ``--launcher slurm``. CIFAR-100 uses the CIFAR-10 recipes with
``dataset=cifar100 dataset.augment.cutout=8`` (App. A), ResNeXt-34 its own preset.

    python scripts/reproduce/finlay_tables3_6.py [--epochs 200] [--n 1000] [--launcher slurm]
"""

from __future__ import annotations

from _common import eval_runs, parser, robust, run_dirs, train_common, train_sweep

PRESETS = {
    "cifar10": ["experiment=finlay_cifar10_allcnn,finlay_cifar10_resnet34,finlay_cifar10_resnext34"],
    "cifar100": ["experiment=finlay_cifar10_allcnn,finlay_cifar10_resnet34", "dataset=cifar100",
                 "dataset.augment.cutout=8"],
    "cifar100_resnext": ["experiment=finlay_cifar100_resnext34"],
}


def main() -> None:
    p = parser(__doc__, epochs=200, seeds="0", n=1000)
    p.add_argument("--launcher", default=None, help="hydra/launcher (slurm, local); default: in process")
    args = p.parse_args()
    common = train_common(args) + ([f"hydra/launcher={args.launcher}"] if args.launcher else [])
    sweeps = []
    for name, preset in PRESETS.items():
        for tanh in ("false", "true"):
            sweeps.append(train_sweep(args.out, f"finlay3_6_{name}_tanh_{tanh}",
                                      [*preset, "defense=none,lip,at_l2,tulip", f"model.tanh_head={tanh}", *common]))
    runs = [r for s in sweeps for r in run_dirs(s)]
    eval_runs(args.out, "finlay3_6_eval", runs, ["attack=[pgd,deepfool,cw]", "norm=l2", "eps.l2=0.1",
                                                 f"n_examples={args.n}", f"device={args.device}"])
    robust("report", "runs=[" + ",".join(str(s) for s in sweeps) + "]", "name=finlay_tables3_6",
           "by=[dataset,model,defense,model.tanh_head]", f"out_dir={args.out}")


if __name__ == "__main__":
    main()
