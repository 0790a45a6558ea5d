"""``robust train`` end to end: run-directory contents, resume, bad input, presets."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from cli_helpers import REPO, only_run_dir, robust

QUICK = ["experiment=quickstart", "model=mlp", "model.widths=[32]", "device=cpu"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """An out_dir holding one finished one-epoch quickstart run (copy it before touching it)."""
    out = tmp_path_factory.mktemp("finished")
    done = robust("train", *QUICK, "epochs=1", f"out_dir={out}")
    assert done.returncode == 0, done.stderr
    return out


def snapshot(directory):
    """{relative path: sha1} of every file under ``directory``."""
    return {str(p.relative_to(directory)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_two_epochs_lower_the_loss_and_write_every_file(tmp_path):
    proc = robust("train", *QUICK, "epochs=2", f"out_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    run = only_run_dir(tmp_path)
    assert run.relative_to(tmp_path).parts[:4] == ("train", "digits", "mlp", "none")
    for name in ("config.yaml", "run.json", "history.csv", "checkpoints/last.pt", "model.pt", "train.log"):
        assert (run / name).is_file(), name
    history = pd.read_csv(run / "history.csv")
    assert list(history.epoch) == [1, 2]
    assert {"lr", "train_loss", "train_error", "test_error", "seconds"} <= set(history.columns)
    assert history.train_loss.iloc[1] < history.train_loss.iloc[0]
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "done" and record["reason"] is None
    assert {"commit", "dirty"} <= set(record["git"]) and "torch" in record["versions"]
    assert record["device"] == "cpu" and record["wall_seconds"] > 0
    # checkpoints hold tensors and plain Python only
    blob = torch.load(run / "model.pt", weights_only=True)
    assert blob["model_cfg"]["name"] == "mlp" and blob["dataset_cfg"]["name"] == "digits"

    # the same command finds the same directory and does not retrain
    before = snapshot(run)
    again = robust("train", *QUICK, "epochs=2", f"out_dir={tmp_path}")
    assert again.returncode == 0 and "already trained" in again.stderr
    assert snapshot(run) == before
    assert only_run_dir(tmp_path) == run


def test_resume_after_crash_gives_the_uninterrupted_weights(tmp_path, epoch_hooks):
    args = [*QUICK, "epochs=3", "deterministic=true", "model.dropout=0.2"]
    straight = robust("train", *args, f"out_dir={tmp_path / 'a'}")
    assert straight.returncode == 0, straight.stderr
    crashed = robust("train", *args, f"out_dir={tmp_path / 'b'}", env=epoch_hooks(crash_after=1))
    assert crashed.returncode != 0
    run_b = only_run_dir(tmp_path / "b")
    assert not (run_b / "model.pt").exists()
    assert json.loads((run_b / "run.json").read_text())["status"] == "running"  # died without a word
    resumed = robust("train", *args, f"out_dir={tmp_path / 'b'}")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    a = torch.load(only_run_dir(tmp_path / "a") / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(run_b / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert list(pd.read_csv(run_b / "history.csv").epoch) == [1, 2, 3]
    assert json.loads((run_b / "run.json").read_text())["starts"] == 2


def test_kill_at_a_random_moment_resumes_with_continuous_history(tmp_path):
    args = [*QUICK, "epochs=6", f"out_dir={tmp_path}"]
    proc = subprocess.Popen([sys.executable, "-m", "robust_cli.cli", "train", *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob("train/*/*/*/*/checkpoints/last.pt")):
        time.sleep(0.05)
    time.sleep(0.3)  # somewhere inside a later epoch, or inside a write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = robust("train", *args)
    assert resumed.returncode == 0, resumed.stderr
    run = only_run_dir(tmp_path)
    assert list(pd.read_csv(run / "history.csv").epoch) == [1, 2, 3, 4, 5, 6]
    assert not list(run.rglob("*.tmp")), "a torn temporary file was left behind"


@pytest.mark.parametrize("bad, expected", [
    (["dataset=no_such_data"], "dataset/no_such_data"),
    (["model=no_such_model"], "model/no_such_model"),
    (["epochz=3"], "epochz"),
    (["dataset.bacth=3"], "bacth"),
    (["epochs=many"], "epochs"),
    (["dataset=mnist", "data.download=false"], "MNIST"),
    (["device=cuda:7"], "cuda"),
])
def test_bad_input_is_one_line_and_touches_no_run(finished_run, tmp_path, bad, expected):
    shutil.copytree(finished_run, tmp_path, dirs_exist_ok=True)
    before = snapshot(tmp_path)
    env = {"ROBUST_DATA": str(tmp_path / "empty_data")}
    proc = robust("train", *QUICK, "epochs=1", f"out_dir={tmp_path}", *bad, env=env)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("robust: error:"), proc.stderr
    assert expected in lines[0]
    assert "Traceback" not in proc.stderr
    assert snapshot(tmp_path) == before


def test_hydra_run_dir_is_refused_naming_run_dir(tmp_path):
    """``hydra.run.dir`` would be ignored (the run directory is derived from the overrides): refused in one
    line that names ``run_dir=``, before Hydra creates the directory or anything is written."""
    target = tmp_path / "wanted"
    for args in ([f"hydra.run.dir={target}"], ["-m", f"hydra.run.dir={target}"]):
        proc = robust("train", *QUICK, "epochs=1", f"out_dir={tmp_path / 'out'}", *args)
        assert proc.returncode == 2, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("robust: error: hydra.run.dir"), proc.stderr
        assert "run_dir=" in lines[0] and "Traceback" not in proc.stderr
    assert not target.exists() and not (tmp_path / "out").exists()


def test_force_retrains(tmp_path):
    assert robust("train", *QUICK, "epochs=1", f"out_dir={tmp_path}").returncode == 0
    run = only_run_dir(tmp_path)
    first = json.loads((run / "run.json").read_text())["starts"]
    proc = robust("train", *QUICK, "epochs=1", f"out_dir={tmp_path}", "force=true")
    assert proc.returncode == 0, proc.stderr
    assert only_run_dir(tmp_path) == run  # force is not part of the name
    assert json.loads((run / "run.json").read_text())["starts"] == first + 1


def test_requeued_force_run_resumes_instead_of_restarting(tmp_path, epoch_hooks):
    """``force`` is not in the run name: a force=true retrain killed after epoch 1 and started again with the
    same command (a SLURM requeue) continues from its checkpoint and ends with the uninterrupted weights."""
    args = [*QUICK, "epochs=3", "deterministic=true", "model.dropout=0.2", f"out_dir={tmp_path}"]
    assert robust("train", *args).returncode == 0
    run = only_run_dir(tmp_path)
    reference = torch.load(run / "model.pt", weights_only=True)["state_dict"]
    history = pd.read_csv(run / "history.csv").drop(columns="seconds")

    crashed = robust("train", *args, "force=true", env=epoch_hooks(crash_after=1))
    assert crashed.returncode != 0
    assert "resuming" not in crashed.stderr  # a finished run is retrained from scratch
    assert list(pd.read_csv(run / "history.csv").epoch) == [1]
    assert json.loads((run / "run.json").read_text())["status"] == "running"

    requeued = robust("train", *args, "force=true")
    assert requeued.returncode == 0, requeued.stderr
    said = " ".join(requeued.stderr.split())  # the log handler wraps long lines wherever the run path ends
    assert "resuming" in said and "from epoch 1" in said
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "done" and record["starts"] == 3
    pd.testing.assert_frame_equal(pd.read_csv(run / "history.csv").drop(columns="seconds"), history)
    retrained = torch.load(run / "model.pt", weights_only=True)["state_dict"]
    for key in reference:
        assert torch.equal(retrained[key], reference[key]), key


def test_eval_refuses_a_model_of_an_unfinished_run(finished_run, tmp_path):
    """A model.pt left by an earlier training is not the run's model while run.json says it is not done."""
    from robust_cli.errors import UserError
    from robust_cli.training.checkpoint import load_trained_model

    shutil.copytree(finished_run, tmp_path, dirs_exist_ok=True)
    run = only_run_dir(tmp_path)
    load_trained_model(run)  # done: loads
    record = json.loads((run / "run.json").read_text())
    for status in ("running", "failed", "interrupted"):
        (run / "run.json").write_text(json.dumps({**record, "status": status}))
        with pytest.raises(UserError, match=f"not a finished run .*status: {status}") as err:
            load_trained_model(run)
        assert "\n" not in str(err.value)
    (run / "run.json").unlink()
    model, cfg = load_trained_model(run)  # no run.json (a foreign run directory): loads
    assert cfg.model.name == "mlp"


