"""Data-parallel training over several processes: DistributedDataParallel, one rank per process.

The training loop (``robust_cli.training.loop.fit``) uses this small API and stays the same for 1 or N
processes:

    launch(train_fn, cfg, ...)           # spawns cfg.trainer.devices processes (or just calls train_fn)
      ctx = init(cfg.trainer, device)    # inside train_fn: DistContext(rank, world_size, ...)
      per_rank_batch_size(cfg.batch_size, ctx)   # the global batch split over the ranks (must divide)
      model = wrap(model, ctx)           # DDP when world_size > 1; save models.wrappers.unwrap(model)
      the loop draws one (seed, epoch) permutation on every rank and takes positions rank, rank+W, ...
      of it, as DistributedSampler does (``sampler`` gives the same split for a Dataset/DataLoader)
      all_reduce_sum(sums, ctx)          # global sums of per-rank statistics
      if ctx.is_main: write the run directory; barrier(ctx)
      cleanup(ctx)

Equivalence with single-process training. With world size W and global batch B, every rank takes B/W
examples per step and DDP averages the gradients over ranks, so the step is the gradient of the mean loss
over the same B examples that one process would have used:

    grad = (1/W) * sum_r (W/B) * sum_{i in batch_r} grad l_i = (1/B) * sum_{i in batch} grad l_i.

This holds when (a) the W rank batches together form the single-process batch: the permutation of the
data set depends only on (seed, epoch) (the same on every rank and for W = 1), and rank r takes positions
r, r+W, r+2W, ... of it, so the union of the rank batches at step t is exactly positions [tB, (t+1)B) of
the permutation; (b) B is divisible by W (``per_rank_batch_size`` refuses otherwise) and the data set size
by W (otherwise the loop drops the last n % W positions of the permutation; DistributedSampler would pad
by repeating indices); (c) the loss is a mean of per-example terms with no
cross-example coupling: BatchNorm in train mode normalises over the local B/W examples only (use
`wrap(..., sync_batchnorm=True)` on CUDA), and random per-example operations (dropout, random attack
starts) draw different numbers on each rank. Under those conditions the parameters agree with
single-process training up to floating-point summation order.

Under `torchrun` the process group comes from the environment (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT); `launch` then just calls the function.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from robust_cli.host_memory import reuse_freed_host_memory

log = logging.getLogger(__name__)

_ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the process group.

    ``world_size == 1`` means plain single-process training: every function of this module is then a
    no-op (or the identity) and needs no process group.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # this module initialised the process group (and destroys it in cleanup)

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes the run directory, logs progress and saves checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def under_torchrun() -> bool:
    """True when launched by torchrun (or any launcher that sets RANK, WORLD_SIZE and LOCAL_RANK)."""
    return all(k in os.environ for k in _ENV_KEYS)


def free_port() -> int:
    """A TCP port on localhost that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(local_rank: int, fn: Callable[..., Any], cfg: Any, args: tuple, world_size: int, port: int,
            queue) -> None:
    """Body of one spawned process: the torchrun-style environment, then ``fn(cfg, *args)``."""
    os.environ.update(
        RANK=str(local_rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    # W processes on one machine: share the cores instead of each taking all of them.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    reuse_freed_host_memory()  # a spawned process starts with glibc's defaults (see robust_cli.host_memory)
    from robust_cli.apps import setup_logging

    # a spawned process starts without the parent's log handler: rank 0 reports the epochs as one process
    # would, the other ranks only their warnings
    setup_logging(logging.INFO if local_rank == 0 else logging.WARNING)
    result = fn(cfg, *args)
    if local_rank == 0:
        # Plain pickle (by value): torch.multiprocessing would share tensors through handles that die with
        # this process, before the parent reads them.
        queue.put(pickle.dumps(result))  # returns once the bytes are in the pipe (or read)
    # Leave without the interpreter's teardown: gloo's C++ threads, torn down there after the process group
    # was destroyed, aborted a rank ("terminate called without an active exception", SIGABRT) in ~15% of
    # 2-process CPU runs once the other rank had exited first (tests/test_ddp.py). The work is done and
    # reported; flush what is buffered and exit 0.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def launch(fn: Callable[..., Any], cfg: Any, *args: Any) -> Any:
    """Run ``fn(cfg, *args)`` on ``cfg.trainer.devices`` processes of this machine; rank 0's result.

    - ``devices <= 1`` or already under torchrun: calls ``fn(cfg, *args)`` in this process.
    - otherwise: spawns ``devices`` processes (``torch.multiprocessing``, start method *spawn*, so ``fn``
      must be a module-level function and ``cfg``, ``args`` picklable), each with RANK = LOCAL_RANK = its index,
      WORLD_SIZE = devices and a free MASTER_PORT on 127.0.0.1. ``fn`` is expected to call ``init``.
      An exception in any process is raised here (``torch.multiprocessing.ProcessRaisedException``).
      Rank 0's return value comes back through a pipe: keep it small (a dict of numbers and paths).
    """
    devices = int(cfg.trainer.devices)
    if under_torchrun():
        world = int(os.environ["WORLD_SIZE"])
        if devices not in (1, world):
            log.warning("trainer.devices=%d ignored: torchrun started %d processes", devices, world)
        return fn(cfg, *args)
    if devices <= 1:
        return fn(cfg, *args)
    if torch.cuda.is_available() and devices > torch.cuda.device_count():
        raise ValueError(f"trainer.devices={devices} but only {torch.cuda.device_count()} GPUs are visible")

    import torch.multiprocessing as mp

    mp_ctx = mp.get_context("spawn")
    queue = mp_ctx.SimpleQueue()
    port = free_port()
    log.info("Spawning %d DDP processes (MASTER_PORT=%d)", devices, port)
    procs = mp.start_processes(
        _worker, args=(fn, cfg, args, devices, port, queue), nprocs=devices, join=False, start_method="spawn"
    )
    result = None
    got = False
    # Read while joining: rank 0 blocks on a full pipe until the result is read.
    while not procs.join(timeout=0.5):
        if not got and not queue.empty():
            result, got = pickle.loads(queue.get()), True
    if not got and not queue.empty():
        result = pickle.loads(queue.get())
    return result


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    return backend


def init(trainer_cfg: Any, device: torch.device | str) -> DistContext:
    """The process group of this process, from the torchrun-style environment.

    ``trainer_cfg.backend``: ``auto`` (nccl on CUDA, gloo on CPU), or a torch.distributed backend name.
    On CUDA each process takes GPU ``local_rank``; the returned ``device`` is the one to train on.
    Without RANK/WORLD_SIZE in the environment (or WORLD_SIZE=1) returns the single-process context.
    """
    device = torch.device(device)
    if not under_torchrun() or int(os.environ["WORLD_SIZE"]) <= 1:
        return DistContext(device=device)
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized():
        backend = _resolve_backend(str(getattr(trainer_cfg, "backend", "auto")), device)
        kwargs = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, **kwargs)
        owns = True
    if rank != 0:
        # Only rank 0 reports; the others keep warnings and errors.
        logging.getLogger("robust_cli").setLevel(logging.WARNING)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device, owns_group=owns)


