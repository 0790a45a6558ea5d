"""``robust data-lipschitz dataset=<name>``: the Lipschitz constant of a data set (Finlay et al. Table 2).

Prints one JSON line ``{"dataset", "split", "n", "lipschitz", "min_distance", "pair", "labels", ...}`` on stdout, valid
JSON: a value that is not finite (``min_distance`` where no two images differ in label, ``lipschitz`` where two
images of different labels coincide) is ``null``. The computation is exact over all pairs, chunked
(``chunk_size`` rows at a time), see ``robust_cli.evaluation.data_lipschitz``."""

from __future__ import annotations

import json
import logging
import math
import sys

import hydra
from omegaconf import DictConfig

from robust_cli.apps import user_errors
from robust_cli.config import register_configs
from robust_cli.errors import UserError

register_configs()
log = logging.getLogger("robust_cli.data_lipschitz")


def compute(cfg: DictConfig) -> dict:
    """Load ``cfg.dataset``'s ``cfg.split`` (the first ``max_images``) and compute its constant."""
    from rich.progress import Progress

    from robust_cli.data import load_split
    from robust_cli.device import resolve_device
    from robust_cli.evaluation.data_lipschitz import data_lipschitz

    if cfg.split not in ("train", "val", "test"):
        raise UserError(f"split must be train, val or test, got {cfg.split}")
    if cfg.chunk_size < 1:
        raise UserError("chunk_size must be at least 1")
    x, y = load_split(cfg.dataset, cfg.data, cfg.split)
    if cfg.max_images is not None:
        x, y = x[: cfg.max_images], y[: cfg.max_images]
    device = resolve_device(cfg.device)
    with Progress(transient=True) as progress:
        task = progress.add_task(f"{cfg.dataset.name} {cfg.split}: pairs", total=int(x.shape[0]))
        result = data_lipschitz(x, y, chunk_size=int(cfg.chunk_size), device=device,
                                on_chunk=lambda k: progress.advance(task, k))
    return {"dataset": str(cfg.dataset.name), "split": str(cfg.split), **result}


@hydra.main(config_path="pkg://robust_cli.conf", config_name="data_lipschitz", version_base=None)
@user_errors
def main(cfg: DictConfig) -> None:
    result = compute(cfg)
    log.info("%s %s: Lipschitz constant %.4f (1 / min distance %.4f between different labels, n=%d)",
             result["dataset"], result["split"], result["lipschitz"], result["min_distance"], result["n"])
    sys.stdout.write(json.dumps(finite_or_null(result), allow_nan=False) + "\n")


def finite_or_null(value):
    """``value`` with every float that is not finite (``inf``, ``nan``) replaced by None, in dicts and lists."""
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value
