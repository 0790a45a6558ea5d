"""``robust eval save_adversarials=N``: the first N successful adversarials of an (attack, norm), as arrays
and as the papers' figure (rows: clean, adversarial, difference amplified to the full grey range)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from robust_cli import io
from robust_cli.rundir import ResultDir


def first_successes(frame: pd.DataFrame, n: int) -> np.ndarray:
    """Row positions of the first ``n`` images with a re-verified adversarial (distance finite and > 0:
    correctly classified clean, misclassified after the attack)."""
    d = frame["distance"].to_numpy(np.float64)
    return np.flatnonzero(np.isfinite(d) & (d > 0))[:n]


def save_adversarials(result: ResultDir, frame: pd.DataFrame, x: torch.Tensor, x_adv: torch.Tensor, n: int) -> int:
    """Write ``adversarials.npz`` (``indices [M]``, ``labels [M]``, ``predictions [M]`` (on the adversarial),
    ``clean`` and ``images`` ``[M,C,H,W]`` float32 in [0,1]) and ``adversarials.png``; returns ``M <= n``."""
    rows = first_successes(frame, n)
    clean = x[torch.as_tensor(rows, dtype=torch.long)].detach().cpu().float().numpy()
    adv = x_adv[torch.as_tensor(rows, dtype=torch.long)].detach().cpu().float().numpy()
    io.write_npz(result.adversarials_path, indices=frame["index"].to_numpy()[rows],
                 labels=frame["label"].to_numpy()[rows], predictions=frame["adv_pred"].to_numpy()[rows],
                 clean=clean, images=adv)
    plot_grid(clean, adv, frame["label"].to_numpy()[rows], frame["adv_pred"].to_numpy()[rows],
              result.adversarials_plot_path)
    return len(rows)


def plot_grid(clean: np.ndarray, adv: np.ndarray, labels: np.ndarray, preds: np.ndarray, path) -> None:
    """Three rows per column: clean (true label), adversarial (its prediction), ``|adv - clean|`` scaled by
    its own maximum (so a tiny perturbation is visible)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = max(len(clean), 1)
    fig, axes = plt.subplots(3, m, figsize=(1.3 * m, 4.2), squeeze=False)
    for j in range(len(clean)):
        diff = np.abs(adv[j] - clean[j])
        diff = diff / max(float(diff.max()), 1e-12)
        for i, (img, text) in enumerate(((clean[j], f"y={labels[j]}"), (adv[j], f"pred={preds[j]}"),
                                         (diff, "|diff| x%.3g" % (1 / max(float(np.abs(adv[j] - clean[j]).max()),
                                                                           1e-12))))):
            show = img.transpose(1, 2, 0)
            axes[i][j].imshow(show[..., 0] if show.shape[2] == 1 else show, cmap="gray", vmin=0, vmax=1)
            axes[i][j].set_title(text, fontsize=6)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    try:
        io.save_figure(path, fig, dpi=110)
    finally:
        plt.close(fig)
