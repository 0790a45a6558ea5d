"""Matyasko's thesis Tables 5.1-5.4 (§5.4.1): attacks x thresholds on MNIST for a plain, an linf-AT and
an l2-AT model. Per norm, the robust accuracy % of each attack at the data set's five thresholds (the
thesis's, in ``conf/dataset/mnist.yaml``) and the mean norm of the successful perturbations (Table 5.1):
linf: DeepFool, B&B, FAB, PGD, PDPGD; l2: DeepFool, C&W, DDN, B&B, FAB, PDGD; l1: SparseFool, EAD, FAB,
PDPGD; l0: JSMA, SparseFool, PDPGD (the thesis also ran B&B for l1/l0 and One Pixel: slow, left out;
``--skip-attacks bb,cw`` drops slow ones for a quick local run).

The thesis evaluates the first 1000 test images with each attack at its paper settings (500 iterations for
PDGD/PDPGD, restarts); the defaults here are the attacks' own defaults on ``--n`` images. PDGD/PDPGD run in
an eval call of their own, first: in one call they would start from the other attacks' best points
(``x_init``), and the thesis compares them started from the clean image. The AT models:
``pgd_at`` linf eps 0.3 and l2 eps 2.0 (Madry et al.'s MNIST models, which the thesis attacks). On a laptop:
``--models plain --epochs 2 --max-batches 200 --n 100``.

    python scripts/reproduce/thesis_tables5.py [--models plain,linf_at,l2_at] [--n 1000]
"""

from __future__ import annotations

from _common import eval_runs, parser, robust, run_dirs, train_common, train_sweep

MODELS = {"plain": ["defense=none"],
          "linf_at": ["defense=pgd_at", "defense.norm=linf", "defense.eps=0.3"],
          "l2_at": ["defense=pgd_at", "defense.norm=l2", "defense.eps=2.0"]}
ATTACKS = {"linf": "deepfool,bb,fab,pgd,pdpgd", "l2": "deepfool,cw,ddn,bb,fab,pdgd",
           "l1": "sparsefool,ead,fab,pdpgd", "l0": "jsma,sparsefool,pdpgd"}
PRIMAL_DUAL = ("pdpgd", "pdgd")  # evaluated in a call of their own: cold starts, as in the thesis


def main() -> None:
    p = parser(__doc__, epochs=100, seeds="0", n=1000)
    p.add_argument("--models", default="plain,linf_at,l2_at")
    p.add_argument("--norms", default="linf,l2,l1,l0")
    p.add_argument("--skip-attacks", default="", help="comma-separated attacks to leave out (slow ones)")
    args = p.parse_args()
    common = train_common(args)
    models = args.models.split(",")
    sweeps = [train_sweep(args.out, f"thesis5_{m}", ["experiment=thesis_mnist_lenet5", *MODELS[m], *common])
              for m in models]
    runs = [r for s in sweeps for r in run_dirs(s)]
    skip = set(filter(None, args.skip_attacks.split(",")))
    for norm in args.norms.split(","):
        attacks = [a for a in ATTACKS[norm].split(",") if a not in skip]
        for part, group in (("pd", [a for a in attacks if a in PRIMAL_DUAL]),
                            ("", [a for a in attacks if a not in PRIMAL_DUAL])):
            if group:
                eval_runs(args.out, f"thesis5_eval_{norm}{'_' + part if part else ''}", runs,
                          [f"attack=[{','.join(group)}]", f"norm={norm}", f"n_examples={args.n}",
                           f"device={args.device}"])
    # defense.norm is a run parameter only where an adversarially trained model is among the runs
    by = "by=[defense,defense.norm]" if any(MODELS[m][0] != "defense=none" for m in models) else "by=[defense]"
    robust("report", "runs=[" + ",".join(str(s) for s in sweeps) + "]", "name=thesis_tables5", by,
           f"out_dir={args.out}")


if __name__ == "__main__":
    main()
