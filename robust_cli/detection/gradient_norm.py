"""The gradient-norm detector: an input is flagged as attacked when ``||grad_x CE(f(x), argmax f(x))||_2``
exceeds a threshold set on clean images (Oberman, "Making deep neural networks more robust", MIML seminar
2018, slides "Our attack detection: image vulnerability" and "Attack detection works?": the model's own
vulnerability as a proxy, the threshold flagging 5% of clean images).

The detector does not know the true label, so the loss is taken at the model's prediction.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from robust_cli.attacks.contract import frozen_eval
from robust_cli.attacks.losses import loss_gradient


def detector_scores(model: nn.Module, x: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
    """``[N]`` ``||grad_x CE(f(x_i), argmax f(x_i))||_2`` for ``x`` ``[N,C,H,W]`` in [0,1] (float32 model, eval
    mode, no parameter gradient left)."""
    out = []
    with frozen_eval(model):
        for i in range(0, x.shape[0], batch_size):
            xb = x[i:i + batch_size].float()
            with torch.no_grad():
                pred = model(xb).argmax(1)
            grad, _ = loss_gradient(model, xb, pred, "ce")
            out.append(grad.flatten(1).norm(dim=1).detach())
    return torch.cat(out).cpu() if out else torch.zeros(0)


def threshold_for_fpr(clean: np.ndarray, fpr: float) -> float:
    """The threshold ``t`` flagging (score ``> t``) ``floor(fpr * n)`` of the ``n`` calibration scores:
    the ``k+1``-th largest score, ``k = floor(fpr n)`` (ties at ``t`` are not flagged, so at most ``k`` are)."""
    s = np.sort(np.asarray(clean, dtype=np.float64))[::-1]
    if not len(s):
        raise ValueError("no calibration images")
    k = min(int(math.floor(fpr * len(s))), len(s) - 1)
    return float(s[k])


def flagged(scores: np.ndarray, threshold: float) -> np.ndarray:
    """``scores > threshold`` (bool ``[N]``)."""
    return np.asarray(scores, dtype=np.float64) > threshold


def roc_auc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of the score separating ``positives`` (attacked) from ``negatives``
    (clean): ``P[s+ > s-] + P[s+ = s-] / 2`` (the Mann-Whitney statistic); nan where a side is empty."""
    neg, pos = np.asarray(negatives, np.float64), np.asarray(positives, np.float64)
    if not len(neg) or not len(pos):
        return float("nan")
    both = np.concatenate([neg, pos])
    order = both.argsort(kind="mergesort")
    ranks = np.empty(len(both))
    ranks[order] = np.arange(1, len(both) + 1)
    for value in np.unique(both):  # mid-ranks for ties
        tie = both == value
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    u = ranks[len(neg):].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))
