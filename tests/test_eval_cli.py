"""End to end through the CLI: train the quickstart for one epoch, evaluate it, check files and numbers.

Numbers are checked against independent recomputation (the model's own test predictions, the per-image
minimum over the per-sample files, a brute-force nearest pair), not against stored values.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

ROBUST = [sys.executable, "-m", "robust_cli.cli"]
N = 30


def robust(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "160"}
    return subprocess.run([*ROBUST, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
                          check=False)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli")
    res = robust("train", "experiment=quickstart", "epochs=1", f"out_dir={out}", cwd=out)
    assert res.returncode == 0, res.stderr[-3000:]
    found = [p.parent for p in (out / "train").rglob("model.pt")]
    assert len(found) == 1, found
    return found[0]


def _run_arg(run: Path) -> str:
    # run directory names hold no '=', ',' or brackets: a user pastes them unquoted
    return f"run={run}"


def test_eval_several_attacks_and_norms_then_reuse(run_dir):
    cwd = run_dir.parent
    args = [_run_arg(run_dir), "attack=[fgsm,fgm,deepfool]", "norm=[l2,linf]", f"n_examples={N}", "search_steps=8"]
    res = robust("eval", *args, cwd=cwd)
    assert res.returncode == 0, res.stderr[-3000:]
    ev = run_dir / "eval"
    done = sorted(p.name for p in ev.iterdir() if p.is_dir() and not p.name.startswith("."))
    # fgsm is linf only and fgm l2 only: those combinations are skipped with a note, not an error
    assert done == ["deepfool-l2", "deepfool-linf", "fgm-l2", "fgsm-linf"]
    assert "skipping fgsm-l2" in res.stderr and "skipping fgm-linf" in res.stderr
    assert not list(cwd.glob("outputs")) and not list(cwd.glob(".hydra"))  # Hydra wrote nothing of its own

    # clean error = the model's own error on the first N test images
    from robust_cli.data import load_split
    from robust_cli.training.checkpoint import load_trained_model

    model, cfg = load_trained_model(run_dir)
    x, y = load_split(cfg.dataset, cfg.data, "test")
    with torch.no_grad():
        wrong = (model(x[:N]).argmax(1) != y[:N]).numpy()
    table = pd.read_csv(ev / "summary.csv")
    assert set(zip(table["attack"], table["norm"])) == {
        ("deepfool", "l2"), ("deepfool", "linf"), ("fgm", "l2"), ("fgsm", "linf"),
        ("worst_case", "l2"), ("worst_case", "linf")}
    np.testing.assert_allclose(table["clean_error"], wrong.mean())
    for name in done:
        per = pd.read_csv(ev / name / "per_sample.csv")
        assert len(per) == N and (per["label"].to_numpy() == y[:N].numpy()).all()
        assert ((per["distance"] == 0) == wrong).all()  # 0 exactly where misclassified clean
        ok = np.isfinite(per["distance"]) & (per["distance"] > 0)
        assert (per.loc[ok, "adv_pred"] != per.loc[ok, "label"]).all()
        s = json.loads((ev / name / "summary.json").read_text())
        assert s["forward_per_sample"] > 0 and s["backward_per_sample"] > 0
        assert set(s["checks"]) >= {"curve_monotone", "unbounded_success", "zero_grad_fraction"}
    # the worst case is the per-image minimum over the attacks of a norm
    for norm, names in (("l2", ["deepfool-l2", "fgm-l2"]), ("linf", ["deepfool-linf", "fgsm-linf"])):
        d = np.min([pd.read_csv(ev / n / "per_sample.csv")["distance"].to_numpy() for n in names], axis=0)
        row = table[(table["attack"] == "worst_case") & (table["norm"] == norm)].iloc[0]
        assert row["median_distance"] == pytest.approx(np.sort(d)[int(np.ceil(N / 2)) - 1])
    curves = pd.read_csv(ev / "error_curves.csv")
    assert list(curves.columns) == ["attack", "norm", "eps", "error"]
    assert set(curves["attack"]) == {"deepfool", "fgm", "fgsm", "worst_case"}
    for _, c in curves.groupby(["attack", "norm"]):
        assert (np.diff(c["error"]) >= 0).all() and c["error"].iloc[0] == pytest.approx(wrong.mean())
    import matplotlib.image

    img = matplotlib.image.imread(ev / "error_curves.png")
    assert img.shape[1] > 1.8 * img.shape[0]  # two panels side by side (l2, linf)
    assert img[..., :3].std() > 0.05  # not blank
    lip = json.loads((ev / "lipschitz.json").read_text())
    assert lip["max_grad_norm"] > 0 and lip["weight_norm_product"] >= lip["max_jacobian_norm"] * (1 - 1e-4)
    assert "robust eval" in res.stdout and "checks" in res.stdout  # the rich table and the checks

    # a second call reuses every result: no attack runs, the per-sample files are untouched
    stamps = {n: (ev / n / "per_sample.csv").stat().st_mtime_ns for n in done}
    res = robust("eval", *args, cwd=cwd)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stderr.count("reusing") == 4
    assert stamps == {n: (ev / n / "per_sample.csv").stat().st_mtime_ns for n in done}


def test_unsupported_norm_alone_is_a_one_line_error(run_dir):
    res = robust("eval", _run_arg(run_dir), "attack=fgsm", "norm=l2", "n_examples=5", cwd=run_dir.parent)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "does not support norm=l2" in res.stderr


@pytest.mark.slow  # four more process starts: ~20 s on a loaded 2-core machine
def test_multirun_lands_in_the_same_files(run_dir):
    res = robust("eval", "-m", _run_arg(run_dir), "attack=fgsm,fgm", "norm=linf,l2", "n_examples=10",
                 "lipschitz=false", "search_steps=6", "force=true", f"out_dir={run_dir.parent}",
                 cwd=run_dir.parent)
    assert res.returncode == 0, res.stderr[-3000:]
    ev = run_dir / "eval"
    s = json.loads((ev / "fgm-l2" / "summary.json").read_text())
    assert s["n"] == 10  # fewer images than stored: replaced with force=true (refused without)
    table = pd.read_csv(ev / "summary.csv")
    assert {("fgsm", "linf"), ("fgm", "l2")} <= set(zip(table["attack"], table["norm"]))
    assert not (ev / "fgsm-l2").exists() and not (run_dir.parent / "multirun").exists()


@pytest.mark.slow  # a process start; the computation itself is covered by tests/test_evaluation.py
def test_data_lipschitz_cli_matches_brute_force(tmp_path):
    res = robust("data-lipschitz", "dataset=digits", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    from omegaconf import OmegaConf

    from robust_cli.data import load_split

    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "dataset" / "digits.yaml")
    x, y = load_split(cfg, OmegaConf.create({"root": "data", "download": False}), "train")
    d = torch.cdist(x.flatten(1).double(), x.flatten(1).double())
    d[(y[:, None] == y[None, :]) | (d == 0)] = float("inf")
    assert out["n"] == len(y) and out["lipschitz"] == pytest.approx(1 / float(d.min()), rel=1e-9)
