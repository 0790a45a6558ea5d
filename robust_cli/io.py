"""Atomic file writes: every file a crash could tear is written to a temporary file and renamed.

A rename within one directory is atomic on POSIX, so a reader sees either the old file or the new one,
never half of either, and an interrupted run never destroys what was already on disk. A killed write leaves
at most its temporary file, ``.<name>.<random>.tmp`` (``remove_temp_files`` clears them). Also here: ``flock``
sections (``file_lock``) and the owner lock of a directory (``OwnerLock``: one writer, stale locks taken over).
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


# the process umask, read once (os.umask can only be read by setting it): mkstemp creates files 0600, and the
# final files get the mode a plain open() would have given them
_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """``write(tmp)`` to a temporary file beside ``path``, flush it to disk, give it the umask's mode, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the data is on disk before the rename makes it the file
        finally:
            os.close(fd)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""

    def _write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return _atomic(path, _write)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (non-finite floats are written as Infinity/NaN)."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def save_figure(path: str | os.PathLike, figure, **kwargs: Any) -> Path:
    """``figure.savefig`` atomically (the format from ``path``'s suffix)."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    return _atomic(path, lambda tmp: figure.savefig(tmp, format=fmt, **kwargs))


def write_csv(path: str | os.PathLike, frame) -> Path:
    """Write a pandas DataFrame as CSV (no index) atomically."""
    return _atomic(path, lambda tmp: frame.to_csv(tmp, index=False))


def write_npz(path: str | os.PathLike, **arrays: Any) -> Path:
    """``numpy.savez_compressed`` atomically (numeric arrays only: read back with ``allow_pickle=False``)."""
    import numpy as np

    def _write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    return _atomic(path, _write)


def torch_save(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save`` atomically. ``obj`` must hold tensors and plain Python only (weights_only loading)."""
    import torch

    return _atomic(path, lambda tmp: torch.save(obj, tmp))


def torch_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True``: a checkpoint from elsewhere cannot run code."""
    import warnings

    import torch

    with warnings.catch_warnings():  # a torn or foreign file: the caller's one line says so, not torch's warning
        warnings.simplefilter("ignore")
        return torch.load(path, map_location=map_location, weights_only=True)


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file written by ``write_json``; ``ValueError`` (``json.JSONDecodeError``) where it is not JSON."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block: concurrent jobs of a
    sweep (processes, possibly on other nodes of a shared file system) update a merged file one at a time."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---------------------------------------------------------------- leftovers of interrupted writes


def remove_temp_files(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files ``_atomic`` left beside ``path`` when a write was killed mid-way
    (``.<name>.<random>.tmp``); returns what was removed. Call it only where no other process writes
    ``path`` (under the run directory's owner lock)."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed.append(tmp)
    return removed


# ---------------------------------------------------------------- one writer per directory

#: The holder of an owner lock refreshes the lock file's modification time this often (a daemon thread) ...
HEARTBEAT_SECONDS = 30.0
#: ... and a lock held from another host whose file was not refreshed for this long is stale.
STALE_AFTER_SECONDS = 600.0


class LockHeld(Exception):
    """``owner_lock`` found a live holder; ``holder`` is its record (host, pid, started_at, slurm_job_id)."""

    def __init__(self, path: Path, holder: dict[str, Any]):
        self.path, self.holder = path, holder
        super().__init__(f"{path} is held by pid {holder.get('pid')} on {holder.get('host')} "
                         f"since {holder.get('started_at')}")


def _holder_record() -> dict[str, Any]:
    import platform
    import time

    return {"host": platform.node(), "pid": os.getpid(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "started": time.time(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "token": os.urandom(8).hex()}


def _process_started(pid: int) -> float | None:
    """The start time (seconds since the epoch) of process ``pid`` from /proc (Linux); None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _pid_alive(pid: int, since: float | None) -> bool:
    """Process ``pid`` of this host exists and is the one that wrote a lock at ``since`` (a pid reused by
    a process started later, as after a container restart, does not count)."""
    if pid == os.getpid():  # an earlier incarnation of this very job left it (pid reused)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        pass
    started = _process_started(pid)
    return started is None or since is None or started <= since + 2.0


def _is_stale(holder: dict[str, Any], age: float) -> bool:
    """The rule (see ``owner_lock``) for a lock written by ``holder`` and last refreshed ``age`` s ago."""
    import platform

    if holder.get("host") == platform.node():
        try:
            return not _pid_alive(int(holder["pid"]), holder.get("started"))
        except (KeyError, TypeError, ValueError):
            return age > STALE_AFTER_SECONDS
    job = os.environ.get("SLURM_JOB_ID")
    if job and holder.get("slurm_job_id") == job:
        return True  # SLURM runs one incarnation of a job at a time: this is its requeue
    return age > STALE_AFTER_SECONDS


