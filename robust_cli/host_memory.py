"""How the process uses glibc's allocator for the CPU tensors of a step: kept for reuse during a batch
(``reuse_freed_host_memory``, once per job), handed back to the operating system once per batch
(``release_freed_host_memory``). Both are no-ops where the C library is not glibc (macOS, Windows, musl).

Why: PyTorch allocates every CPU tensor with ``posix_memalign``. glibc serves a block at or above its mmap
threshold (128 KB at start, raised on the fly up to the largest block freed so far) by a fresh ``mmap``, and
returns the free top of its heap to the system once it exceeds its trim threshold (twice the mmap threshold).
An attack step on MNIST-sized batches allocates and frees blocks of ~0.8-5 MB (a ``[256, 1, 28, 28]``
float32 tensor is 0.8 MB), so both keep happening, and every new tensor is faulted in page by page again.
Measured with fixed thresholds against glibc's moving ones (BENCHMARKS.md, issue 16, "glibc's allocator"; one
thread): ``scripts/bench_floor.py`` on the MNIST LeNet-5, 12.1 M -> 0.23 M page faults and 29 s -> 1 s of
system time, PGD-linf 1.24x -> 1.07x its forward + backward floor; a LeNet-5 training epoch on MNIST-sized
batches 1.19x as fast. (``robust eval``'s own pipeline was not slowed by it: its history had already pushed
glibc's thresholds high enough.)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

#: glibc's ``mallopt`` parameter numbers (``malloc.h``)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: blocks up to this size come from the heap: glibc's largest mmap threshold on 64-bit systems (32 MB)
MMAP_THRESHOLD = 32 << 20
#: the heap's free top is returned to the system only beyond this (and by ``release_freed_host_memory``)
TRIM_THRESHOLD = 1 << 30
#: environment variables through which a user sets glibc's allocator himself: then it is left alone
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
#: ``ROBUST_HOST_ALLOCATOR=glibc`` keeps glibc's own moving thresholds (freed memory returned sooner, more page
#: faults); unset or ``robust``: ``reuse_freed_host_memory`` sets its fixed ones
OPT_OUT = "ROBUST_HOST_ALLOCATOR"

_LIBC: Any = None
_REUSING = False


def _glibc() -> Any:
    """glibc as a ``ctypes`` library, or ``False`` where the C library is another (or not found)."""
    global _LIBC
    if _LIBC is None:
        import ctypes
        import ctypes.util

        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        except OSError:
            libc = None
        glibc = libc is not None and all(hasattr(libc, f) for f in ("gnu_get_libc_version", "mallopt", "malloc_trim"))
        _LIBC = libc if glibc else False
    return _LIBC


def user_set_allocator(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment already configures glibc's allocator (``MALLOC_*_`` or ``glibc.malloc.*`` in
    ``GLIBC_TUNABLES``) or asks for glibc's defaults (``ROBUST_HOST_ALLOCATOR=glibc``): then
    ``reuse_freed_host_memory`` leaves it as it is."""
    env = os.environ if environ is None else environ
    return (any(k in env for k in _USER_SETTINGS) or "glibc.malloc." in env.get("GLIBC_TUNABLES", "")
            or env.get(OPT_OUT, "robust") == "glibc")


def reuse_freed_host_memory() -> bool:
    """Keep the host memory a step frees in the process for the next step to reuse: fixed thresholds (blocks
    up to ``MMAP_THRESHOLD`` from the heap, no trim below ``TRIM_THRESHOLD``) instead of glibc's moving ones.
    Setting one of them turns glibc's on-the-fly adjustment off, which is why both are set (the trim
    threshold alone left every block above 128 KB a fresh mmap: 3-6x the page faults of glibc's defaults,
    ``tests/test_host_memory.py``). Idempotent; returns
    whether the thresholds are (now) ours. Called once per job (``apps.user_errors``); the memory comes
    back to the system at each ``release_freed_host_memory``, so the peak stays flat in the number of images.
    """
    global _REUSING
    if _REUSING:
        return True
    libc = _glibc()
    if not libc or user_set_allocator():
        return False
    _REUSING = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD,
                                                                                            TRIM_THRESHOLD))
    return _REUSING


def release_freed_host_memory() -> None:
    """Hand the host memory freed since the last call back to the operating system (glibc's
    ``malloc_trim(0)``; a no-op elsewhere).

    Per batch, an evaluation allocates and frees tens of MB of activations and gradients on the CPU, which
    the heap keeps (``reuse_freed_host_memory``; glibc's own moving thresholds do the same for the blocks
    below its largest freed one): the resident size crept up by ~7 KB per image evaluated (LeNet-5 on
    MNIST, batch 500: 1k vs 10k images +70-90 MB, BENCHMARKS.md "Eval scale"). One trim per batch keeps the
    peak flat in the number of images for about a millisecond a batch."""
    libc = _glibc()
    if libc:
        libc.malloc_trim(0)
