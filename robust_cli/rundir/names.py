"""Deterministic run-directory names: the same command always finds the same directory.

A run directory is named from the command's overrides, never from the clock, so the same command (or a
SLURM job requeued with the same overrides) finds the same directory and resumes there:

    <out_dir>/train/<dataset>/<model>/<defense>/<sorted other overrides, or "default">
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

# overrides that change where or how fast a run happens, not what it computes: left out of the name
RUNTIME_KEYS = {
    "force", "device", "data.root", "data.download", "data.num_workers", "out_dir", "run_dir",
    "eval_batch_size", "trainer.devices", "trainer.backend", "logger", "mlflow_uri",
}
GROUP_KEYS = {"dataset", "model", "defense"}  # already directory levels
MAX_NAME = 180


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _item(override: str) -> str:
    """``key=value`` -> ``key-value`` with the value reduced to ``[A-Za-z0-9._-]`` (lists: ``32_16``)."""
    key, _, value = override.partition("=")
    value = re.sub(r"[^A-Za-z0-9._-]+", "_", value.strip("[]()'\" ")).strip("_")
    return f"{key.lstrip('+~')}-{value}"


def run_name(overrides: list[str]) -> str:
    """The last path component for a run: its result-changing overrides, sorted, ``+``-joined.

    ``["defense=tulip", "epochs=5", "device=cpu", "optimizer.lr=0.1"]`` -> ``"epochs-5+optimizer.lr-0.1"``.
    The name holds no ``=``, ``,`` or brackets, so ``robust eval run=<dir>`` takes it unquoted. Names longer
    than 180 characters keep a prefix and gain a hash of the whole.
    """
    kept = sorted(o for o in overrides if _key(o) not in RUNTIME_KEYS | GROUP_KEYS and not _key(o).startswith("hydra"))
    return _bounded("+".join(_item(o) for o in kept) or "default")


def _bounded(name: str) -> str:
    """``name``, or where longer than ``MAX_NAME`` a prefix of it and a hash of the whole."""
    if len(name) > MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = f"{name[:MAX_NAME - 11]}-{digest}"
    return name


def train_run_dir(cfg, overrides: list[str]) -> Path:
    """``<out_dir>/train/<dataset>/<model>/<defense>/<run_name>``, or ``cfg.run_dir`` when given.

    ``RunDir.of_train(cfg, overrides)`` is the same directory with its files."""
    if cfg.get("run_dir"):
        return Path(cfg.run_dir)
    return Path(cfg.out_dir) / "train" / cfg.dataset.name / cfg.model.name / cfg.defense.name / run_name(overrides)


def external_eval_dir(out_dir: str, kind: str, label: str, digest: str) -> Path:
    """``<out_dir>/eval/external/<kind>/<label>-<digest>``: where ``robust eval model=<kind>`` writes.

    ``label`` names the model for a reader (the file's stem, the architecture or factory), reduced to
    ``[A-Za-z0-9._-]``; ``digest`` (a hash of the spec, the file's contents included) tells apart two models
    of the same label, so the same spec always finds the same directory and another spec never shares it."""
    label = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or kind
    return Path(out_dir) / "eval" / "external" / kind / _bounded(f"{label[:80]}-{digest}")


# ---------------------------------------------------------------- sweep directories
# ``hydra.sweep.dir`` of ``robust train -m`` / ``robust eval -m`` (conf/train.yaml, conf/eval.yaml):
#     <out_dir>/sweeps/<command>/<sweep name>     or, with hydra.job.name=<name>,  <out_dir>/sweeps/<name>
# so two different sweeps never share a jobs.csv, and the same sweep command finds its own again.

SWEEP_RESOLVER = "robust_sweep"


def sweep_name(overrides: list[str]) -> str:
    """The last path component of a sweep directory: its result-changing overrides, sorted, ``+``-joined,
    the swept values ``_``-joined (``["defense=none,tulip", "epochs=5", "device=cpu"]`` ->
    ``"defense-none_tulip+epochs-5"``). Unlike ``run_name`` the group keys stay: a sweep over defenses is
    not one over models. Names longer than 180 characters keep a prefix and gain a hash of the whole."""
    kept = sorted(o for o in overrides if _key(o) not in RUNTIME_KEYS and not _key(o).startswith("hydra"))
    return _bounded("+".join(_item(o) for o in kept) or "default")


def sweep_subdir(command: str, job_name: str, overrides: list[str]) -> str:
    """``<command>/<sweep_name(overrides)>``, or ``job_name`` where ``hydra.job.name`` names the sweep
    (anything but the command's own name)."""
    if str(job_name) != str(command):
        return str(job_name)
    return f"{command}/{sweep_name([str(o) for o in overrides])}"


def register_sweep_resolver() -> None:
    """``${robust_sweep:<command>,${hydra.job.name},${hydra.overrides.task}}`` -> ``sweep_subdir(...)``.

    Cached: Hydra re-resolves ``hydra.sweep.dir`` in every job, where ``hydra.overrides.task`` holds the
    job's own overrides; the cache, which Hydra copies from the sweep's config into each job's, keeps the
    sweep's directory there."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver(SWEEP_RESOLVER):
        OmegaConf.register_new_resolver(SWEEP_RESOLVER, lambda command, job_name, overrides: sweep_subdir(
            command, job_name, list(overrides)), use_cache=True)


register_sweep_resolver()