class OwnerLock:
    """One writer per directory: ``lock_path`` holds the owner's host, pid and start time (JSON).

    ``acquire()`` creates it, or takes over a stale one, or raises ``LockHeld``. A lock is stale when
    - its holder ran on this host and that process is gone (or its pid now belongs to a later process);
    - its holder ran on another host and either has this process's ``SLURM_JOB_ID`` (a requeued job: SLURM
      runs one incarnation of a job at a time) or has not refreshed the lock for ``STALE_AFTER_SECONDS``
      (the holder refreshes its modification time every ``HEARTBEAT_SECONDS``; a host that died leaves it).
    Takeovers are made under an ``flock`` of ``guard_path`` so that two starts cannot both take one stale lock.
    ``release()`` stops the heartbeat and deletes the lock if it is still this holder's.
    """

    def __init__(self, lock_path: str | os.PathLike, guard_path: str | os.PathLike):
        self.path, self.guard = Path(lock_path), Path(guard_path)
        self.record: dict[str, Any] | None = None
        self._stop = None

    def _read(self) -> tuple[dict[str, Any] | None, float]:
        """(holder record or None where missing/unreadable, age of its last heartbeat in seconds)."""
        try:
            age = self._now() - self.path.stat().st_mtime
        except FileNotFoundError:
            return None, 0.0
        try:
            with open(self.path, encoding="utf-8") as f:
                holder = json.load(f)
            return (holder if isinstance(holder, dict) else {}), age
        except FileNotFoundError:
            return None, 0.0
        except (OSError, ValueError):
            return {}, age  # not ours (ours are written atomically): judged by its age only

    def _now(self) -> float:
        """The file system's clock (the guard's mtime, just touched): heartbeats are compared on one clock
        even where hosts' clocks differ."""
        self.guard.parent.mkdir(parents=True, exist_ok=True)
        self.guard.touch()
        return self.guard.stat().st_mtime

    def acquire(self) -> None:
        mine = _holder_record()
        with file_lock(self.guard):
            # the lock file is written only under the guard, so a temporary file of it seen here is one a
            # writer killed mid-write left (no live process owns it)
            remove_temp_files(self.path)
            holder, age = self._read()
            if holder is not None and not (_is_stale(holder, age) if holder else age > STALE_AFTER_SECONDS):
                raise LockHeld(self.path, holder)
            write_json(self.path, mine)
        self.record = mine
        self._start_heartbeat()

    def _start_heartbeat(self) -> None:
        import threading

        stop = self._stop = threading.Event()

        def beat() -> None:
            while not stop.wait(HEARTBEAT_SECONDS):
                with contextlib.suppress(OSError):
                    os.utime(self.path)

        threading.Thread(target=beat, name=f"heartbeat {self.path}", daemon=True).start()

    def release(self) -> None:
        if self._stop is not None:
            self._stop.set()
        if self.record is None:
            return
        with file_lock(self.guard):
            holder, _ = self._read()
            if holder and holder.get("token") == self.record["token"]:
                self.path.unlink(missing_ok=True)
        self.record = None

    def __enter__(self) -> OwnerLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def unreadable(what: str, err: Exception, hint: str = "robust reads only the files robust train writes"):
    """The one line for a file ``torch.load(weights_only=True)`` refused: torch's own message advises
    ``weights_only=False`` (running the file's code), which robust never does; only its reason is kept."""
    from robust_cli.errors import UserError

    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(err)).split())
    if "weights_only" in text or "Weights only load failed" in text:
        _, found, detail = text.partition("WeightsUnpickler error:")
        # its first sentence ("Unsupported global: GLOBAL x.Y was not an allowed global by default"); the
        # rest is torch's advice to allow-list the class or to load with weights_only=False
        reason = detail.strip().split(". ")[0].rstrip(".") if found else type(err).__name__
        return UserError(f"cannot read {what}: it holds objects other than tensors and plain Python ({reason}); "
                         f"{hint}")
    if _damaged(err, text):
        # torch's own text for these is an errno, a bare key or miniz's internals: say what it means
        return UserError(f"cannot read {what}: not a complete torch file (truncated, or another format: "
                         f"{type(err).__name__} {text[:80]}); {hint}")
    return UserError(f"cannot read {what}: {text}")


def _damaged(err: Exception, text: str) -> bool:
    """Whether ``torch.load`` failed on the file's bytes themselves (cut short, not a zip or pickle at all)."""
    import pickle

    if isinstance(err, (EOFError, KeyError, pickle.UnpicklingError)) or isinstance(err, OSError) and \
            getattr(err, "errno", None) == 22:
        return True
    return isinstance(err, RuntimeError) and ("PytorchStreamReader" in text or "zip archive" in text)
