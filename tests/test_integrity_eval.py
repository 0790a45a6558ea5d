"""Run and sweep integrity of evaluation: ``robust eval -m run=a,b`` with its jobs.csv, sweep directories
named from their overrides, the data a run was trained on found again from elsewhere, one-line refusals.

Expected values come from the run directories themselves (summary.json, config.yaml) and from the naming
rule of robust_cli.rundir.names, not from earlier runs.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from cli_helpers import robust

from robust_cli.errors import UserError
from robust_cli.rundir import RunDir
from robust_cli.rundir.names import sweep_name, sweep_subdir


def _runs(out: Path) -> list[Path]:
    return sorted(p.parent for p in out.glob("train/*/*/*/*/model.pt"))


def _one_line_error(res, *needles: str) -> None:
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("robust: error: ") and all(n in line for n in needles), res.stderr[-2000:]


# ---------------------------------------------------------------- robust eval -m run=a,b


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, list[Path]]:
    out = tmp_path_factory.mktemp("two_runs")
    res = robust("train", "-m", "experiment=quickstart", "epochs=1", "seed=0,1", "max_batches_per_epoch=3",
                 f"out_dir={out}", "device=cpu", cwd=out)
    assert res.returncode == 0, res.stderr[-3000:]
    runs = _runs(out)
    assert len(runs) == 2
    return out, runs


def test_eval_multirun_over_two_runs_lists_each_run_in_jobs_csv(two_runs):
    out, runs = two_runs
    overrides = [f"run={runs[0]},{runs[1]}", "attack=fgsm", "norm=linf", "n_examples=12", "lipschitz=false"]
    res = robust("eval", "-m", *overrides, f"out_dir={out}", cwd=out)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    # deterministic: <out_dir>/sweeps/eval/<name from the overrides> (out_dir is runtime: not in the name)
    sweep = out / "sweeps" / "eval" / sweep_name(overrides)
    jobs = pd.read_csv(sweep / "jobs.csv")
    assert list(jobs["status"]) == ["completed", "completed"]
    assert [Path(p) for p in jobs["run_dir"]] == runs
    for run, row in zip(runs, jobs.itertuples()):
        stored = json.loads((run / "eval" / "fgsm-linf" / "summary.json").read_text())
        assert stored["n"] == 12
        assert row.evaluated == "fgsm-linf"
        assert row.median_distance == f"fgsm-linf={stored['median_distance']:.4g}"
        hist = pd.read_csv(run / "history.csv")
        assert row.test_error == pytest.approx(hist["test_error"].iloc[-1])
    assert not (out / "multirun").exists() and not any((r / "eval" / ".multirun").exists() for r in runs)

    # the same sweep again finds the same directory; every result is reused
    res = robust("eval", "-m", *overrides, f"out_dir={out}", cwd=out)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stderr.count("reusing") == 2
    assert sorted(p.name for p in (out / "sweeps" / "eval").iterdir()) == [sweep.name]


# ---------------------------------------------------------------- sweep directories of robust train -m


def test_sweep_names_come_from_the_overrides():
    assert sweep_name(["defense=none,tulip", "epochs=5", "device=cpu", "data.root=x"]) == "defense-none_tulip+epochs-5"
    assert sweep_name(["hydra/launcher=slurm"]) == "default"
    assert sweep_subdir("train", "train", ["epochs=1,2"]) == "train/epochs-1_2"
    assert sweep_subdir("train", "my_sweep", ["epochs=1,2"]) == "my_sweep"  # hydra.job.name=my_sweep
    long = sweep_name([f"run={'x' * 300}"])
    assert len(long) <= 180 and long != sweep_name([f"run={'x' * 301}"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="device=cuda is what makes these jobs fail")
def test_a_later_train_sweep_keeps_the_earlier_jobs_csv(tmp_path):
    # jobs that fail at once, where they run (device=cuda without CUDA: a property of the job's machine, so
    # not refused when the sweep is validated, unlike a bad value such as epochs=0): nothing trains
    cuda = "device=cuda"
    first = robust("train", "-m", "epochs=1,2", cuda, f"out_dir={tmp_path}", cwd=tmp_path)
    second = robust("train", "-m", "epochs=1", "batch_size=1,2", cuda, f"out_dir={tmp_path}", cwd=tmp_path)
    named = robust("train", "-m", "epochs=1", "hydra.job.name=mine", cuda, f"out_dir={tmp_path}", cwd=tmp_path)
    for res in (first, second, named):
        assert res.returncode != 0 and "Traceback" not in res.stderr
    a = pd.read_csv(tmp_path / "sweeps" / "train" / "epochs-1_2" / "jobs.csv")
    b = pd.read_csv(tmp_path / "sweeps" / "train" / "batch_size-1_2+epochs-1" / "jobs.csv")
    c = pd.read_csv(tmp_path / "sweeps" / "mine" / "jobs.csv")
    out = f" {cuda} out_dir={tmp_path}"
    assert list(a["overrides"]) == ["epochs=1" + out, "epochs=2" + out] and set(a["status"]) == {"failed"}
    assert list(b["overrides"]) == ["epochs=1 batch_size=1" + out, "epochs=1 batch_size=2" + out]
    assert list(c["overrides"]) == ["epochs=1" + out]


# ---------------------------------------------------------------- the data of a run, found again


def _write_idx(path: Path, array: np.ndarray) -> None:
    """The MNIST idx format (LeCun et al.): magic (0, 0, dtype 0x08 = uint8, ndim), big-endian dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _fake_mnist(root: Path) -> None:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    g = np.random.default_rng(0)
    for prefix, n in (("train", 64), ("t10k", 16)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", g.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)


def test_eval_finds_a_relative_data_root_from_elsewhere_and_a_moved_copy(tmp_path):
    train_cwd, eval_cwd = tmp_path / "project", tmp_path / "elsewhere"
    eval_cwd.mkdir()
    _fake_mnist(train_cwd / "data")
    res = robust("train", "dataset=mnist", "model=mlp", "model.widths=[8]", "epochs=1", "data.root=data",
                 "data.download=false", "device=cpu", "out_dir=out", cwd=train_cwd)
    assert res.returncode == 0, res.stderr[-3000:]
    (run,) = _runs(train_cwd / "out")
    assert "data.root" not in run.name  # a runtime key: not part of the run's name
    stored = RunDir(run).read_config().data.root
    assert stored == str(train_cwd / "data")  # absolute, as read
    assert torch.load(run / "model.pt", weights_only=True)["data_cfg"]["root"] == stored

    args = [f"run={run}", "attack=fgsm", "norm=linf", "n_examples=8", "lipschitz=false"]
    res = robust("eval", *args, cwd=eval_cwd)
    assert res.returncode == 0, res.stderr[-3000:]

    moved = tmp_path / "moved"
    shutil.move(str(train_cwd / "data"), moved)
    _one_line_error(robust("eval", *args, cwd=eval_cwd), "MNIST not found in", "data.root")
    assert not (train_cwd / "data").exists()  # the failed attempt left no folders behind
    res = robust("eval", *args, f"data.root={moved}", "force=true", cwd=eval_cwd)
    assert res.returncode == 0, res.stderr[-3000:]
    res = robust("eval", *args, cwd=eval_cwd, env={"ROBUST_DATA": str(moved)})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "reusing" in res.stderr


# ---------------------------------------------------------------- one-line refusals


def test_a_model_file_with_foreign_objects_is_refused_without_torchs_advice(tmp_path):
    from robust_cli.training.checkpoint import load_checkpoint, load_trained_model

    run = RunDir(tmp_path)
    torch.save({"state_dict": {}, "model_cfg": Path("x")}, run.model_path)  # a pathlib object: not plain
    with pytest.raises(UserError) as err:
        load_trained_model(run)
    message = str(err.value)
    assert "weights_only" not in message and "safe_globals" not in message and "\n" not in message
    assert "Unsupported global" in message and "robust reads only the files robust train writes" in message
    run.checkpoint_path.parent.mkdir()
    shutil.copy(run.model_path, run.checkpoint_path)
    with pytest.raises(UserError, match="checkpoint .* holds objects other than tensors") as err:
        load_checkpoint(run.checkpoint_path)
    assert "weights_only" not in str(err.value)


def test_run_dir_inside_another_runs_eval_is_refused(tmp_path):
    from omegaconf import OmegaConf

    other = RunDir(tmp_path / "other")
    other.path.mkdir()
    other.record_path.write_text(json.dumps({"status": "done"}))
    inside = other.eval.path / "fgsm-linf"
    cfg = OmegaConf.create({"run_dir": str(inside), "out_dir": "outputs"})
    with pytest.raises(UserError, match=r"run_dir=.* puts the run inside the run directory .*other"):
        RunDir.of_train(cfg, [])
    assert RunDir.of_train(OmegaConf.create({"run_dir": str(tmp_path / "fine")}), []).path == tmp_path / "fine"
    res = robust("train", "experiment=quickstart", f"run_dir={inside}", cwd=tmp_path)
    _one_line_error(res, "puts the run inside the run directory")
    assert not inside.exists()


def test_data_lipschitz_prints_valid_json_where_the_constant_is_infinite(tmp_path):
    # two images, identical, of different labels: distance 0, the constant infinite
    x = np.zeros((2, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "same.npz", x_train=x, y_train=np.array([0, 1]), x_test=x, y_test=np.array([0, 1]))
    res = robust("data-lipschitz", "dataset=npz", f"dataset.path={tmp_path / 'same.npz'}",
                 "dataset.in_shape=[1,4,4]", "dataset.num_classes=2", "dataset.mean=[0.5]", "dataset.std=[0.5]",
                 cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    line = res.stdout.strip().splitlines()[-1]
    out = json.loads(line, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
    assert out["n"] == 2
    assert all(v is None or np.isfinite(v) for v in (out["lipschitz"], out["min_distance"]))
