"""Sharded evaluation: ``robust eval shard=i/n`` attacks one slice of the images, the merge assembles them.

The ``N`` evaluated images are cut into ``B = ceil(N / batch_size)`` batches, exactly those of an unsharded
run, and shard ``i`` of ``n`` takes the batches ``[floor(i B / n), floor((i + 1) B / n))``. The runner
reseeds the global generator per batch from the batch's first index (``runner.batch_seed``), and the attacks'
own generators are seeded per call, so every row a shard computes is the row the unsharded run computes.
The merge concatenates the shards' rows, adds up their pass counts, and writes through the same code as an
unsharded run (robust_cli.evaluation.results): ``per_sample.csv`` is byte for byte the same, and so is
every summary except the wall time (``seconds``, the sum of the shards').

The image-level diagnostics of the whole set (the zero-gradient fraction, ``lipschitz.json``) are computed
by the merge on all ``N`` images, as an unsharded run does.

The merge runs in the job that finishes the last shard of a set (so ``robust eval -m shard=0/8,...,7/8``
ends merged, whatever the launcher), or on demand: ``robust eval run=<dir> merge=true``.
"""

from __future__ import annotations

import json
import logging
import math
import re
from typing import Any

import numpy as np
import pandas as pd
import torch

from robust_cli.errors import UserError
from robust_cli.evaluation.runner import AttackResult
from robust_cli.rundir import RunDir
from robust_cli.rundir.shards import ShardResultDir, ShardsDir

log = logging.getLogger("robust_cli.eval")

_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(spec: Any) -> tuple[int, int] | None:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``; None for None. Anything else is a ``UserError``."""
    if spec is None:
        return None
    match = _SPEC.match(str(spec))
    if match is not None:
        index, count = int(match.group(1)), int(match.group(2))
        if 0 <= index < count:
            return index, count
    raise UserError(f"shard={spec} is not a shard: give shard=i/n with 0 <= i < n (shard=0/8 ... shard=7/8)")


def shard_range(n_images: int, batch_size: int, index: int, count: int) -> tuple[int, int]:
    """``[start, stop)``: the images of shard ``index`` of ``count``, whole batches of ``batch_size``
    (a shard may be empty when ``count`` exceeds the number of batches)."""
    batches = math.ceil(n_images / batch_size)
    first, last = index * batches // count, (index + 1) * batches // count
    return min(first * batch_size, n_images), min(last * batch_size, n_images)


def write_shard(shard_dir: ShardResultDir, result: AttackResult, *, attack: str, norm: str, budget: bool,
                config: dict[str, Any], settings: dict[str, Any], index: int, count: int, start: int,
                stop: int, started_from: list[str] | None = None, bracketed_by: list[str] | None = None) -> None:
    """One shard of one pair: its rows and ``shard.json`` (what the merge adds up, and what produced it)."""
    shard_dir.write(result.frame, {
        "attack": attack, "norm": norm, "budget": bool(budget), "shard": [int(index), int(count)],
        "start": int(start), "stop": int(stop), "config": config, "settings": settings,
        "forward_samples": result.forward_samples, "backward_samples": result.backward_samples,
        "non_monotone": int(result.non_monotone), "resolution": float(result.resolution),
        "seconds": float(result.seconds), "x_norm": [float(v) for v in result.x_norm],
        "started_from": list(started_from or []), "bracketed_by": list(bracketed_by or []),
        "resolutions": [float(v) for v in result.resolutions], "tolerances": [float(v) for v in result.tolerances],
    })


def _same(record: dict[str, Any], config: dict[str, Any]) -> bool:
    return json.dumps(record.get("config"), sort_keys=True) == json.dumps(config, sort_keys=True)


def shard_done(shard_dir: ShardResultDir, config: dict[str, Any]) -> bool:
    """``shard_dir`` holds a finished shard computed with ``config`` (reused on a repeated command)."""
    return shard_dir.complete() and _same(shard_dir.read_record(), config)


def missing_shards(shards: ShardsDir, count: int, attack: str, norm: str, config: dict[str, Any]) -> list[int]:
    """The shard indices of ``count`` not yet finished with ``config`` for (attack, norm)."""
    return [i for i in range(count) if not shard_done(shards.result(count, i, attack, norm), config)]


def assemble(records: list[tuple[pd.DataFrame, dict[str, Any]]], n: int) -> AttackResult:
    """The ``AttackResult`` of the whole set from its shards' ``(rows, shard.json)``, in shard order."""
    frames = [f for f, _ in records]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if list(frame["index"]) != list(range(n)):
        raise UserError(f"the shards cover images {frame['index'].min()}..{frame['index'].max()} "
                        f"({len(frame)} rows), not 0..{n - 1}; evaluate them again with force=true")
    recs = [r for _, r in records]
    forward, backward = sum(r["forward_samples"] for r in recs), sum(r["backward_samples"] for r in recs)
    return AttackResult(
        frame=frame, seconds=sum(r["seconds"] for r in recs),
        forward_per_sample=forward / max(n, 1), backward_per_sample=backward / max(n, 1),
        non_monotone=sum(r["non_monotone"] for r in recs),
        x_norm=np.array([v for r in recs for v in r["x_norm"]], dtype=np.float64),
        resolution=max((r["resolution"] for r in recs), default=0.0),
        forward_samples=forward, backward_samples=backward,
        resolutions=np.array([v for r in recs for v in r.get("resolutions", [])], dtype=np.float64),
        tolerances=np.array([v for r in recs for v in r.get("tolerances", [])], dtype=np.float64),
    )


