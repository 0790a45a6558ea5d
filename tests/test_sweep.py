"""Sweep summary (robust_cli.sweep): one row per job of a multirun, failed jobs listed as failed.

The sweep runs the real `robust train -m` with Hydra's basic launcher on digits (one epoch, a tiny MLP);
the expected values come from the run directories themselves (history.csv) and from the deterministic
run-directory rule of robust_cli.rundir, not from a previous run.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from robust_cli.sweep import expand_sweep, write_summary

SWEEP_ARGS = ["hydra.sweep.subdir=${hydra.job.num}"]  # conf/train.yaml installs the SweepSummary callback


def robust_bin() -> str:
    exe = shutil.which("robust", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("the `robust` entry point is not installed")
    return exe


def test_expand_sweep_follows_hydra_job_order():
    jobs = expand_sweep(["a=1,2", "b=x,y", "c=3"])
    assert jobs == [["a=1", "b=x", "c=3"], ["a=1", "b=y", "c=3"],
                    ["a=2", "b=x", "c=3"], ["a=2", "b=y", "c=3"]]


def test_summary_lists_pending_and_ignores_stale_records(tmp_path):
    import json

    (tmp_path / "sweep.json").write_text(json.dumps({"jobs": [["a=1"], ["a=2"]]}))
    (tmp_path / "0").mkdir()
    rec = {"job": 0, "overrides": ["a=1"], "status": "running"}
    (tmp_path / "0" / "job.json").write_text(json.dumps(rec))
    # a record left by an earlier sweep with other overrides under the same job number
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "job.json").write_text(json.dumps({"job": 1, "overrides": ["a=9"], "status": "failed"}))
    frame = write_summary(tmp_path)
    assert list(frame["status"]) == ["running", "pending"]
    assert list(frame["overrides"]) == ["a=1", "a=2"]
    assert (tmp_path / "jobs.csv").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="device=cuda is what makes the second job fail")
def test_train_multirun_writes_one_row_per_job_including_failed(tmp_path):
    robust = robust_bin()
    sweep = tmp_path / "sweep"
    # the second job fails where it runs (device=cuda without CUDA: a property of the job's machine, so not
    # refused when the sweep is validated, unlike a bad value such as epochs=0)
    proc = subprocess.run(
        [robust, "train", "-m", "device=cpu,cuda", "epochs=1", "model.widths=[8]", f"out_dir={tmp_path}",
         f"hydra.sweep.dir={sweep}", *SWEEP_ARGS],
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode != 0, "a sweep with a failed job must not report success"
    jobs = pd.read_csv(sweep / "jobs.csv")
    assert len(jobs) == 2
    ok, bad = jobs.iloc[0], jobs.iloc[1]
    assert ok["status"] == "completed" and bad["status"] == "failed"
    assert bad["error"].startswith("robust: error: ") and "cuda" in bad["error"]
    # the failure is reported as its one line, not a traceback
    assert "Traceback" not in proc.stderr
    assert "robust: error: " in proc.stderr and "cuda" in proc.stderr
    # the deterministic run directory: <out_dir>/train/<dataset>/<model>/<defense>/<sorted overrides>
    # (device is a runtime-only override: not in the name)
    assert Path(ok["run_dir"]) == tmp_path / "train" / "digits" / "mlp" / "none" / "epochs-1+model.widths-8"
    hist = pd.read_csv(Path(ok["run_dir"]) / "history.csv")
    assert ok["epochs"] == 1 == len(hist)
    assert ok["test_error"] == pytest.approx(hist["test_error"].iloc[-1])
    assert 0.0 <= ok["test_error"] <= 1.0
    assert pd.isna(bad["test_error"])
