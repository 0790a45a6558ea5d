"""Run integrity of ``robust train``: divergence fails the run, one writer per run directory, leftovers of
killed writes are removed, SIGTERM is recorded, a force retrain invalidates the old results, a corrupt
checkpoint is recoverable."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from cli_helpers import REPO, only_run_dir, robust

QUICK = ["experiment=quickstart", "model=mlp", "model.widths=[32]", "device=cpu"]


def one_error_line(proc) -> str:
    """The single ``robust: error:`` line of a failed command (exit 2, no traceback)."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("robust: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def record_of(run) -> dict:
    return json.loads((run / "run.json").read_text())


def max_abs(state_dict) -> float:
    return max(v.abs().max().item() for v in state_dict.values() if v.is_floating_point() and v.numel())


def test_lr_1e6_diverges_fails_the_run_and_blames_the_lr(tmp_path):
    proc = robust("train", *QUICK, "optimizer.lr=1e6", "epochs=3", "max_batches_per_epoch=3", f"out_dir={tmp_path}")
    line = one_error_line(proc)
    assert "training diverged in epoch 1" in line and "lower optimizer.lr" in line, line
    run = only_run_dir(tmp_path)
    record = record_of(run)
    assert record["status"] == "failed" and "diverged" in record["reason"] and "final" not in record
    assert not (run / "model.pt").exists() and not (run / "checkpoints" / "last.pt").exists()


def test_schedule_jump_at_the_last_step_of_an_epoch_is_never_checkpointed(tmp_path):
    """gamma=1e30 at milestone 2 with one step per epoch: epoch 3's only step blows the weights up, after
    which nothing runs in that epoch; the parameter check catches it before the checkpoint, and the message
    names the schedule, not the lr."""
    proc = robust("train", *QUICK, "schedule=multistep", "schedule.milestones=[2]", "schedule.gamma=1e30",
                  "epochs=4", "max_batches_per_epoch=1", f"out_dir={tmp_path}")
    line = one_error_line(proc)
    assert "epoch 3" in line and "max |weight|" in line, line
    assert "schedule.gamma=1e+30" in line and "fix the schedule" in line and "lower" not in line, line
    assert "checkpoint of epoch 2 kept" in line
    run = only_run_dir(tmp_path)
    assert record_of(run)["status"] == "failed"
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and max_abs(ckpt["model"]) < 100
    assert list(pd.read_csv(run / "history.csv").epoch) == [1, 2]
    assert not (run / "model.pt").exists()


def test_a_concurrent_second_start_is_refused_naming_the_holder(tmp_path, epoch_hooks):
    args = [sys.executable, "-m", "robust_cli.cli", "train", *QUICK, "epochs=2", "max_batches_per_epoch=2",
            f"out_dir={tmp_path}"]
    # padded epochs keep the winner running while the loser starts, however loaded the machine
    winner = subprocess.Popen(args, cwd=REPO, env=epoch_hooks(min_epoch_seconds=25), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list(tmp_path.glob("train/*/*/*/*/train.lock")):
            assert winner.poll() is None, winner.stderr.read()
            time.sleep(0.05)
        started = time.time()
        loser = robust("train", *QUICK, "epochs=2", "max_batches_per_epoch=2", f"out_dir={tmp_path}")
        line = one_error_line(loser)
        assert f"is being trained by pid {winner.pid} on " in line and "train.lock" in line, line
        assert winner.poll() is None, "the loser should have been refused while the winner ran"
        assert time.time() - started < 60
    finally:
        _, err = winner.communicate(timeout=300)
    assert winner.returncode == 0, err
    run = only_run_dir(tmp_path)
    record = record_of(run)
    assert record["status"] == "done" and record["starts"] == 1
    assert list(pd.read_csv(run / "history.csv").epoch) == [1, 2]
    assert not (run / "train.lock").exists() and not list(run.rglob("*.tmp"))


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    """A killed run (or a SLURM requeue on the same host) leaves train.lock naming a dead pid: the next
    start takes it over and resumes."""
    import platform

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.lock").write_text(json.dumps({"host": platform.node(), "pid": dead.pid,
                                                "started_at": "2020-01-01T00:00:00", "started": 0}))
    proc = robust("train", *QUICK, "epochs=1", "max_batches_per_epoch=1", f"run_dir={run}")
    assert proc.returncode == 0, proc.stderr
    assert record_of(run)["status"] == "done" and not (run / "train.lock").exists()


