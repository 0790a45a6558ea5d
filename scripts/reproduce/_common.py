"""Shared steps of the reproduction drivers: train a sweep (reused when done), evaluate it, report it.

Every step is an ordinary ``robust`` command (run with this interpreter, ``python -m robust_cli.cli``), so
each driver is also the list of commands a user would type; finished runs and cached evaluations are
reused, never retrained, so a driver re-run after a crash picks up where it stopped.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd


def robust(*args: str) -> None:
    """``robust <args>``; exits with its status when it fails."""
    cmd = [sys.executable, "-m", "robust_cli.cli", *args]
    print("+ robust " + " ".join(shlex.quote(a) for a in args), flush=True)
    rc = subprocess.run(cmd).returncode
    if rc != 0:
        sys.exit(rc)


def train_sweep(out: str, name: str, overrides: list[str]) -> Path:
    """``robust train -m <overrides>`` with the sweep named ``name``; returns its sweep directory."""
    robust("train", "-m", *overrides, f"out_dir={out}", f"hydra.job.name={name}")
    return Path(out) / "sweeps" / name


def run_dirs(sweep: Path) -> list[str]:
    """The run directories of a train sweep's completed jobs (from its ``jobs.csv``)."""
    jobs = pd.read_csv(sweep / "jobs.csv")
    return [str(d) for d in jobs.loc[jobs["status"] == "completed", "run_dir"]]


def eval_runs(out: str, name: str, runs: list[str], overrides: list[str]) -> None:
    """``robust eval -m run=<r1>,<r2>,... <overrides>`` (one job per run, each writing its ``eval/``)."""
    robust("eval", "-m", "run=" + ",".join(runs), *overrides, f"out_dir={out}", f"hydra.job.name={name}")


def parser(doc: str, epochs: int, seeds: str, n: int) -> argparse.ArgumentParser:
    """The options every driver takes; the defaults are the paper's recipe."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs", help="out_dir of every command (default outputs)")
    p.add_argument("--data", default="../shared/data", help="data.root (default ../shared/data)")
    p.add_argument("--epochs", type=int, default=epochs, help=f"training epochs (paper: {epochs})")
    p.add_argument("--seeds", default=seeds, help=f"comma-separated seeds (paper: {seeds})")
    p.add_argument("--n", type=int, default=n, help=f"evaluated test images (paper: {n})")
    p.add_argument("--max-batches", type=int, default=None,
                   help="max_batches_per_epoch: a reduced local run (default: the full epoch)")
    p.add_argument("--device", default="auto")
    return p


def train_common(args: argparse.Namespace) -> list[str]:
    """The overrides every training command of a driver gets from its options."""
    common = [f"data.root={args.data}", f"epochs={args.epochs}", f"seed={args.seeds}", f"device={args.device}"]
    if args.max_batches:
        common.append(f"max_batches_per_epoch={args.max_batches}")
    return common
