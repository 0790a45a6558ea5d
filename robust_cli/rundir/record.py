"""``run.json``: the state of a training run (status, reason, git state, versions, device, wall time)."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from robust_cli import io


def git_state() -> dict[str, Any]:
    """The git commit and dirty flag of the source tree the package runs from (None outside git)."""
    here = Path(__file__).resolve().parent
    # GIT_OPTIONAL_LOCKS=0: `git status` would otherwise refresh the index under .git/index.lock, and a
    # train start must not make a git command the user runs in the checkout at that moment fail
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5,
                                env=env)
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True,
                               timeout=5, env=env)
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

    Wall time accumulates over every start of the run (a resumed run adds to it). ``path`` is the
    ``run.json`` file itself; ``RunDir.record()`` opens the one of a run directory.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.data: dict[str, Any] = self._read() if self.path.exists() else {}
        self._t0 = time.time()
        self._base_seconds = float(self.data.get("wall_seconds", 0.0))

    def _read(self) -> dict[str, Any]:
        """``run.json``'s content; a file that is not a JSON object is refused in one line (ours are written
        atomically, so it was altered or is not robust's), and nothing is written over it."""
        from robust_cli.errors import UserError

        try:
            data = io.read_json(self.path)
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise UserError(f"{self.path} is not readable JSON ({' '.join(str(err).split())}); restore it, or "
                            "remove the run directory to train it again") from None
        if not isinstance(data, dict):
            raise UserError(f"{self.path} holds a {type(data).__name__}, not the JSON object robust train writes; "
                            "restore it, or remove the run directory to train it again")
        return data

    @property
    def status(self) -> str | None:
        return self.data.get("status")

    def start(self, device: str, overrides: list[str], fresh: bool = False) -> None:
        """Mark the run ``running``; ``fresh`` (a retrain from scratch) also drops the earlier run's
        ``final`` metrics and progress, so no reader takes them for this run's."""
        if fresh:
            for key in ("final", "epochs_done", "finished_at"):
                self.data.pop(key, None)
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
