"""The figures of ``robust report``, each written as PNG and SVG: error curves of several runs overlaid per
norm, robust accuracy against eps, training curves side by side, distributions of rho_adv.

Colours follow the defense (the same defense is the same colour in every figure of a report); line styles
tell the other ``by`` values of a defense apart; each run is one line, labelled with its ``by`` values and seed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on clusters; must precede pyplot
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from robust_cli import io
from robust_cli.reporting.tables import WORST
from robust_cli.reporting.collect import Run
from robust_cli.reporting.paper_tables import NORM_ORDER
from robust_cli.reporting.plots import NORM_LABEL

log = logging.getLogger(__name__)
STYLES = ("-", "--", ":", "-.")


class Palette:
    """``colour(run)`` by defense (tab10, sorted names), ``style(run)`` by the other ``by`` values."""

    def __init__(self, runs: list[Run], by: list[str]):
        self.by = by
        cmap = plt.get_cmap("tab10")
        self.colours = {d: cmap(i % 10) for i, d in enumerate(sorted({r.params["defense"] for r in runs}))}
        others = sorted({self._others(r) for r in runs})
        self.styles = {o: STYLES[i % len(STYLES)] for i, o in enumerate(others)}

    def _others(self, run: Run) -> tuple:
        return tuple(run.params[c] for c in self.by if c != "defense")

    def colour(self, run: Run):
        return self.colours[run.params["defense"]]

    def style(self, run: Run) -> str:
        return self.styles[self._others(run)]

    def group(self, run: Run) -> str:
        return ", ".join(run.params[c] for c in self.by)

    def label(self, run: Run) -> str:
        return f"{self.group(run)} (seed {run.params['seed']})"


def _save(fig, out: Path, stem: str) -> list[Path]:
    """PNG and SVG of ``fig``; the same report twice gives the same bytes (SVG: no date, fixed element ids)."""
    try:
        with plt.rc_context({"svg.hashsalt": stem}):
            return [io.save_figure(out / f"{stem}.png", fig, dpi=120, bbox_inches="tight"),
                    io.save_figure(out / f"{stem}.svg", fig, dpi=120, bbox_inches="tight", metadata={"Date": None})]
    finally:
        plt.close(fig)


def _norms(runs: list[Run]) -> list[str]:
    present = {n for r in runs for n in r.summary["norm"]}
    return [n for n in NORM_ORDER if n in present]


def _worst_curve(run: Run, norm: str) -> pd.DataFrame | None:
    """The run's worst case curve of ``norm`` (the single attack where only one was evaluated)."""
    c = run.curves[run.curves["norm"] == norm]
    if (c["attack"] == WORST).any():
        return c[c["attack"] == WORST]
    return c if c["attack"].nunique() == 1 else None


def _panels(n: int, width: float = 4.2, height: float = 3.4):
    fig, axes = plt.subplots(1, max(n, 1), figsize=(width * max(n, 1), height), squeeze=False)
    return fig, list(axes[0])


def _legend(fig, axes) -> None:
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(3, len(labels)),
                   fontsize=8, frameon=False)


def error_curves(runs: list[Run], pal: Palette, out: Path) -> list[Path]:
    """One panel per norm, one step line per run: err(eps) of the worst case over its attacks."""
    norms = _norms(runs)
    fig, axes = _panels(len(norms))
    for ax, norm in zip(axes, norms):
        right = 0.0
        for run in runs:
            c = _worst_curve(run, norm)
            if c is None or c.empty:
                continue
            eps = c["eps"].to_numpy(float)
            right = max(right, float(np.nanmax(eps[np.isfinite(eps)], initial=0.0)))
            ax.step(eps, c["error"].to_numpy(float), where="post", color=pal.colour(run), linestyle=pal.style(run),
                    label=pal.label(run), linewidth=1.5)
        ax.set_xlim(0, right * 1.05 or 1.0)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(f"{NORM_LABEL.get(norm, norm)} adversarial distance eps")
        ax.set_ylabel("test error P[d <= eps]")
        ax.set_title(f"{NORM_LABEL.get(norm, norm)}: worst case over attacks")
        ax.grid(alpha=0.3)
    _legend(fig, axes)
    return _save(fig, out, "error_curves")


def robust_accuracy(runs: list[Run], pal: Palette, out: Path) -> list[Path]:
    """Robust accuracy (worst case) at the thresholds, mean and std over the runs of each group."""
    norms = [n for n in _norms(runs) if any(_acc(r, n) for r in runs)]
    if not norms:
        return []
    fig, axes = _panels(len(norms))
    for ax, norm in zip(axes, norms):
        groups: dict[str, list[Run]] = {}
        for run in runs:
            groups.setdefault(pal.group(run), []).append(run)
        for name, members in sorted(groups.items()):
            frame = pd.DataFrame([_acc(r, norm) for r in members])
            if frame.empty:
                continue
            ts = sorted(frame.columns, key=float)
            mean, std = frame[ts].mean(), frame[ts].std(ddof=1).fillna(0.0)
            ax.errorbar([float(t) for t in ts], mean.to_numpy(), yerr=std.to_numpy(), marker="o", capsize=3,
                        color=pal.colour(members[0]), linestyle=pal.style(members[0]),
                        label=f"{name} (n={len(members)})")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(f"{NORM_LABEL.get(norm, norm)} threshold eps")
        ax.set_ylabel("robust accuracy")
        ax.set_title(f"{NORM_LABEL.get(norm, norm)}: worst case over attacks")
        ax.grid(alpha=0.3)
    _legend(fig, axes)
    return _save(fig, out, "robust_accuracy")


