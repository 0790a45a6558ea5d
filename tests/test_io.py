"""robust_cli.io: atomic writes leave ordinary, collaborator-readable files."""

from __future__ import annotations

import subprocess
import sys

from cli_helpers import REPO


def test_written_files_follow_the_umask(tmp_path):
    # umask is read once at import, so set it in a fresh interpreter before importing robust_cli.io
    code = (
        "import os, sys, stat; os.umask(0o022)\n"
        "import pandas as pd, torch\n"
        "from robust_cli import io\n"
        "d = sys.argv[1]\n"
        "paths = [io.write_text(d + '/a.txt', 'x'), io.write_json(d + '/run.json', {'a': 1}),\n"
        "         io.write_csv(d + '/h.csv', pd.DataFrame({'a': [1]})),\n"
        "         io.torch_save(d + '/m.pt', {'w': torch.ones(1)})]\n"
        "print(' '.join(oct(stat.S_IMODE(os.stat(p).st_mode)) for p in paths))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0o644"] * 4
    assert not list(tmp_path.glob("*.tmp"))


def _lock_file(path, **holder):
    import json

    path.write_text(json.dumps({"started_at": "2020-01-01T00:00:00", "started": 0.0, **holder}))


def test_owner_lock_refuses_a_live_holder_and_takes_over_stale_ones(tmp_path, monkeypatch):
    """The staleness rule of ``io.OwnerLock``: a live pid on this host or a fresh heartbeat from another
    host holds; a dead pid, an old heartbeat or this process's own SLURM job (a requeue) does not."""
    import os
    import platform

    import pytest

    from robust_cli import io

    lock_path, guard = tmp_path / "train.lock", tmp_path / ".train.lock.guard"
    lock = io.OwnerLock(lock_path, guard)
    parent = os.getppid()  # alive, and started before the lock below was "written"
    _lock_file(lock_path, host=platform.node(), pid=parent, started=1e12)
    with pytest.raises(io.LockHeld, match=f"pid {parent}"):
        lock.acquire()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _lock_file(lock_path, host=platform.node(), pid=dead.pid)
    with lock:
        assert io.read_json(lock_path)["pid"] == os.getpid()
    assert not lock_path.exists()

    _lock_file(lock_path, host="elsewhere", pid=1, slurm_job_id="77")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(io.LockHeld, match="on elsewhere"):
        lock.acquire()
    monkeypatch.setenv("SLURM_JOB_ID", "77")  # the same job, requeued on another node
    lock.acquire()
    lock.release()
    monkeypatch.setenv("SLURM_JOB_ID", "78")
    _lock_file(lock_path, host="elsewhere", pid=1, slurm_job_id="77")
    old = lock_path.stat().st_mtime - io.STALE_AFTER_SECONDS - 60
    os.utime(lock_path, (old, old))  # no heartbeat for longer than the timeout: its host is gone
    lock.acquire()
    assert io.read_json(lock_path)["host"] == platform.node()
    lock.release()


def test_remove_temp_files_takes_only_the_files_own_leftovers(tmp_path):
    from robust_cli import io

    target = tmp_path / "last.pt"
    own = [tmp_path / ".last.pt.x1y2.tmp", tmp_path / ".last.pt.abc.tmp"]
    other = [tmp_path / ".last.ptx.a.tmp", tmp_path / ".model.pt.a.tmp", tmp_path / "last.pt.tmp"]
    for path in own + other:
        path.write_text("partial")
    assert sorted(io.remove_temp_files(target)) == sorted(own)
    assert all(p.exists() for p in other)


def test_owner_lock_clears_the_temporary_file_a_killed_lock_write_left(tmp_path):
    """A process killed while writing ``train.lock`` leaves ``.train.lock.<random>.tmp``; the next owner
    removes it (the lock is written only under the guard, so no live writer owns it)."""
    from robust_cli import io

    lock_path, guard = tmp_path / "train.lock", tmp_path / ".train.lock.guard"
    leftover = tmp_path / ".train.lock.k1ll3d.tmp"
    leftover.write_text('{"host": "half')
    with io.OwnerLock(lock_path, guard):
        assert not leftover.exists()
        assert lock_path.exists()
