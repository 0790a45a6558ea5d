"""``eval/error_curves.png``: one panel per norm, one step line per attack, the worst case in bold black."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on clusters; must precede pyplot
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from robust_cli import io

NORM_ORDER = ("l0", "l1", "l2", "linf")
NORM_LABEL = {"l0": r"$\ell_0$", "l1": r"$\ell_1$", "l2": r"$\ell_2$", "linf": r"$\ell_\infty$"}


def plot_error_curves(curves: pd.DataFrame, path: str | Path, title: str | None = None) -> Path:
    """Plot the long table ``curves`` (attack, norm, eps, error) to ``path`` (PNG, written atomically).

    Each curve is the right-continuous step function ``err(eps) = P[distance <= eps]`` (Finlay Def. 4.1),
    drawn up to the largest finite eps of its panel. Certified curves (``certified_<method>``, the error
    ``P[radius <= eps]`` no certificate rules out) are dotted: the true robust error lies between them and
    the attacked curves.
    """
    norms = [n for n in NORM_ORDER if n in set(curves["norm"])] or ["l2"]
    fig, axes = plt.subplots(1, len(norms), figsize=(4.2 * len(norms), 3.6), squeeze=False)
    for ax, norm in zip(axes[0], norms):
        panel = curves[curves["norm"] == norm]
        right = float(panel["eps"].max()) * 1.05 if len(panel) and panel["eps"].max() > 0 else 1.0
        for attack, group in panel.groupby("attack", sort=True):
            eps = np.append(group["eps"].to_numpy(float), right)
            err = np.append(group["error"].to_numpy(float), group["error"].to_numpy(float)[-1])
            worst = attack == "worst_case"
            certified = str(attack).startswith("certified_")
            style = {"color": "black", "linewidth": 2.4, "linestyle": "--", "zorder": 3} if worst else (
                {"linewidth": 1.6, "linestyle": ":", "zorder": 2} if certified else {"linewidth": 1.3, "zorder": 2})
            ax.step(eps, err, where="post", label=attack, **style)
        ax.set_xlim(0, right)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(f"{NORM_LABEL.get(norm, norm)} distance eps")
        ax.set_ylabel("error P[d <= eps]")
        ax.set_title(NORM_LABEL.get(norm, norm))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    try:
        return io.save_figure(path, fig, dpi=110)
    finally:
        plt.close(fig)


def plot_score_histograms(scores: dict[str, np.ndarray], threshold: float, path: str | Path,
                          title: str | None = None) -> Path:
    """``detect/gradient_norms.png``: one histogram per entry of ``scores`` (``{label: [N] detector scores}``,
    clean and attacked images) on a shared log-spaced axis, the threshold as a vertical line.

    Each bar is the fraction of that entry's images in the bin (weights ``1/N``; each histogram sums to 1),
    not a density: on log bins a density divides by the bin width, so the few wide bins of large
    (adversarial) scores would be drawn orders of magnitude below the narrow bins of small ones."""
    values = [np.asarray(v, dtype=np.float64) for v in scores.values()]
    pos = np.concatenate([v[v > 0] for v in values]) if values else np.zeros(0)
    lo, hi = (float(pos.min()), float(pos.max())) if len(pos) else (1e-6, 1.0)
    bins = np.geomspace(max(lo, 1e-12), max(hi, lo * 10, 1e-11), 40)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, v in scores.items():
        v = np.asarray(v, dtype=np.float64)
        if len(v):
            ax.hist(np.clip(v, bins[0], bins[-1]), bins=bins, weights=np.full(len(v), 1.0 / len(v)), alpha=0.45,
                    label=f"{label} ({len(v)})")
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel(r"$\|\nabla_x \mathrm{CE}(f(x), \hat y)\|_2$")
    ax.set_ylabel("fraction of images")
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    try:
        return io.save_figure(path, fig, dpi=110)
    finally:
        plt.close(fig)
