"""The epoch loop of ``robust train``: resumable, deterministic on request, one readable function.

Per epoch: set the lr from a pure function of the epoch, reseed from (seed, epoch), run the defense on each
batch and step, measure clean error on validation/test, then write ``checkpoints/last.pt`` and
``history.csv`` atomically. Because every random stream is reseeded from the epoch number, a run killed at
any point and started again continues from its last completed epoch and (on CPU, deterministic mode) ends
with exactly the weights of an uninterrupted run.

One process trains a run directory (its owner lock, ``training.lifecycle``). A diverged run (a non-finite
loss, exploding weights: ``training.divergence``) fails before the epoch's checkpoint is written, so
``last.pt`` always holds the last good epoch. The step's only device sync stays the one ``.tolist()``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from robust_cli.apps import add_file_log
from robust_cli.data import info_of, load_split
from robust_cli.defenses import build_defense
from robust_cli.device import resolve_device
from robust_cli.errors import UserError
from robust_cli.models import build_model
from robust_cli.preflight import constructed
from robust_cli.rundir import RunDir
from robust_cli.training import distributed
from robust_cli.training.batches import Batches, count_wrong, fits_on_device
from robust_cli.training.checkpoint import load_checkpoint, save_checkpoint, save_model
from robust_cli.training.divergence import check_epoch, check_step, loss_bound
from robust_cli.training.lifecycle import acquire_owner_lock, interruption, start_record
from robust_cli.training.distributed import DistContext
from robust_cli.training.optim import build_optimizer, tikhonov_penalty
from robust_cli.training.robust_val import COLUMN, RobustValidation, best_so_far
from robust_cli.training.schedules import lr_at

log = logging.getLogger(__name__)

#: Called as ``hook(epoch, row, run)`` on the main rank after every completed epoch, once its checkpoint,
#: ``history.csv`` row and ``run.json`` are written: ``epoch`` is the number of completed epochs (1-based),
#: ``row`` the epoch's history row (a dict; do not change it), ``run`` the ``RunDir``. Empty in normal use;
#: the test suite fills it (tests/hooks/sitecustomize.py: kill a run after epoch N, pad epochs) and a
#: caller may use it for monitoring. A hook must not change the training state (model, optimizer, seeds).
EPOCH_END_HOOKS: list[Callable[[int, dict[str, Any], RunDir], None]] = []


def set_determinism(enabled: bool) -> None:
    """Deterministic kernels (bit-exact repeats on CPU; best effort on CUDA)."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.backends.cudnn.benchmark = not enabled
    torch.backends.cudnn.deterministic = enabled


def epoch_seed(seed: int, epoch: int) -> int:
    return int(seed) * 100_003 + epoch


def clean_error(model, x: torch.Tensor, y: torch.Tensor, batch_size: int, device, channels_last: bool) -> float:
    """Fraction of ``x`` the model misclassifies, in eval mode (restores the mode it found)."""
    if len(x) == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    wrong = count_wrong(model, x, y, batch_size, device, channels_last)
    model.train(was_training)
    return wrong / len(x)


