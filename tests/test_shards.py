"""Sharded evaluation (``robust eval shard=i/n``, ``merge=true``): shards 0/3..2/3 and their merge write what
one unsharded run writes, byte for byte (``per_sample.csv``, the curves) and number for number (every summary
except the wall time).

The run is the digits quickstart trained in-process for a few batches; the evaluation uses a tiny ``n`` with
``batch_size=4`` so that the three shards are three batches. The attacks cover a budget attack with random
restarts (pgd: its eps search and its own generator) and a minimal-norm one drawing from the global
generator (ddn's random perturbation of a zero gradient).
The same comparison through hydra/launcher=slurm on the local cluster is slow-marked at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cli_helpers import robust

N = 12
EVAL = ["attack=[pgd,ddn]", "norm=l2", f"n_examples={N}", "batch_size=4", "attack.pgd.steps=3",
        "attack.pgd.restarts=2", "attack.ddn.steps=5", "search_steps=3", "device=cpu"]
PAIRS = ("pgd-l2", "ddn-l2")


def compose(name: str, overrides: list[str]):
    from cli_helpers import compose_checked

    return compose_checked(name, overrides)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    from robust_cli.training.loop import fit

    run = tmp_path_factory.mktemp("shards") / "run"
    cfg = compose("train", ["experiment=quickstart", "epochs=1", "max_batches_per_epoch=4", "device=cpu"])
    fit(cfg, run, [])
    return run


def evaluate(run: Path, *extra: str):
    from robust_cli.eval_app import evaluate as run_eval

    return run_eval(compose("eval", [f"run={run}", *EVAL, *extra]))


def assert_same_evaluation(sharded: Path, whole: Path) -> None:
    """Every file of ``whole/eval`` is in ``sharded/eval`` with the same content (summaries: the same
    numbers but the wall time)."""
    a, b = sharded / "eval", whole / "eval"
    for pair in PAIRS:
        for name in ("per_sample.csv", "curve.csv"):
            assert (a / pair / name).read_bytes() == (b / pair / name).read_bytes(), (pair, name)
        sa, sb = (json.loads((d / pair / "summary.json").read_text()) for d in (a, b))
        assert sa.pop("seconds") > 0 and sb.pop("seconds") > 0
        assert sa == sb, pair
    assert (a / "error_curves.csv").read_bytes() == (b / "error_curves.csv").read_bytes()
    assert json.loads((a / "lipschitz.json").read_text()) == json.loads((b / "lipschitz.json").read_text())
    ta, tb = (pd.read_csv(d / "summary.csv").drop(columns="seconds") for d in (a, b))
    pd.testing.assert_frame_equal(ta, tb)
    assert set(ta["attack"]) == {"pgd", "ddn", "worst_case"}


def test_shard_rows_read_back_bit_for_bit(tmp_path):
    """A shard's per_sample.csv reads back to the very float64 bits that were written (random bit patterns
    over the whole exponent range, subnormals, -0.0, +-inf, NaN), with the runner's integer columns."""
    from robust_cli.rundir.shards import ShardResultDir

    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**63 - 1, size=20000, dtype=np.int64) * rng.choice([1, -1], size=20000)
    floats = bits.view(np.float64)
    floats = floats[np.isfinite(floats)][:10000]
    special = np.array([0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, np.inf,
                        -np.inf, np.nan, 0.1, 1 / 3, 0.30000000000000004, 9007199254740993.0])
    dist = np.concatenate([floats, special])
    unit = np.concatenate([rng.random(len(floats)), rng.random(len(special)) * 1e-300])
    n = len(dist)
    frame = pd.DataFrame({"index": np.arange(n, dtype=np.int64), "label": rng.integers(0, 10, n),
                          "clean_pred": rng.integers(0, 10, n), "adv_pred": rng.integers(0, 10, n),
                          "dist": dist, "margin": unit})
    shard = ShardResultDir(tmp_path / "pgd-l2")
    shard.write(frame, {"range": [0, n]})
    back = shard.read_per_sample()
    assert list(back.columns) == list(frame.columns)
    assert [str(t) for t in back.dtypes] == ["int64"] * 4 + ["float64"] * 2
    for c in ("index", "label", "clean_pred", "adv_pred"):
        assert np.array_equal(back[c].to_numpy(), frame[c].to_numpy())
    for c in ("dist", "margin"):
        a, b = frame[c].to_numpy(), back[c].to_numpy()
        assert np.array_equal(np.isnan(a), np.isnan(b))
        ok = ~np.isnan(a)
        assert np.array_equal(a[ok].view(np.int64), b[ok].view(np.int64)), c  # -0.0 and every last bit kept
    # and the file written again from what was read is the same file
    again = ShardResultDir(tmp_path / "again")
    again.write(back, {})
    assert again.per_sample_path.read_bytes() == shard.per_sample_path.read_bytes()


