"""Deterministic run directories and ``run.json``.

A run directory is named from the command's overrides, never from the clock, so the same command (or a
SLURM job requeued with the same overrides) finds the same directory and resumes there:

    <out_dir>/train/<dataset>/<model>/<defense>/<sorted other overrides, or "default">
"""

from __future__ import annotations

import hashlib
import re
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from robust_cli import io

# overrides that change where or how fast a run happens, not what it computes: left out of the name
RUNTIME_KEYS = {
    "force", "device", "data.root", "data.download", "data.num_workers", "out_dir", "run_dir",
    "eval_batch_size", "trainer.devices", "trainer.backend",
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
    name = "+".join(_item(o) for o in kept) or "default"
    if len(name) > MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = f"{name[:MAX_NAME - 11]}-{digest}"
    return name


def train_run_dir(cfg, overrides: list[str]) -> Path:
    """``<out_dir>/train/<dataset>/<model>/<defense>/<run_name>``, or ``cfg.run_dir`` when given."""
    if cfg.get("run_dir"):
        return Path(cfg.run_dir)
    return Path(cfg.out_dir) / "train" / cfg.dataset.name / cfg.model.name / cfg.defense.name / run_name(overrides)


def git_state() -> dict[str, Any]:
    """The git commit and dirty flag of the source tree the package runs from (None outside git)."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=5)
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def versions() -> dict[str, str]:
    """Versions of Python and the packages a result depends on."""
    import hydra
    import torch
    import torchvision

    import robust_cli

    return {
        "python": platform.python_version(), "robust": robust_cli.__version__, "torch": torch.__version__,
        "torchvision": torchvision.__version__, "hydra": hydra.__version__,
    }


class RunRecord:
    """``run.json``: status (running / done / failed), reason, git state, versions, device, wall time.

    Wall time accumulates over every start of the run (a resumed run adds to it).
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "run.json"
        self.data: dict[str, Any] = io.read_json(self.path) if self.path.exists() else {}
        self._t0 = time.time()
        self._base_seconds = float(self.data.get("wall_seconds", 0.0))

    @property
    def status(self) -> str | None:
        return self.data.get("status")

    def start(self, device: str, overrides: list[str]) -> None:
        self.data.update(
            status="running", reason=None, git=git_state(), versions=versions(), device=device,
            host=platform.node(), overrides=list(overrides),
            starts=int(self.data.get("starts", 0)) + 1,
            started_at=self.data.get("started_at") or time.strftime("%Y-%m-%dT%H:%M:%S"),
        )
        self.save()

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        self.save()

    def finish(self, status: str, reason: str | None = None, **fields: Any) -> None:
        self.data.update(status=status, reason=reason, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"), **fields)
        self.save()

    def save(self) -> None:
        self.data["wall_seconds"] = round(self._base_seconds + time.time() - self._t0, 3)
        io.write_json(self.path, self.data)