def _placed(x: torch.Tensor, y: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """An evaluation split on the device when it fits there (robust_cli.training.batches), else where it is."""
    if fits_on_device(x.numel() * x.element_size(), device):
        return x.to(device), y.to(device)
    return x, y


def _batches(n: int, per_rank: int, generator: torch.Generator, ctx: DistContext):
    """Shuffled index batches (``per_rank`` each) of one epoch; under DDP each rank takes its shard.

    The permutation is drawn from the epoch's generator (the same on every rank), then split as
    ``DistributedSampler`` does (rank, rank + world_size, ...) so the ranks together see each image once.
    """
    perm = torch.randperm(n, generator=generator)
    if ctx.world_size > 1:
        usable = n - n % ctx.world_size
        perm = perm[:usable][ctx.rank::ctx.world_size]
    return [perm[i:i + per_rank] for i in range(0, len(perm), per_rank)]


def fit(cfg: DictConfig, run_dir: Path | RunDir, overrides: list[str], ctx: DistContext | None = None,
        fresh: bool = False) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir`` and return the final metrics.

    Resumes from ``checkpoints/last.pt`` when it exists, unless ``fresh`` (retrain a finished run: the
    caller decides, see ``train_app.train``), which deletes that checkpoint before the run is marked running.
    """
    run = RunDir(run_dir)
    ctx = ctx or DistContext(device=resolve_device(cfg.device))
    device = ctx.device
    set_determinism(bool(cfg.deterministic))
    torch.manual_seed(cfg.seed)

    # everything that can fail on bad input happens before the run directory is touched
    x_train, y_train = load_split(cfg.dataset, cfg.data, "train")
    x_val, y_val = load_split(cfg.dataset, cfg.data, "val")
    x_test, y_test = load_split(cfg.dataset, cfg.data, "test")
    model = constructed("model", build_model, cfg.model, info_of(cfg.dataset)).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    defense = constructed("defense", build_defense, cfg.defense)
    robust_val = RobustValidation.of(cfg, x_val, y_val)  # None unless val_attack=
    if ctx.world_size > 1 and not getattr(defense, "distributed", True):
        raise UserError(f"defense={cfg.defense.name} trains in one process only (trainer.devices=1)")
    if cfg.compile:  # refused before the run directory is touched
        from robust_cli.acceleration import needs_double_backward

        if needs_double_backward(defense):
            raise UserError(f"compile=true: defense={cfg.defense.name} differentiates input gradients (double "
                            "backprop), which torch.compile cannot; use compile=false (or the defense's "
                            "method=finite_difference where it has one)")
    optimizer = build_optimizer(model.parameters(), cfg.optimizer)
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise UserError("epochs and batch_size must be at least 1")
    try:
        per_rank_batch = distributed.per_rank_batch_size(cfg.batch_size, ctx)
    except ValueError as err:
        raise UserError(str(err)) from None

    ckpt_path = run.checkpoint_path
    lock = None
    if ctx.is_main:  # the owner lock first: a second start of the run reads nothing of it and says so
        run.path.mkdir(parents=True, exist_ok=True)
        lock = acquire_owner_lock(run)  # one writer per run directory, from here to the end
    try:
        if ctx.world_size == 1 and not fresh and not cfg.force and run.status() == "done" \
                and run.model_path.exists():  # finished by the holder it waited behind: nothing to do
            log.info("already trained: %s (force=true retrains)", run)
            final = dict(run.record().data.get("final", {}))
            lock.release()
            return final
        start_epoch, history, fresh = _resume(run, cfg, model, optimizer, defense, fresh, ctx)
    except BaseException:
        if lock is not None:
            lock.release()
        raise

    train_model = distributed.wrap(model, ctx)  # the model itself in a single process
    if cfg.compile:
        from robust_cli.acceleration import compile_model

        train_model = compile_model(train_model, device)  # compiles at the first step
    train_set = Batches(x_train, y_train, device, channels_last=bool(cfg.channels_last))
    (x_val, y_val), (x_test, y_test) = _placed(x_val, y_val, device), _placed(x_test, y_test, device)

    use_amp = bool(cfg.amp) and device.type == "cuda"
    if cfg.amp and not use_amp and ctx.is_main:
        log.warning("amp=true needs CUDA; training in fp32 on %s", device)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else nullcontext

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), TimeRemainingColumn(), disable=not ctx.is_main,
                        transient=True)
    record, file_log = None, None
    try:
        if ctx.is_main:
            file_log = add_file_log(run.log_path)
            record = start_record(run, cfg, str(device), overrides, fresh, history)
        bound = loss_bound(cfg.dataset.num_classes)
        with progress:
            for epoch in range(start_epoch, cfg.epochs):
                t0 = time.time()
                lr = lr_at(epoch, cfg.optimizer.lr, cfg.schedule, cfg.epochs)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                if hasattr(defense, "begin_epoch"):  # a defense with a schedule of its own (the critic's lr)
                    defense.begin_epoch(epoch, lr / cfg.optimizer.lr if cfg.optimizer.lr else 1.0)
                torch.manual_seed(epoch_seed(cfg.seed, epoch))  # dropout & defenses' random starts
                gen = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch))  # order & augmentation
                batches = _batches(len(x_train), per_rank_batch, gen, ctx)
                if cfg.max_batches_per_epoch:
                    batches = batches[: cfg.max_batches_per_epoch]
                task = progress.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=len(batches), info="")
                sums = {"loss": 0.0, "wrong": 0.0, "n": 0.0, "steps": 0.0, "above": 0.0}
                stat_sums: dict[str, float] = {}
                train_model.train()
                for step, idx in enumerate(batches):
                    at = epoch + step / len(batches)
                    step_lr = lr_at(at, cfg.optimizer.lr, cfg.schedule, cfg.epochs)
                    for group in optimizer.param_groups:
                        group["lr"] = step_lr
                    xb, yb = train_set.batch(idx, cfg.dataset.augment, gen)
                    with autocast():
                        out = defense(train_model, xb, yb)
                        loss = out.loss
                        if cfg.tikhonov:
                            loss = loss + cfg.tikhonov * tikhonov_penalty(model)
                    # one device sync per step: the loss and the mistakes, both exact in float64
                    loss_v, wrong_v = torch.stack([loss.detach().double(),
                                                   (out.logits.detach().argmax(1) != yb).sum().double()]).tolist()
                    check_step(loss_v, epoch + 1, step, at, step_lr, cfg)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    b = len(yb)
                    sums["loss"] += loss_v * b
                    sums["wrong"] += wrong_v
                    sums["n"] += b
                    sums["steps"] += 1
                    sums["above"] += loss_v > bound
                    for key, value in out.stats.items():
                        stat_sums[key] = stat_sums.get(key, 0.0) + float(value) * b
                    progress.update(task, advance=1, info=f"loss {sums['loss'] / sums['n']:.4f}")
                progress.remove_task(task)
                if ctx.world_size > 1:
                    keys = sorted(stat_sums)
                    packed = torch.tensor([*sums.values(), *[stat_sums[k] for k in keys]], dtype=torch.float64,
                                          device=device)
                    packed = distributed.all_reduce_sum(packed, ctx).cpu().tolist()
                    sums, stat_sums = dict(zip(sums, packed)), dict(zip(keys, packed[len(sums):]))
                # the epoch's last step is checked too, before anything of it is written (every rank alike)
                check_epoch(model, sums["above"], sums["steps"], epoch + 1, at, step_lr, cfg)
                n = max(sums["n"], 1.0)
                row = {"epoch": epoch + 1, "lr": lr, "train_loss": sums["loss"] / n, "train_error": sums["wrong"] / n}
                if len(x_val):
                    row["val_error"] = clean_error(model, x_val, y_val, cfg.eval_batch_size, device, cfg.channels_last)
                row["test_error"] = clean_error(model, x_test, y_test, cfg.eval_batch_size, device, cfg.channels_last)
                row.update({k: v / n for k, v in stat_sums.items()})
                best = False
                if robust_val is not None and robust_val.due(epoch + 1, cfg.epochs):
                    row[COLUMN] = robust_val.accuracy(model, device)
                    best = row[COLUMN] > best_so_far(history)
                row["seconds"] = round(time.time() - t0, 3)
                history.append(row)
                if ctx.is_main:
                    if best:  # before last.pt: a crash between the two repeats this epoch and rewrites it
                        save_model(run.best_checkpoint_path, model, cfg, epoch=epoch + 1, **{COLUMN: row[COLUMN]})
                    save_checkpoint(ckpt_path, model, optimizer, epoch + 1, history,
                                    defense.state_dict() if hasattr(defense, "state_dict") else None)
                    run.write_history(history)
                    record.update(epochs_done=epoch + 1)
                    log.info("epoch %d/%d  lr %.3g  loss %.4f  train err %.4f  test err %.4f  (%.1fs)", epoch + 1,
                             cfg.epochs, lr, row["train_loss"], row["train_error"], row["test_error"], row["seconds"])
                    for hook in EPOCH_END_HOOKS:
                        hook(epoch + 1, row, run)
                if ctx.world_size > 1:
                    distributed.barrier(ctx)
        final = {k: v for k, v in history[-1].items() if isinstance(v, (int, float)) and math.isfinite(v)}
        if ctx.is_main:
            save_model(run.model_path, model, cfg)
            record.finish("done", final=final)
    except BaseException as err:
        if record is not None:
            if isinstance(err, (KeyboardInterrupt, SystemExit)):
                # Ctrl-C, SIGTERM (robust_cli.apps.Terminated), or submitit stopping the job before a SLURM
                # time limit / preemption to requeue it: the checkpoint of the last completed epoch is
                # intact and the same command resumes from it
                record.finish("interrupted", reason=f"{interruption(err)} after epoch {len(history)}; "
                              "run the same command to resume")
            else:
                reason = str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
                record.finish("failed", reason=reason)
        raise
    finally:
        if file_log is not None:
            logging.getLogger("robust_cli").removeHandler(file_log)
            file_log.close()
        if lock is not None:
            lock.release()
    return final


def _resume(run: RunDir, cfg: DictConfig, model, optimizer, defense, fresh: bool, ctx: DistContext):
    """``(start_epoch, history, fresh)`` from ``checkpoints/last.pt`` (loaded into ``model``, ``optimizer``
    and a defense with state of its own, the critic's), read as the run's owner; ``(0, [], fresh)`` without
    one or when ``fresh``. A checkpoint that cannot be read is refused, or, with ``force=true``, discarded
    (``fresh`` becomes True)."""
    if not run.checkpoint_path.exists() or fresh:
        return 0, [], fresh
    try:
        ckpt = load_checkpoint(run.checkpoint_path)
    except UserError as err:
        if not cfg.force:
            raise UserError(f"{run} cannot resume (force=true discards its checkpoint and trains from "
                            f"scratch): {' '.join(str(err).split())}") from None
        log.warning("%s; force=true: training from scratch", err)
        return 0, [], True
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    start_epoch, history = int(ckpt["epoch"]), list(ckpt["history"])
    if hasattr(defense, "load_state_dict") and "defense" in ckpt:
        defense.load_state_dict(ckpt["defense"])
    if ctx.is_main:
        log.info("resuming %s from epoch %d", run, start_epoch)
    return start_epoch, history, False
