"""Sweeps on a real (single-node, localhost) SLURM cluster through hydra-submitit-launcher.

The cluster is started by scripts/slurm_local.sh (Debian's slurm-wlm + munge, installed by
.ci/slurm_setup.sh); the tests skip where `slurmctld` is not installed or we are not root.

- a 2-job `robust train -m ... hydra/launcher=slurm` sweep lands in the deterministic run directories and
  in jobs.csv with the SLURM job ids;
- requeue: a job whose time limit (1 minute, SIGUSR2 50 s before it) is shorter than its training is
  checkpointed and requeued by submitit, and the run resumes from checkpoints/last.pt until it finishes:
  history.csv holds epochs 1..E exactly once each, and the job was started more than once.
  SLURM gives a requeued job a begin time ~2 minutes in the future; the test releases it at once
  (`scontrol update StartTime=now`) so the test is fast: only the scheduler's wait is skipped, the
  signal, checkpoint, requeue and resume are SLURM's and submitit's own;
- the README's example runs as written (the launcher's defaults ask for no GPU), and a request sbatch
  refuses (a GPU on this CPU-only cluster) ends in one line naming hydra.launcher.gpus_per_node, exit 2.

The mapping of sbatch's messages to that line is also tested without a cluster.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

cluster = [pytest.mark.slurm, pytest.mark.slow]  # a real cluster: minutes, so in `make test-slow`

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "slurm_local.sh"
SLURM_ARGS = [
    "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=null", "hydra.launcher.partition=debug",
    "hydra.sweep.subdir=${hydra.job.num}",  # conf/train.yaml installs the SweepSummary callback
]


def _marked(test):
    for mark in cluster:
        test = mark(test)
    return test


@pytest.mark.parametrize("stderr, option", [
    ("sbatch: error: Batch job submission failed: Invalid generic resource (gres) specification",
     "hydra.launcher.gpus_per_node=null"),
    ("sbatch: error: invalid partition specified: gpu\nsbatch: error: Batch job submission failed: "
     "Invalid partition name specified", "hydra.launcher.partition="),
    ("sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified",
     "hydra.launcher.account="),
    ("sbatch: error: Memory specification can not be satisfied\nsbatch: error: Batch job submission failed: "
     "Requested node configuration is not available", "hydra.launcher.cpus_per_task"),
    ("sbatch: error: Batch job submission failed: Job violates accounting/QOS policy (job submit limit, "
     "user's size and/or time limits)", "hydra.launcher.qos="),
    ("sbatch: error: something new", "conf/hydra/launcher/slurm.yaml"),
])
def test_sbatch_refusals_become_one_line_naming_the_option(stderr, option):
    from robust_cli.slurm import sbatch_message

    line = sbatch_message(stderr)
    assert "\n" not in line and line.startswith("sbatch refused the jobs: ")
    assert option in line
    assert "Batch job submission failed" not in line


def test_launcher_config_asks_for_no_gpu_by_default(hydra_compose):
    cfg = hydra_compose("train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher.gpus_per_node is None and launcher.cpus_per_task is None and launcher.mem_gb is None


def test_a_refused_submission_exits_2_with_one_line(capsys):
    from submitit.core.utils import FailedJobError

    from robust_cli.slurm import launch_reporting_refusals

    said = "sbatch: error: Batch job submission failed: Invalid generic resource (gres) specification"

    def refused_launch():
        sys.stderr.write(said)  # submitit echoes sbatch's stderr before raising
        sys.stderr.write("\n")
        try:
            raise subprocess.CalledProcessError(1, ["sbatch", "job.sh"], stderr=said)
        except subprocess.CalledProcessError as err:
            raise FailedJobError(said) from err

    with pytest.raises(SystemExit) as code:
        launch_reporting_refusals(refused_launch)
    assert code.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "hydra.launcher.gpus_per_node=null" in lines[0], lines
    assert launch_reporting_refusals(lambda x: x + 1, 1) == 2  # a submission that goes through is untouched


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running local SLURM; yields the environment (SLURM_CONF) for its clients."""
    if shutil.which("slurmctld") is None:
        pytest.skip("slurmctld not found: install slurm-wlm and munge (.ci/slurm_setup.sh)")
    if os.geteuid() != 0:
        pytest.skip("the local SLURM runs as root (SlurmUser=root)")
    state = tmp_path_factory.mktemp("slurm")
    # free ports, so that a cluster someone already runs here (default ports) does not collide
    from robust_cli.training.distributed import free_port

    env = dict(os.environ, SLURM_LOCAL_DIR=str(state), SLURM_LOCAL_CTLD_PORT=str(free_port()),
               SLURM_LOCAL_D_PORT=str(free_port()))
    started = subprocess.run(["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=90)
    if started.returncode != 0:
        pytest.fail(f"local SLURM did not start:\n{started.stderr}")
    env["SLURM_CONF"] = str(state / "slurm.conf")
    try:
        yield env
    finally:
        subprocess.run(["scancel", "--user=root"], env=env, capture_output=True, timeout=30)
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, timeout=60)


def robust_bin() -> str:
    exe = shutil.which("robust", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("the `robust` entry point is not installed")
    return exe


@_marked
def test_slurm_sweep_lands_in_deterministic_run_dirs(slurm, tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [robust_bin(), "train", "-m", "epochs=1,2", "model.widths=[8]", f"out_dir={tmp_path}", "device=cpu",
         f"hydra.sweep.dir={sweep}", "hydra.launcher.timeout_min=5", *SLURM_ARGS],
        env=slurm, capture_output=True, text=True, timeout=150,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = pd.read_csv(sweep / "jobs.csv", dtype={"slurm_job_id": str})
    assert list(jobs["status"]) == ["completed", "completed"]
    for epochs, row in zip((1, 2), jobs.itertuples()):
        expected = tmp_path / "train" / "digits" / "mlp" / "none" / f"epochs-{epochs}+model.widths-8"
        assert Path(row.run_dir) == expected
        hist = pd.read_csv(expected / "history.csv")
        assert list(hist["epoch"]) == list(range(1, epochs + 1))
        assert row.test_error == pytest.approx(hist["test_error"].iloc[-1])
        assert (expected / "model.pt").exists()
        assert isinstance(row.slurm_job_id, str) and row.slurm_job_id  # it ran as a SLURM job
    # submitit wrote its sbatch scripts and logs under the sweep directory
    assert list((sweep / ".submitit").glob("*/*_submission.sh"))


def _release_requeued(env: dict, stop: threading.Event, actions: list[str]) -> None:
    """Release requeued jobs held back by SLURM's post-requeue begin time (and, should it happen, a job held
    after a failed launch or a node drained by a slow kill); every action is recorded for the failure text."""
    while not stop.is_set():
        try:
            out = subprocess.run(["squeue", "-h", "-o", "%i %T %r"], env=env, capture_output=True, text=True,
                                 timeout=30).stdout
            for line in out.splitlines():
                parts = line.split(maxsplit=2)
                if len(parts) < 3 or parts[1] != "PENDING":
                    continue
                if "BeginTime" in parts[2]:
                    command = ["scontrol", "update", f"JobId={parts[0]}", "StartTime=now"]
                elif "Held" in parts[2] or "held" in parts[2]:
                    command = ["scontrol", "release", parts[0]]
                else:
                    continue
                subprocess.run(command, env=env, capture_output=True, timeout=30)
                actions.append(f"{time.strftime('%H:%M:%S')} {' '.join(command[1:])} ({parts[2]})")
            nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], env=env, capture_output=True, text=True,
                                   timeout=30).stdout
            for line in nodes.splitlines():
                node, _, state = line.partition(" ")
                if "drain" in state or state.startswith("drng"):
                    subprocess.run(["scontrol", "update", f"NodeName={node}", "State=RESUME"], env=env,
                                   capture_output=True, timeout=30)
                    actions.append(f"{time.strftime('%H:%M:%S')} resumed node {node} ({state})")
        except (OSError, subprocess.SubprocessError) as err:  # a busy slurmctld: try again next second
            actions.append(f"{time.strftime('%H:%M:%S')} releaser: {err}")
        stop.wait(1.0)


def _cluster_state(env: dict, sweep: Path, actions: list[str]) -> str:
    """What the cluster and the job did, for a failure message: a hang here has no other trace in CI."""
    parts = []
    for command in (["squeue", "-a"], ["sinfo", "-R"], ["scontrol", "show", "job"]):
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
            parts.append(f"$ {' '.join(command)}\n{done.stdout}{done.stderr}")
        except (OSError, subprocess.SubprocessError) as err:
            parts.append(f"$ {' '.join(command)}: {err}")
    logs = Path(env["SLURM_LOCAL_DIR"]) / "log"
    for path in [logs / "slurmctld.log", logs / "slurmd.log", *sorted((sweep / ".submitit").glob("*/*_log.*"))]:
        if path.exists():
            tail = path.read_text(errors="replace").splitlines()[-40:]
            parts.append(f"--- {path} (last 40 lines)\n" + "\n".join(tail))
    parts.append("releaser actions:\n" + "\n".join(actions[-40:]))
    return "\n".join(parts)


@_marked
def test_readme_example_runs_as_written_and_a_refusal_is_one_line(slurm, tmp_path):
    # the README's `robust train -m defense=none,at_l2,tulip hydra/launcher=slurm`, only made small and
    # put in tmp_path: the launcher's defaults (no GPU, the partition's CPUs and memory) fit any cluster
    sweep = tmp_path / "sweep"
    tiny = ["epochs=1", "model.widths=[8]", f"out_dir={tmp_path}", "device=cpu", f"hydra.sweep.dir={sweep}",
            "hydra.sweep.subdir=${hydra.job.num}"]
    proc = subprocess.run([robust_bin(), "train", "-m", "defense=none,at_l2,tulip", "hydra/launcher=slurm", *tiny],
                          env=slurm, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = pd.read_csv(sweep / "jobs.csv")
    assert list(jobs["status"]) == ["completed"] * 3
    # a GPU on this CPU-only cluster: sbatch refuses; one line naming the option, exit 2, nothing submitted
    refused = subprocess.run([robust_bin(), "train", "-m", "defense=none", "hydra/launcher=slurm",
                              "hydra.launcher.gpus_per_node=1", *tiny[:-2], f"hydra.sweep.dir={tmp_path / 'gpu'}"],
                             env=slurm, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2, refused.stderr[-3000:]
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("robust: error: sbatch refused the jobs"), refused.stderr
    assert "hydra.launcher.gpus_per_node" in lines[0] and "Traceback" not in refused.stderr


@_marked
def test_requeue_after_time_limit_resumes_with_continuous_history(slurm, tmp_path, epoch_hooks):
    # Training far longer than one attempt (2-minute limit, SIGUSR2 50 s before it; SLURM may send it up to
    # 60 s early, the resolution of its event handling (sbatch --signal), so each attempt gets 10-70 s: with
    # a 1-minute limit the signal came 1 s after a start, before Python had its handler, and killed the job,
    # which was then never requeued). Every epoch is padded to 3 s by the loop's test hook (however fast the
    # machine), so 40 epochs need at least 2 attempts.
    epochs = int(os.environ.get("ROBUST_REQUEUE_TEST_EPOCHS", "40"))
    env = epoch_hooks(min_epoch_seconds=3, base=slurm)
    sweep = tmp_path / "sweep"
    stop = threading.Event()
    actions: list[str] = []
    releaser = threading.Thread(target=_release_requeued, args=(slurm, stop, actions), daemon=True)
    releaser.start()
    try:
        proc = subprocess.run(
            [robust_bin(), "train", "-m", f"epochs={epochs}", "model.widths=[256,256]", f"out_dir={tmp_path}",
             "device=cpu", f"hydra.sweep.dir={sweep}", "hydra.launcher.timeout_min=2",
             "hydra.launcher.signal_delay_s=50", "hydra.launcher.max_num_timeout=20", *SLURM_ARGS],
            env=env, capture_output=True, text=True, timeout=540,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the requeued sweep did not finish in 540 s:\n" + _cluster_state(slurm, sweep, actions))
    finally:
        stop.set()
        releaser.join()
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = pd.read_csv(sweep / "jobs.csv")
    (row,) = list(jobs.itertuples())
    assert row.status == "completed"
    logs = "".join(p.read_text() for p in (sweep / ".submitit").glob("*/*_log.out"))
    requeues = logs.count("Requeued job")
    assert requeues >= 1, f"training finished within one attempt; raise ROBUST_REQUEUE_TEST_EPOCHS ({epochs})"
    assert row.attempts == requeues + 1  # the sweep summary saw every start of the job
    hist = pd.read_csv(Path(row.run_dir) / "history.csv")
    assert list(hist["epoch"]) == list(range(1, epochs + 1)), "an epoch is repeated or missing"
    assert row.test_error == pytest.approx(hist["test_error"].iloc[-1])
    assert (Path(row.run_dir) / "model.pt").exists()
