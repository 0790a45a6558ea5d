"""Crash safety under fire and concurrency (slow: real ``robust`` processes, killed and restarted).

- ``robust train`` SIGKILLed at six moments (inside the writes of checkpoints/last.pt, history.csv, run.json
  and model.pt, held open by the ``ROBUST_TEST_SLOW_WRITES`` hook of tests/hooks/sitecustomize.py, and at two
  random moments), restarted each time: it ends bit-identical to an uninterrupted deterministic run, with a
  continuous history.csv and no temporary file left;
- ``robust eval`` SIGKILLed in the middle of a three-attack evaluation redoes no finished attack on restart,
  and its merged outputs equal an uninterrupted run's;
- Ctrl-C (SIGINT) stops training cleanly, run.json saying so, and the same command resumes;
- two identical ``robust train`` at once (one refuses in one line, nothing corrupt), two ``robust eval`` with
  different attacks at once on one run (both kept in the merged summary), a 4-job joblib multirun whose
  jobs share run directories.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from cli_helpers import REPO, only_run_dir, robust

pytestmark = pytest.mark.slow

QUICK = ["experiment=quickstart", "model=mlp", "model.widths=[32]", "device=cpu", "deterministic=true"]
TRAIN = [*QUICK, "epochs=6", "max_batches_per_epoch=4"]


def _default_sigint() -> None:
    """In the child before ``exec``: SIGINT back to its default. A suite started in the background by a
    non-interactive shell (``nohup make test-slow &``) inherits SIGINT ignored, and Python then installs no
    KeyboardInterrupt handler, so ``robust`` would (rightly) not react to the test's Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _popen(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "robust_cli.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)