def test_bad_shard_specs_are_one_line_at_compose_time():
    from robust_cli.cli import validate

    for bad in ("3/3", "1/0", "a/b"):
        line = validate("eval", ["run=somewhere", f"shard={bad}"])
        assert line is not None and f"shard={bad}" in line and "0 <= i < n" in line and "\n" not in line, line
    for good in (["run=somewhere", "shard=2/3"], ["-m", "run=somewhere", "shard=0/2,1/2"]):
        line = validate("eval", good)  # the spec passes; what is refused next is the run that is not there
        assert line is not None and "shard" not in line and "run=somewhere" in line, line


def test_shards_then_merge_equal_the_unsharded_run(trained, tmp_path):
    sharded, whole = tmp_path / "sharded", tmp_path / "whole"
    shutil.copytree(trained, sharded)
    shutil.copytree(trained, whole)
    evaluate(whole)

    for i in range(3):
        if i < 2:  # not merged before the last shard: no result of the run is touched
            table = evaluate(sharded, f"shard={i}/3")
            assert table.empty and not (sharded / "eval" / "summary.csv").exists()
            assert not any((sharded / "eval" / p).exists() for p in PAIRS)
        else:  # the shard finishing the set merges it
            assert not evaluate(sharded, f"shard={i}/3").empty
        # each shard wrote its own directory only, its rows with their global indices
        rows = pd.read_csv(sharded / "eval" / "shards" / "3" / str(i) / "pgd-l2" / "per_sample.csv")
        assert list(rows["index"]) == list(range(4 * i, 4 * i + 4))
    assert_same_evaluation(sharded, whole)

    # merge=true assembles the same files again from the stored shards (nothing is attacked)
    for pair in PAIRS:
        shutil.rmtree(sharded / "eval" / pair)
    (sharded / "eval" / "summary.csv").unlink()
    merged = evaluate(sharded, "merge=true")
    assert set(merged.attrs["pairs"]) == {("pgd", "l2"), ("ddn", "l2")}
    assert_same_evaluation(sharded, whole)

    # a set with a shard missing is not merged: one line naming it
    from robust_cli.errors import UserError

    shutil.rmtree(sharded / "eval" / "shards" / "3" / "1")
    with pytest.raises(UserError, match="misses 1/3"):
        evaluate(sharded, "merge=true")


# ---------------------------------------------------------------- the same through a SLURM job array

@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_shards_merge_to_the_unsharded_run(trained, tmp_path):
    """``robust eval -m shard=0/3,1/3,2/3 hydra/launcher=slurm``: three SLURM jobs, merged by the last one."""
    from test_slurm import SLURM_ARGS, SCRIPT

    if shutil.which("slurmctld") is None:
        pytest.skip("slurmctld not found: install slurm-wlm and munge (.ci/slurm_setup.sh)")
    if os.geteuid() != 0:
        pytest.skip("the local SLURM runs as root (SlurmUser=root)")
    from robust_cli.training.distributed import free_port

    state = tmp_path / "slurm"
    env = dict(os.environ, SLURM_LOCAL_DIR=str(state), SLURM_LOCAL_CTLD_PORT=str(free_port()),
               SLURM_LOCAL_D_PORT=str(free_port()))
    started = subprocess.run(["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=90)
    assert started.returncode == 0, started.stderr
    env["SLURM_CONF"] = str(state / "slurm.conf")
    try:
        sharded, whole = tmp_path / "sharded", tmp_path / "whole"
        shutil.copytree(trained, sharded)
        shutil.copytree(trained, whole)
        evaluate(whole)
        proc = robust("eval", "-m", f"run={sharded}", *EVAL, "shard=0/3,1/3,2/3", f"out_dir={tmp_path}",
                      f"hydra.sweep.dir={tmp_path / 'sweep'}", "hydra.launcher.timeout_min=5", *SLURM_ARGS,
                      env={"SLURM_CONF": env["SLURM_CONF"], "OMP_NUM_THREADS": "1"}, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        jobs = pd.read_csv(tmp_path / "sweep" / "jobs.csv", dtype={"slurm_job_id": str})
        assert list(jobs["status"]) == ["completed"] * 3 and jobs["slurm_job_id"].notna().all()
        assert_same_evaluation(sharded, whole)
    finally:
        subprocess.run(["scancel", "--user=root"], env=env, capture_output=True, timeout=30)
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, timeout=60)


@pytest.mark.slow
def test_local_launcher_shards_merge_to_the_unsharded_run(trained, tmp_path):
    """``robust eval -m shard=0/3,1/3,2/3 hydra/launcher=local``: joblib worker processes, two at a time."""
    sharded, whole = tmp_path / "sharded", tmp_path / "whole"
    shutil.copytree(trained, sharded)
    shutil.copytree(trained, whole)
    evaluate(whole)
    proc = robust("eval", "-m", f"run={sharded}", *EVAL, "shard=0/3,1/3,2/3", f"out_dir={tmp_path}",
                  "hydra/launcher=local", env={"OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_evaluation(sharded, whole)

