"""``robust eval universal=true``: one universal perturbation per norm, written to ``eval/universal/<norm>/``."""

from __future__ import annotations

import logging
import math
import time

import torch

from robust_cli.evaluation.universal import fooling_rate, universal_perturbation
from robust_cli.rundir import EvalDir

log = logging.getLogger("robust_cli.eval")


def universal_run(model, x_test: torch.Tensor, x_craft: torch.Tensor, norms: list[str], eps: dict,
                  eval_dir: EvalDir, *, seed: int = 0, device="cpu") -> dict[str, dict]:
    """Craft on ``x_craft`` (training images), measure on ``x_test`` (held out), per norm in l2/linf."""
    out = {}
    for norm in norms:
        if norm not in ("l2", "linf"):
            log.info("skipping universal-%s: universal perturbations are l2 or linf", norm)
            continue
        e = float(eps.get(norm, math.nan))
        torch.manual_seed(seed)
        start = time.perf_counter()
        was = model.training
        model.eval()
        v = universal_perturbation(model, x_craft.to(device).float(), norm, e)
        size = float(v.abs().max()) if norm == "linf" else float(v.norm())
        summary = {"norm": norm, "eps": e, "norm_of_v": size, "n_craft": int(x_craft.shape[0]),
                   "n_held_out": int(x_test.shape[0]),
                   "fooling_rate_craft": fooling_rate(model, x_craft.to(device).float(), v),
                   "fooling_rate_held_out": fooling_rate(model, x_test.float(), v),
                   "seconds": time.perf_counter() - start}
        model.train(was)
        eval_dir.universal(norm).write(summary, v[0].cpu().numpy())
        log.info("universal-%s at eps %.4g: fooling rate %.3f held out (%.3f on the %d crafting images)", norm, e,
                 summary["fooling_rate_held_out"], summary["fooling_rate_craft"], summary["n_craft"])
        out[norm] = summary
    return out
