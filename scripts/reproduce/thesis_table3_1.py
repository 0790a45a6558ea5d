"""Matyasko's thesis Table 3.1 (§3.5.1): MNIST MLP (3 x 1000) and LeNet-5, baseline / dropout / AT
(FGSM mixture, eps 0.2) / VAT / margin l1 (C 0.01) / margin l2 (C 0.1); the columns are the clean test
error, the error under FGSM at linf eps 0.2, and DeepFool's l2 rho_adv (eq 3.20).

The paper: 100 epochs, batch 100, Adam with lr x 0.95 per epoch, 10 seeds, the whole test set; the
defaults here. On a laptop: ``--epochs 3 --max-batches 200 --seeds 0,1,2 --n 1000`` (~10 min on 1 core).
VAT is reported for the MLP only, as in the paper (the authors' VAT code supported only dense networks).

    python scripts/reproduce/thesis_table3_1.py [--epochs E] [--seeds 0,1,2] [--n N] [--max-batches B]
"""

from __future__ import annotations

from _common import eval_runs, parser, robust, run_dirs, train_common, train_sweep

BOTH = "experiment=thesis_mnist_mlp,thesis_mnist_lenet5"
SWEEPS = {  # sweep name: the overrides of its jobs
    "thesis31_baseline": [BOTH, "defense=none"],
    "thesis31_dropout": [BOTH, "model.dropout=0.5"],
    "thesis31_at": [BOTH, "defense=fgsm_mix", "defense.eps=0.2"],
    "thesis31_vat": ["experiment=thesis_mnist_mlp", "defense=vat"],
    "thesis31_margin_l1": [BOTH, "defense=margin", "defense.C=0.01", "defense.penalty_norm=l1"],
    "thesis31_margin_l2": [BOTH, "defense=margin", "defense.C=0.1", "defense.penalty_norm=l2"],
}


def main() -> None:
    args = parser(__doc__, epochs=100, seeds="0,1,2,3,4,5,6,7,8,9", n=10000).parse_args()
    common = train_common(args)
    sweeps = [train_sweep(args.out, name, [*overrides, *common]) for name, overrides in SWEEPS.items()]
    runs = [r for s in sweeps for r in run_dirs(s)]
    eval_runs(args.out, "thesis31_eval", runs, ["attack=[fgsm,deepfool]", "norm=[linf,l2]", "eps.linf=0.2",
                                                "attack.deepfool.max_step=0.5",  # §3.5: clipped at 0.5 a step
                                                f"n_examples={args.n}", f"device={args.device}"])
    robust("report", "runs=[" + ",".join(str(s) for s in sweeps) + "]", "name=thesis_table3_1",
           "by=[model,defense,model.dropout,defense.penalty_norm]",
           "metrics=[clean_error,error_at_eps,rho_adv]", "attacks=[fgsm-linf,deepfool-l2]", f"out_dir={args.out}")


if __name__ == "__main__":
    main()