def merge_pairs(run_dir: RunDir, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, count: int,
                pairs: list[tuple[str, str, dict[str, Any]]], *, force: bool = False) -> tuple[pd.DataFrame, dict]:
    """Write ``eval/<attack>-<norm>/`` of every ``(attack, norm, config)`` from its ``count`` finished shards,
    then the run's merged files; ``x`` ``[N,C,H,W]`` / ``y`` ``[N]``: all evaluated images (on the device).

    Returns ``write_merged``'s (summary table, checks).
    """
    from robust_cli.evaluation.cache import model_identity
    from robust_cli.evaluation.lipschitz import zero_gradient_fraction
    from robust_cli.evaluation.results import write_merged, write_result

    shards = ShardsDir.of(run_dir.eval)
    model_id = model_identity(model)
    settings = None
    loaded = []
    for attack, norm, config in pairs:
        if config.get("model") != model_id:
            raise UserError(f"the shards of {attack}-{norm} were evaluated on other weights (the run was "
                            "retrained since); evaluate them again")
        dirs = [shards.result(count, i, attack, norm) for i in range(count)]
        records = [(d.read_per_sample(), d.read_record()) for d in dirs]
        settings = records[0][1]["settings"]
        loaded.append((attack, norm, config, records))
    if settings is None:
        raise UserError("no finished shard set to merge")
    zero_grad = zero_gradient_fraction(model, x, y, int(settings["batch_size"]))  # as the unsharded run: all N
    for attack, norm, config, records in loaded:
        rec = records[0][1]
        result = assemble(records, int(x.shape[0]))
        write_result(run_dir.eval.result(attack, norm), result, attack=attack, norm=norm, budget=rec["budget"],
                     eps=float(rec["settings"]["eps"]), thresholds=list(rec["settings"]["thresholds"]),
                     zero_grad=zero_grad, config=config, started_from=rec.get("started_from", []),
                     search=rec["settings"].get("search"), mode=rec["settings"].get("mode", "distance"),
                     budgets=rec["settings"].get("budgets"), model_checks=rec["settings"].get("model_checks"),
                     bracketed_by=rec.get("bracketed_by"))
        log.info("merged %d shards of %s-%s into %s", count, attack, norm, run_dir.eval.result(attack, norm))
    return write_merged(run_dir.eval, model, x, y, batch_size=int(settings["batch_size"]),
                        lipschitz=bool(settings["lipschitz"]), force=force, model_id=model_id, title=str(run_dir))


def finished_sets(run_dir: RunDir) -> tuple[dict[int, list[tuple[str, str, dict]]], list[str]]:
    """``({count: [(attack, norm, config)]}, [what is unfinished, as text])`` of the shards of a run:
    a set is finished when shards ``0..count-1`` are all present with the same config."""
    shards = ShardsDir.of(run_dir.eval)
    done: dict[int, list[tuple[str, str, dict]]] = {}
    unfinished = []
    for count in shards.counts():
        for name in shards.pair_names(count):
            records = [ShardResultDir(shards.path / str(count) / str(i) / name) for i in range(count)]
            first = next((r.read_record() for r in records if r.complete()), None)
            if first is None:
                continue
            missing = [i for i, r in enumerate(records) if not (r.complete() and _same(r.read_record(),
                                                                                      first["config"]))]
            if missing:
                unfinished.append(f"{name} of {count} shards misses {', '.join(f'{i}/{count}' for i in missing)}")
            else:
                done.setdefault(count, []).append((first["attack"], first["norm"], first["config"]))
    return done, unfinished