def test_leftover_temp_files_are_removed_and_sigterm_is_recorded(tmp_path, epoch_hooks):
    args = [*QUICK, "epochs=4", "max_batches_per_epoch=2", f"out_dir={tmp_path}"]
    proc = subprocess.Popen([sys.executable, "-m", "robust_cli.cli", "train", *args], cwd=REPO,
                            env=epoch_hooks(min_epoch_seconds=4), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob("train/*/*/*/*/checkpoints/last.pt")):
        time.sleep(0.05)
    time.sleep(0.5)  # inside epoch 1's padding
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "robust: terminated" in err and "Traceback" not in err
    run = only_run_dir(tmp_path)
    record = record_of(run)
    assert record["status"] == "interrupted" and "SIGTERM after epoch 1" in record["reason"], record
    assert not (run / "train.lock").exists()

    # what killed writes leave: the run's own temp files go, anything else stays
    torn = [run / "checkpoints" / ".last.pt.k3j_2x.tmp", run / ".run.json.abcd.tmp", run / ".history.csv.q.tmp"]
    foreign = [run / "eval" / ".summary.csv.zz.tmp", run / "notes.tmp"]
    for path in torn + foreign:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    resumed = robust("train", *args)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    assert not any(p.exists() for p in torn) and all(p.exists() for p in foreign)
    assert list(pd.read_csv(run / "history.csv").epoch) == [1, 2, 3, 4]


def test_a_corrupt_checkpoint_needs_force_and_force_starts_afresh(tmp_path, epoch_hooks):
    args = [*QUICK, "epochs=2", "max_batches_per_epoch=2", f"out_dir={tmp_path}"]
    assert robust("train", *args, env=epoch_hooks(crash_after=1)).returncode != 0
    run = only_run_dir(tmp_path)
    (run / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    line = one_error_line(robust("train", *args))
    assert "cannot read checkpoint" in line and "force=true" in line, line
    forced = robust("train", *args, "force=true")
    assert forced.returncode == 0, forced.stderr
    assert record_of(run)["status"] == "done"
    assert list(pd.read_csv(run / "history.csv").epoch) == [1, 2]


def test_a_force_retrain_invalidates_the_old_results_at_its_start(tmp_path, monkeypatch, hydra_compose):
    """A force retrain that dies in its first epoch leaves no final metrics, history.csv or model.pt of the
    old run behind (jobs.csv and robust eval would report them as this run's)."""
    from robust_cli.rundir import RunDir
    from robust_cli.sweep import final_metrics
    from robust_cli.training import loop

    cfg = hydra_compose("train", overrides=[*QUICK, "epochs=1", "max_batches_per_epoch=2"])
    run = tmp_path / "run"
    loop.fit(cfg, run, [])
    assert record_of(run)["final"] and final_metrics(str(run)) and (run / "model.pt").exists()

    def killed(*args, **kwargs):
        raise SystemExit(137)  # the end of epoch 1's training steps, before anything of it is written

    monkeypatch.setattr(loop, "clean_error", killed)
    with pytest.raises(SystemExit):
        loop.fit(cfg, run, [], fresh=True)
    record = record_of(run)
    assert "final" not in record and record["status"] == "interrupted"
    assert final_metrics(str(run)) == {} and RunDir(run).read_history() is None
    assert not (run / "model.pt").exists() and not (run / "checkpoints" / "last.pt").exists()
