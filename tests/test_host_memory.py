"""glibc's allocator as `robust` sets it (robust_cli.host_memory): a step's freed CPU tensors are reused, not
faulted in again, and a user's own allocator settings are left alone.

The allocator's thresholds are process-wide, so every check that sets them runs in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from robust_cli import host_memory

needs_glibc = pytest.mark.skipif(not host_memory._glibc(), reason="the C library is not glibc")

# an attack's steps on an MNIST-sized batch: LeNet-5 on 256 images, PGD-linf (tensors of 0.2-5 MB a step)
_STEPS = textwrap.dedent("""
    import json, resource, sys
    import torch
    from robust_cli import host_memory
    from robust_cli.attacks.pgd import pgd
    from robust_cli.data.info import DatasetInfo
    from robust_cli.models import build_model

    mode = sys.argv[1]
    libc = host_memory._glibc()
    if mode == "robust":
        ours = host_memory.reuse_freed_host_memory()
    elif mode == "trim_only":  # half of it: glibc then stops moving its mmap threshold (128 KB)
        ours = bool(libc.mallopt(host_memory.M_TRIM_THRESHOLD, host_memory.TRIM_THRESHOLD))
    else:
        ours = False
    torch.set_num_threads(1)
    torch.manual_seed(0)
    info = DatasetInfo("mnist", (1, 28, 28), 10, (0.1307,), (0.3081,))
    model = build_model({"_target_": "robust_cli.models.lenet5.LeNet5", "name": "lenet5"}, info).eval()
    x, y = torch.rand(256, 1, 28, 28), torch.randint(0, 10, (256,))
    pgd(model, x, y, norm="linf", eps=0.3, steps=5)  # warm-up: the heap grows to the step's peak once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    pgd(model, x, y, norm="linf", eps=0.3, steps=5)
    print(json.dumps({"ours": ours, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
""")


def _run(mode: str, **env: str) -> dict:
    full_env = {k: v for k, v in os.environ.items()
                if k not in (*host_memory._USER_SETTINGS, "GLIBC_TUNABLES", host_memory.OPT_OUT)}
    out = subprocess.run([sys.executable, "-c", _STEPS, mode], env={**full_env, **env}, capture_output=True,
                         text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_glibc
def test_freed_tensors_are_reused_not_faulted_in_again():
    """Five PGD steps write ~50 MB (~12000 pages) of tensors: with robust's thresholds next to none is faulted
    in again (0 alone; a few hundred beside the other test workers: Python's own arenas). With the trim
    threshold alone (a half-done setting: glibc then stops moving its mmap threshold) every tensor above 128 KB
    is a fresh mapping: 65-71 thousand faults (glibc's defaults: 12-21 thousand, not asserted)."""
    ours, half = _run("robust"), _run("trim_only")
    assert ours["ours"] is True
    assert ours["faults"] < 2500, ours
    assert half["faults"] > max(20000, 10 * ours["faults"]), (ours, half)


@needs_glibc
def test_a_users_own_allocator_settings_are_left_alone():
    assert _run("robust", MALLOC_TRIM_THRESHOLD_="131072")["ours"] is False
    assert _run("robust", GLIBC_TUNABLES="glibc.malloc.mmap_threshold=65536")["ours"] is False
    assert _run("robust", ROBUST_HOST_ALLOCATOR="glibc")["ours"] is False
    assert _run("robust", GLIBC_TUNABLES="glibc.cpu.hwcaps=-AVX512F")["ours"] is True  # not the allocator's


def test_user_set_allocator_reads_the_environment():
    assert not host_memory.user_set_allocator({})
    assert not host_memory.user_set_allocator({"GLIBC_TUNABLES": "glibc.cpu.x86_shstk=off"})
    assert host_memory.user_set_allocator({"MALLOC_MMAP_THRESHOLD_": "1048576"})
    assert host_memory.user_set_allocator({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"})
    assert host_memory.user_set_allocator({"ROBUST_HOST_ALLOCATOR": "glibc"})
    assert not host_memory.user_set_allocator({"ROBUST_HOST_ALLOCATOR": "robust"})


def test_every_job_sets_the_allocator(monkeypatch):
    """`apps.user_errors` (the wrapper of every command's job) calls `reuse_freed_host_memory` first."""
    from robust_cli import apps

    calls = []
    monkeypatch.setattr(host_memory, "reuse_freed_host_memory", lambda: calls.append(1) or True)
    assert apps.user_errors(lambda: "done")() == "done"
    assert calls == [1]
