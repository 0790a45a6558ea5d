"""Robust validation during training: ``val_attack=pgd val_every=5 val_eps=0.1 val_norm=linf``.

Every ``val_every`` epochs (and after the last) the first ``val_n`` images of the validation split are
attacked at the fixed budget ``val_eps``; the robust accuracy, the fraction that stays correctly classified,
goes to ``history.csv`` (``val_robust_accuracy``) and the epoch with the highest one is kept as
``checkpoints/best.pt``. Selecting the checkpoint by robust accuracy on held-out data is the remedy for
robust overfitting of Rice, Wong & Kolter, "Overfitting in adversarially robust deep learning" (2020, §3:
early stopping on a robust validation set).

An attack's images are never trusted: each is clipped to [0,1], checked to be within ``val_eps`` and
classified again (``evaluation.eps_search.attack_at``). The attack draws from its own seed inside a forked
RNG, so the training's random streams, and with them a resumed run, are those of a run without validation.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from robust_cli.errors import UserError

#: history.csv's column
COLUMN = "val_robust_accuracy"


class RobustValidation:
    """The attack, budget and fixed subset of one run; ``None`` from ``of`` where ``val_attack`` is unset.

    ``x`` ``[n, C, H, W]`` in [0,1] and ``y`` ``[n]``: the first ``val_n`` validation images."""

    def __init__(self, fn, options: dict[str, Any], norm: str, eps: float, every: int, x: torch.Tensor,
                 y: torch.Tensor, batch_size: int):
        self.fn, self.options, self.norm, self.eps, self.every = fn, options, norm, eps, every
        self.x, self.y, self.batch_size = x, y, batch_size

    @classmethod
    def of(cls, cfg: DictConfig, x_val: torch.Tensor, y_val: torch.Tensor) -> RobustValidation | None:
        """Checked before the run directory is touched: every bad value is a one-line ``UserError``."""
        name = cfg.get("val_attack")
        if not name:
            return None
        from robust_cli.config import discover_schemas
        from robust_cli.norms import check_norm
        from robust_cli.schema import check_options, options_of

        schema = discover_schemas("robust_cli.attacks").get(str(name))
        fn = getattr(schema, "__robust_target__", None)
        if fn is None:
            raise UserError(f"val_attack={name}: not an attack (conf/attack/ lists them)")
        if not fn.budget:
            raise UserError(f"val_attack={name} is a minimal-norm attack; robust validation needs a budget attack "
                            "(fgsm, pgd, ...): it measures accuracy at val_eps")
        norm = str(cfg.val_norm)
        check_norm(norm)
        if norm not in fn.norms:
            raise UserError(f"val_attack={name} does not support val_norm={norm} (it supports {', '.join(fn.norms)})")
        if cfg.val_eps is None or not cfg.val_eps > 0:
            raise UserError(f"val_attack={name} needs val_eps > 0 (the budget, in [0,1] pixel units)")
        if cfg.val_every < 1 or cfg.val_n < 1:
            raise UserError("val_every and val_n must be at least 1")
        if len(x_val) == 0:
            raise UserError(f"val_attack={name} needs a validation split: give dataset.val_size=<N> (images held "
                            "out of the training set; the test set never chooses a checkpoint)")
        options = OmegaConf.to_container(cfg.val_options, resolve=True) if cfg.val_options else {}
        unknown = sorted(set(options) - set(options_of(fn)))
        if unknown:
            raise UserError(f"val_options.{unknown[0]}: {name} has no such option (it has "
                            f"{', '.join(sorted(options_of(fn)))})")
        if options.get("targeted"):
            raise UserError("val_options.targeted=true: robust validation counts untargeted errors")
        check_options(fn, options, "val_options")
        n = min(int(cfg.val_n), len(x_val))
        return cls(fn, options, norm, float(cfg.val_eps), int(cfg.val_every), x_val[:n], y_val[:n],
                   int(cfg.eval_batch_size))

    def due(self, epoch: int, epochs: int) -> bool:
        """After epoch ``epoch`` (1-based) of ``epochs``: every ``val_every`` epochs and after the last."""
        return epoch % self.every == 0 or epoch == epochs

    def accuracy(self, model: torch.nn.Module, device: torch.device) -> float:
        """The fraction of the subset classified correctly and not turned by the attack within ``eps``."""
        from robust_cli.evaluation.eps_search import attack_at

        was_training = model.training
        model.eval()
        robust = 0
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(0)  # an attack using the global RNG draws the same at every validation
            for i in range(0, len(self.x), self.batch_size):
                x = self.x[i:i + self.batch_size].to(device)
                y = self.y[i:i + self.batch_size].to(device)
                with torch.no_grad():
                    correct = model(x).argmax(1) == y
                eps = torch.full((len(x),), self.eps, device=device)
                turned, _ = attack_at(self.fn, model, model, x, y, self.norm, eps, self.options)
                robust += int((correct & ~turned).sum())
        model.train(was_training)
        return robust / len(self.x)


def best_so_far(history: list[dict[str, Any]]) -> float:
    """The highest robust accuracy in the rows before this one (``-inf`` where none was measured):
    recomputed from the history, so a resumed run knows it without another file."""
    values = [float(r[COLUMN]) for r in history if r.get(COLUMN) is not None and r[COLUMN] == r[COLUMN]]
    return max(values, default=float("-inf"))