def test_help_lists_commands_and_groups():
    proc = robust("--help")
    assert proc.returncode == 0
    for word in ("train", "eval", "dataset", "model", "defense", "tulip", "resnext34", "quickstart"):
        assert word in proc.stdout
    cfg = robust("train", "experiment=quickstart", "--cfg", "job")
    assert cfg.returncode == 0 and "name: lenet5" in cfg.stdout and "name: digits" in cfg.stdout


@pytest.mark.slow
def test_mnist_lenet5_one_epoch_below_1_5_percent(tmp_path, mnist_root):
    # Adam with a per-step cosine decay over the one epoch
    proc = robust("train", "dataset=mnist", "model=lenet5", "optimizer=adam", "optimizer.lr=0.002",
                  "schedule=cosine", "batch_size=32", "epochs=1", f"data.root={mnist_root}",
                  "data.download=false", f"out_dir={tmp_path}", "device=cpu")
    assert proc.returncode == 0, proc.stderr
    error = pd.read_csv(only_run_dir(tmp_path) / "history.csv").test_error.iloc[-1]
    assert error < 0.015, error


@pytest.mark.slow
def test_non_editable_install_ships_the_configs(tmp_path):
    # from a copy of the tracked files: a build/ folder left in the checkout would lend the wheel stale modules
    src = tmp_path / "src"
    top = {".git", ".venv", "build", "outputs", "data", ".bench-peers", ".bench-advlib"}

    def ignore(folder, names):
        return [n for n in names if (folder == str(REPO) and n in top) or n == "__pycache__"
                or n.endswith(".egg-info")]

    shutil.copytree(REPO, src, ignore=ignore)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    import zipfile

    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("robust_cli/conf/train.yaml", "robust_cli/conf/dataset/digits.yaml",
                   "robust_cli/conf/experiment/quickstart.yaml", "robust_cli/conf/model/lenet5.yaml"):
        assert needed in names, needed
    for module in (REPO / "robust_cli").rglob("*.py"):  # every module of the source tree, none left behind
        assert module.relative_to(REPO).as_posix() in names, module


def test_every_package_of_the_source_tree_is_listed_for_the_wheel():
    """pyproject's explicit package list (conf/ is mapped into the package, so no automatic discovery) names
    every folder of robust_cli/ with an __init__.py: one left out installs editable and fails everywhere else."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "robust_cli").rglob("__init__.py")}
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
