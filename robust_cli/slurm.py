"""``hydra/launcher=slurm`` (hydra-submitit-launcher): sbatch's refusals as one line.

When sbatch refuses the job array (a GPU request on a CPU-only cluster, an unknown partition, more CPUs or
memory than a node has, ...), submitit raises with sbatch's stderr. The sweep then ends with
``robust: error: <what sbatch said>; <the hydra.launcher option to change>`` and exit status 2, no
traceback, instead of Hydra's report of submitit's exception.
"""

from __future__ import annotations

import functools
import io
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

from robust_cli.apps import exit_user_error

# (fragment of sbatch's message, lower case) -> what to change; the first match wins
_HINTS = (
    # no controller: the client's configuration (slurm.conf, DNS SRV records) or slurmctld itself unreachable
    ("controller", _NO_CONTROLLER := "no SLURM controller answers (check `scontrol ping` and slurm.conf on this "
                                     "machine), or run the sweep without hydra/launcher=slurm "
                                     "(scripts/slurm_local.sh start runs a one-node cluster here)"),
    ("configuration source", _NO_CONTROLLER),
    ("fetch config", _NO_CONTROLLER),
    ("dns srv", _NO_CONTROLLER),
    ("slurm.conf", _NO_CONTROLLER),
    ("generic resource", "this cluster has no such GPUs: set hydra.launcher.gpus_per_node=null (CPU jobs) or a "
                         "count its nodes have, or pick a GPU partition with hydra.launcher.partition=<name>"),
    ("gres", "set hydra.launcher.gpus_per_node=null (CPU jobs) or a count the partition's nodes have"),
    ("qos", "set hydra.launcher.qos=<a QOS of your account> (or null)"),
    ("account", "set hydra.launcher.account=<one of your accounts> (sacctmgr show assoc user=$USER)"),
    ("partition", "set hydra.launcher.partition=<a partition listed by sinfo> (or null for the default)"),
    ("memory", "lower hydra.launcher.mem_gb (or null for the partition's default)"),
    ("time limit", "lower hydra.launcher.timeout_min (minutes) to the partition's limit"),
    ("node configuration", "ask for what one node has: hydra.launcher.cpus_per_task, mem_gb, gpus_per_node "
                           "(null leaves each to the partition's default)"),
)
_GENERIC = "see the hydra.launcher options in conf/hydra/launcher/slurm.yaml (partition, gpus_per_node, ...)"


def sbatch_message(stderr: str) -> str:
    """One line from sbatch's stderr: its last error, then the hydra.launcher option that fixes it."""
    lines = [line.strip() for line in str(stderr).splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower() or "fatal" in line.lower()] or lines or ["no message"]
    said = errors[-1]
    for prefix in ("sbatch: error: ", "sbatch: fatal: ", "sbatch: "):
        said = said[len(prefix):] if said.startswith(prefix) else said
    said = said.removeprefix("Batch job submission failed: ")
    hint = next((h for key, h in _HINTS if key in said.lower()), _GENERIC)
    return f"sbatch refused the jobs: {said}; {hint}"


class _HoldSbatchEcho(io.TextIOBase):
    """``sys.stderr`` during a submission: passes everything on except submitit's echo of sbatch's stderr
    (``sbatch: ...``), which is held back and dropped when the submission fails (the one line replaces it)."""

    def __init__(self, stream):
        self.stream = stream
        self.held: list[str] = []

    def write(self, text: str) -> int:
        if text.startswith("sbatch:") or (self.held and text == "\n"):
            self.held.append(text)
        else:
            self.stream.write(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def release(self) -> None:
        self.stream.write("".join(self.held))
        self.held.clear()


def _is_sbatch_failure(err: BaseException) -> bool:
    cause = err.__cause__
    return isinstance(cause, subprocess.CalledProcessError) and "sbatch" in str(cause.cmd)


def launch_reporting_refusals(launch: Callable[..., Any], *args: Any) -> Any:
    """``launch(*args)`` (a submitit launcher's ``launch``); a refused sbatch ends the process with one line
    (``robust: error: sbatch refused the jobs: ...; <option to change>``) and exit status 2."""
    from submitit.core.utils import FailedJobError

    held = _HoldSbatchEcho(sys.stderr)
    sys.stderr = held
    try:
        return launch(*args)
    except FailedJobError as err:
        if not _is_sbatch_failure(err):
            raise
        held.held.clear()
        sys.stderr = held.stream
        exit_user_error(sbatch_message(str(err)))
    except (FileNotFoundError, RuntimeError) as err:
        # no sbatch on PATH; or submitit's own check that this is a SLURM machine ('Could not detect "srun"')
        if "sbatch" not in str(err) and "srun" not in str(err):
            raise
        sys.stderr = held.stream
        exit_user_error("no SLURM client commands (srun, sbatch) on PATH: hydra/launcher=slurm needs a SLURM "
                        "cluster's login node (scripts/slurm_local.sh start runs a one-node cluster here), or "
                        "run the sweep without hydra/launcher=slurm")
    finally:
        if sys.stderr is held:
            sys.stderr = held.stream
        held.release()


def report_sbatch_refusals() -> None:
    """Route hydra-submitit-launcher's ``SlurmLauncher.launch`` through ``launch_reporting_refusals``
    (idempotent; nothing where the plugin is not installed). Hydra only instantiates launchers of the
    ``hydra_plugins`` package, so the plugin's own class is kept and its ``launch`` wrapped, in the
    submitting process only (a job runs the launcher's ``__call__``)."""
    try:
        from hydra_plugins.hydra_submitit_launcher import submitit_launcher
    except ImportError:
        return
    cls = submitit_launcher.SlurmLauncher
    if getattr(cls.launch, "robust_one_line", False):
        return
    original = cls.launch

    @functools.wraps(original)
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        return launch_reporting_refusals(original, self, job_overrides, initial_job_idx)

    launch.robust_one_line = True
    cls.launch = launch
