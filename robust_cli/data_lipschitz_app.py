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
import torch
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

    x, y = load_split(cfg.dataset, cfg.data, cfg.split)  # split, chunk_size, max_images: checked by the schema
    if len(x) == 0:  # only val can be empty (the data sets' own splits are refused empty when read)
        raise UserError(f"split={cfg.split} of {cfg.dataset.name} is empty: dataset.val_size="
                        f"{int(cfg.dataset.val_size)} holds out no validation images; give dataset.val_size=<N> "
                        "or split=train|test")
    if cfg.max_images is not None:
        x, y = x[: cfg.max_images], y[: cfg.max_images]
    if len(torch.unique(y)) < 2:  # no pair of different labels: the constant would read 0, as if meaningful
        what = f"the first max_images={cfg.max_images}" if cfg.max_images is not None else "all"
        raise UserError(f"{what} images of {cfg.dataset.name} {cfg.split} have the one label {int(y[0])}: the "
                        "Lipschitz constant needs images of two different labels; raise max_images")
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