def _wait_for(predicate, proc: subprocess.Popen | None = None, timeout: float = 180.0) -> bool:
    """Poll ``predicate`` until true (True), or until ``proc`` ends or the time is up (False)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.01)
    return False


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*.tmp")]


def history_without_time(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "history.csv").drop(columns=["seconds"])


def weights(path: Path, key: str) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)[key]


def test_train_killed_at_six_moments_ends_bit_identical(tmp_path, epoch_hooks):
    ref_out, out = tmp_path / "reference", tmp_path / "killed"
    res = robust("train", *TRAIN, f"out_dir={ref_out}")
    assert res.returncode == 0, res.stderr[-3000:]
    reference = only_run_dir(ref_out)

    env = {**epoch_hooks(), "ROBUST_TEST_SLOW_WRITES": "0.5"}
    args = ["train", *TRAIN, f"out_dir={out}"]
    rng = random.Random(17)
    moments = ["last.pt", "random", "history.csv", "run.json", "random", "model.pt"]
    killed = []
    for moment in moments:
        proc = _popen(args, env)
        try:
            if moment == "random":  # anywhere from start-up to the middle of training
                _wait_for(lambda: False, proc, timeout=rng.uniform(1.0, 6.0))
                hit = proc.poll() is None
            else:
                hit = _wait_for(lambda m=moment: any(out.glob(f"train/*/*/*/*/**/.{m}.*.tmp")), proc)
            if hit:
                proc.send_signal(signal.SIGKILL)
                killed.append(moment)
        finally:
            proc.wait(timeout=120)
    assert len(killed) >= 5, f"the run ended before it could be killed often enough: {killed}"
    run = only_run_dir(out)
    assert (run / "run.json").exists()

    res = robust(*args)  # the last restart, uninterrupted
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((run / "run.json").read_text())["status"] == "done"
    assert list(pd.read_csv(run / "history.csv").epoch) == list(range(1, 7))  # continuous, each epoch once
    pd.testing.assert_frame_equal(history_without_time(run), history_without_time(reference))
    for path, key in (("model.pt", "state_dict"), ("checkpoints/last.pt", "model")):
        mine, ref = weights(run / path, key), weights(reference / path, key)
        assert mine.keys() == ref.keys() and all(torch.equal(mine[k], ref[k]) for k in ref), path
    assert not temp_files(run), temp_files(run)
    assert not (run / "train.lock").exists()


def test_sigint_stops_training_cleanly_and_the_same_command_resumes(tmp_path, epoch_hooks):
    args = ["train", *QUICK, "epochs=3", "max_batches_per_epoch=2", f"out_dir={tmp_path}"]
    # a 4 s pause after every epoch, however long the epoch took (padding epochs to a minimum length left
    # no pause at all once a loaded machine made epoch 1 longer than it, and the run ended before the signal)
    proc = _popen(args, epoch_hooks(pause_seconds=4))
    assert _wait_for(lambda: any(tmp_path.glob("train/*/*/*/*/checkpoints/last.pt")), proc)
    time.sleep(0.5)  # inside the pause after epoch 1
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "robust: interrupted" in err and "Traceback" not in err
    run = only_run_dir(tmp_path)
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "interrupted" and record["reason"].startswith("SIGINT after epoch"), record
    assert not (run / "train.lock").exists() and not temp_files(run)
    res = robust(*args)
    assert res.returncode == 0 and "resuming" in res.stderr, res.stderr[-3000:]
    assert list(pd.read_csv(run / "history.csv").epoch) == [1, 2, 3]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained")
    res = robust("train", *QUICK, "epochs=1", "max_batches_per_epoch=3", f"out_dir={out}")
    assert res.returncode == 0, res.stderr[-3000:]
    return only_run_dir(out)


EVAL = ["attack=[fgsm,pgd,deepfool]", "norm=linf", "n_examples=30", "device=cpu"]


def _copy(run: Path, where: Path) -> Path:
    shutil.copytree(run, where)
    return where


def test_eval_killed_midway_redoes_no_finished_attack_and_equals_an_uninterrupted_run(trained, tmp_path,
                                                                                     epoch_hooks):
    whole, killed = _copy(trained, tmp_path / "whole"), _copy(trained, tmp_path / "killed")
    res = robust("eval", f"run={whole}", *EVAL)
    assert res.returncode == 0, res.stderr[-3000:]

    env = {**epoch_hooks(), "ROBUST_TEST_SLOW_WRITES": "1.0"}
    proc = _popen(["eval", f"run={killed}", *EVAL], env)
    try:  # the first attack is written; the second one is running or being written
        assert _wait_for(lambda: (killed / "eval" / "fgsm-linf" / "summary.json").exists(), proc)
        assert _wait_for(lambda: any((killed / "eval").glob("pgd-linf/.*.tmp")), proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=120)
    assert not (killed / "eval" / "summary.csv").exists()  # it died before merging
    first = {p.name: p.read_bytes() for p in (killed / "eval" / "fgsm-linf").iterdir()}

    res = robust("eval", f"run={killed}", *EVAL)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "fgsm-linf: already evaluated, reusing" in " ".join(res.stderr.split())
    assert {p.name: p.read_bytes() for p in (killed / "eval" / "fgsm-linf").iterdir()} == first  # not redone
    assert not temp_files(killed)
    for pair in ("fgsm-linf", "pgd-linf", "deepfool-linf"):
        pd.testing.assert_frame_equal(pd.read_csv(killed / "eval" / pair / "per_sample.csv"),
                                      pd.read_csv(whole / "eval" / pair / "per_sample.csv"))
    timing = ["seconds"]
    a = pd.read_csv(killed / "eval" / "summary.csv").drop(columns=timing)
    b = pd.read_csv(whole / "eval" / "summary.csv").drop(columns=timing)
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(pd.read_csv(killed / "eval" / "error_curves.csv"),
                                  pd.read_csv(whole / "eval" / "error_curves.csv"))


def test_two_identical_trains_at_once_one_refuses_none_corrupts(tmp_path, epoch_hooks):
    args = ["train", *QUICK, "epochs=2", "max_batches_per_epoch=2", f"out_dir={tmp_path}"]
    env = epoch_hooks(min_epoch_seconds=6)
    procs = [_popen(args, env) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    lines = loser.strip().splitlines()
    assert len(lines) == 1 and "is being trained by pid" in lines[0] and "Traceback" not in loser, loser
    run = only_run_dir(tmp_path)
    assert json.loads((run / "run.json").read_text())["status"] == "done"
    assert list(pd.read_csv(run / "history.csv").epoch) == [1, 2]
    assert weights(run / "model.pt", "state_dict")
    assert not temp_files(run) and not (run / "train.lock").exists()


def test_two_evals_with_different_attacks_at_once_both_kept(trained, tmp_path, epoch_hooks):
    run = _copy(trained, tmp_path / "run")
    env = {**epoch_hooks(), "ROBUST_TEST_SLOW_WRITES": "0.5"}  # long enough writes to overlap
    procs = [_popen(["eval", f"run={run}", f"attack={a}", "norm=linf", "n_examples=20", "device=cpu"], env)
             for a in ("fgsm", "pgd")]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert all(code == 0 for code, _ in results), results
    summary = pd.read_csv(run / "eval" / "summary.csv")
    assert {("fgsm", "linf"), ("pgd", "linf")} <= set(zip(summary.attack, summary.norm))
    assert not temp_files(run)


def test_a_four_job_joblib_multirun_sharing_run_dirs(tmp_path):
    """seed=0,0,1,1: two jobs per run directory, four at once. One of each pair trains; the other is refused
    by the owner lock (or finds the run done): two finished runs, none corrupt; jobs.csv lists all four."""
    res = robust("train", "-m", *QUICK, "epochs=2", "max_batches_per_epoch=2", "seed=0,0,1,1",
                 "hydra/launcher=local", "hydra.launcher.n_jobs=4", f"out_dir={tmp_path}", cwd=tmp_path)
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    runs = sorted(p.parent for p in tmp_path.glob("train/*/*/*/*/run.json"))
    assert len(runs) == 2, runs
    for run in runs:
        assert json.loads((run / "run.json").read_text())["status"] == "done"
        assert list(pd.read_csv(run / "history.csv").epoch) == [1, 2]
        assert weights(run / "model.pt", "state_dict")
        assert not temp_files(run) and not (run / "train.lock").exists()
    jobs = pd.read_csv(next(tmp_path.glob("sweeps/train/*/jobs.csv")))
    assert len(jobs) == 4 and set(jobs.status) <= {"completed", "failed"}, jobs
    for row in jobs.itertuples():
        assert row.status == "completed" or "is being trained by" in str(row.error), row

    eval_res = robust("eval", "-m", f"run={runs[0]}", "attack=fgsm,pgd,deepfool,noise", "norm=linf", "n_examples=20",
                      "device=cpu", "hydra/launcher=local", "hydra.launcher.n_jobs=4", f"out_dir={tmp_path}",
                      cwd=tmp_path)
    assert eval_res.returncode == 0, eval_res.stderr[-3000:]
    summary = pd.read_csv(runs[0] / "eval" / "summary.csv")
    assert {"fgsm", "pgd", "deepfool", "noise"} <= set(summary.attack)