def wrap(model: nn.Module, ctx: DistContext, *, sync_batchnorm: bool = False) -> nn.Module:
    """``DistributedDataParallel(model)`` when distributed, else ``model`` unchanged.

    DDP copies rank 0's parameters and buffers to every rank at construction, so all ranks start equal.
    ``sync_batchnorm`` converts BatchNorm layers to SyncBatchNorm (CUDA only) so that batch statistics
    are taken over the global batch. Save and evaluate ``robust_cli.models.wrappers.unwrap(model)``: the
    DDP wrapper prefixes the state-dict keys with ``module.``.
    """
    if not ctx.distributed:
        return model
    if sync_batchnorm and ctx.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def sampler(
    dataset: torch.utils.data.Dataset, ctx: DistContext, shuffle: bool = True, seed: int = 0
) -> torch.utils.data.DistributedSampler:
    """This rank's share of ``dataset``: positions ``rank, rank+W, ...`` of a (seed, epoch) permutation.

    Returned for W = 1 too, so that one process sees the same order as the union of W processes (see the
    module docstring). Call ``set_epoch(epoch)`` before every epoch, or every epoch repeats one order.
    """
    return torch.utils.data.DistributedSampler(
        dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=shuffle, seed=seed, drop_last=False
    )


def per_rank_batch_size(batch_size: int, ctx: DistContext) -> int:
    """``batch_size / world_size``: the global batch is split over the ranks. Must divide evenly."""
    if batch_size % ctx.world_size:
        raise ValueError(f"batch_size={batch_size} is not divisible by trainer.devices={ctx.world_size}")
    return batch_size // ctx.world_size


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``tensor`` over all ranks, in place; returns it. Identity in a single process.

    Use for counts and sums (correct predictions, loss sums, sample counts), then divide globally.
    """
    if ctx.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(ctx: DistContext) -> None:
    """Wait for all ranks (e.g. until rank 0 has written a checkpoint the others will read)."""
    if ctx.distributed:
        if ctx.device.type == "cuda":
            dist.barrier(device_ids=[ctx.device.index])
        else:
            dist.barrier()


def cleanup(ctx: DistContext) -> None:
    """Destroy the process group if ``init`` created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()
