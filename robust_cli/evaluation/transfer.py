"""Transfer attacks (``robust eval run=<target> source=<source run>``) and the transfer matrix of a sweep.

A transfer (black-box) attack crafts its adversarials on a *source* model and is scored on the *target*
(Papernot et al. 2016, "Transferability in machine learning"; Matyasko's thesis §2.4.3): the evaluation
runner hands the attack the source model only, and the target decides every success and every distance
(``runner.run_attack(craft_model=...)``). A budget attack's eps search then finds the smallest eps at which
the source-crafted image fools the target. Transfer from a model to itself is the white-box evaluation.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from robust_cli.errors import UserError
from robust_cli.rundir import RunDir

PREFIX = "transfer_"


@dataclass
class Source:
    """A loaded source run: its absolute path, model (eval mode) and weights' identity."""

    path: str
    model: torch.nn.Module
    model_id: str

    def label(self, attack: str) -> str:
        """``transfer_<attack>_<6 hex of the source path>``: the result's name in ``eval/``."""
        return f"{PREFIX}{attack}_{hashlib.sha256(self.path.encode()).hexdigest()[:6]}"


def _shape(dataset_cfg: Any) -> tuple:
    return (str(dataset_cfg.get("name")), tuple(dataset_cfg.get("in_shape") or ()),
            int(dataset_cfg.get("num_classes") or 0))


def load_source(source: str, target_cfg: Any, device) -> Source:
    """The source run of a transfer evaluation; ``UserError`` (one line) where it is not a finished run or
    was trained on another data set (other images or labels: nothing to transfer)."""
    from robust_cli.evaluation.cache import model_identity
    from robust_cli.training.checkpoint import load_trained_model

    run = RunDir(source)
    if not run.is_dir() or not run.model_path.is_file():
        raise UserError(f"source={source} is not a finished train run directory (no model.pt)")
    model, source_cfg = load_trained_model(run, device=device)
    theirs, ours = _shape(source_cfg.dataset), _shape(target_cfg.dataset)
    if theirs != ours:
        raise UserError(f"source={source} was trained on {theirs[0]} {list(theirs[1])} with {theirs[2]} classes, "
                        f"the target on {ours[0]} {list(ours[1])} with {ours[2]} classes; give a source run of "
                        "the same data set")
    return Source(os.path.abspath(source), model.eval(), model_identity(model))


def transfer_matrix(runs: list[str | os.PathLike], attack: str, norm: str, value: str = "error_at_eps") -> pd.DataFrame:
    """``[source, target]`` table of ``value`` (a ``summary.json`` number: ``error_at_eps``,
    ``median_distance``, ...) of ``attack`` in ``norm`` over the given train runs: the diagonal is each run's
    white-box result, the rest the transfer results stored in the targets' ``eval/``. Missing: NaN."""
    paths = [os.path.abspath(r) for r in runs]
    table = pd.DataFrame(index=pd.Index(paths, name="source"), columns=pd.Index(paths, name="target"), dtype=float)
    for target in paths:
        for _, summary in RunDir(target).eval.results():
            if summary.get("norm") != norm:
                continue
            if summary.get("attack") == attack:
                table.loc[target, target] = summary.get(value)
            elif summary.get("transfer_of") == attack and summary.get("source") in table.index:
                table.loc[summary["source"], target] = summary.get(value)
    return table