def _acc(run: Run, norm: str) -> dict[str, float]:
    r = run.summary[(run.summary["norm"] == norm)]
    worst = r[r["attack"] == WORST]
    row = worst.iloc[0] if len(worst) else (r.iloc[0] if len(r) == 1 else None)
    if row is None:
        return {}
    return {c[11:]: float(row[c]) for c in row.index if c.startswith("robust_acc@") and pd.notna(row[c])}


def training_curves(runs: list[Run], pal: Palette, out: Path) -> list[Path]:
    """``history.csv`` of every run: train loss, train error and test (or val) error against the epoch."""
    cols = [c for c in ("train_loss", "train_error", "val_error", "test_error")
            if any(r.history is not None and c in r.history for r in runs)]
    if not cols:
        return []
    fig, axes = _panels(len(cols), width=3.8)
    for ax, col in zip(axes, cols):
        for run in runs:
            h = run.history
            if h is not None and col in h:
                ax.plot(h["epoch"], h[col], color=pal.colour(run), linestyle=pal.style(run), marker=".",
                        label=pal.label(run))
        ax.set_xlabel("epoch")
        ax.set_ylabel(col.replace("_", " "))
        ax.set_title(col.replace("_", " "))
        ax.grid(alpha=0.3)
    _legend(fig, axes)
    return _save(fig, out, "training_curves")


def _x_norms(run: Run, norm: str) -> np.ndarray | None:
    """``||x||`` in ``norm`` of the run's test images in evaluation order; None where the data is not found."""
    import torch

    from robust_cli.data import load_split
    from robust_cli.data.sources import with_root
    from robust_cli.evaluation.distances import perturbation_norms

    try:
        cfg = run.dir.read_config()
        x, _ = load_split(cfg.dataset, with_root(cfg.get("data"), None), "test")
    except Exception as err:  # data moved or offline: that figure is skipped, the report goes on
        log.warning("rho_adv distribution: test images of %s not read (%s); skipped", run.path, err)
        return None
    return perturbation_norms(x, torch.zeros_like(x))[norm].double().numpy()


def rho_distributions(runs: list[Run], pal: Palette, out: Path, attacks: list[str] | None) -> list[Path]:
    """Histograms of the per-image ``rho = ||r|| / ||x||`` (thesis eq 3.20, Fig. 3.6) of the successful
    attacks on correctly classified images, one panel per (attack, norm), one outline per run."""
    pairs = sorted({(a, n) for r in runs for a, n in zip(r.summary["attack"], r.summary["norm"])
                    if a != WORST and (not attacks or a in attacks or f"{a}-{n}" in attacks)})
    if not pairs:
        return []
    fig, axes = _panels(len(pairs))
    drawn = False
    cache: dict[tuple[str, str], np.ndarray | None] = {}
    for ax, (attack, norm) in zip(axes, pairs):
        for run in runs:
            result = run.dir.eval.result(attack, norm)
            if not result.per_sample_path.is_file():
                continue
            key = (run.dir.read_config().get("dataset", {}).get("name", ""), norm)
            if key not in cache:
                cache[key] = _x_norms(run, norm)
            xn = cache[key]
            if xn is None:
                continue
            f = result.read_per_sample()
            ok = (f["label"] == f["clean_pred"]).to_numpy() & np.isfinite(f["distance"].to_numpy(float))
            rho = f["distance"].to_numpy(float)[ok] / xn[f["index"].to_numpy()[ok]]
            if len(rho):
                ax.hist(rho, bins=30, histtype="step", density=True, color=pal.colour(run),
                        linestyle=pal.style(run), label=pal.label(run), linewidth=1.3)
                drawn = True
        ax.set_xlabel(r"$\rho$ = ||r|| / ||x||")
        ax.set_ylabel("density")
        ax.set_title(f"{attack}, {NORM_LABEL.get(norm, norm)}")
        ax.grid(alpha=0.3)
    if not drawn:
        plt.close(fig)
        return []
    _legend(fig, axes)
    return _save(fig, out, "rho_adv")


def all_plots(runs: list[Run], by: list[str], out: Path, attacks: list[str] | None) -> list[Path]:
    """Every figure under ``out`` (``<stem>.png`` and ``.svg``); returns the files written."""
    pal = Palette(runs, by)
    files = error_curves(runs, pal, out) + robust_accuracy(runs, pal, out) + training_curves(runs, pal, out)
    return files + rho_distributions(runs, pal, out, attacks)
