"""``logger=tensorboard|mlflow``: what a run logs is read back by the tools' own readers (TensorBoard's
EventAccumulator, MLflow's client) and equals history.csv / summary.json. Skipped where the optional
packages are not installed (``pip install '.[tensorboard,mlflow]'``)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from robust_cli.errors import UserError

TRAIN = ["experiment=quickstart", "model=mlp", "model.widths=[16]", "device=cpu", "max_batches_per_epoch=3"]
EVAL = ["attack=fgsm", "norm=linf", "n_examples=16", "lipschitz=false", "search_steps=4"]


def _compose(config, overrides):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from robust_cli.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("robust_cli.conf", version_base=None):
            return compose(config, overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


def _train(run_path, extra, interrupt_after: int | None = None, monkeypatch=None):
    """Train into ``run_path`` in this process. ``interrupt_after=N``: a Ctrl-C (``KeyboardInterrupt``) right
    after epoch N is complete and logged: the interrupting hook is appended to ``EPOCH_END_HOOKS`` when
    ``loop.fit`` starts, after the tracker's (``_fit_in_dir`` adds that one just before)."""
    from robust_cli.rundir import RunDir
    from robust_cli.train_app import _fit_in_dir
    from robust_cli.training import loop

    overrides = [*TRAIN, *extra, f"run_dir={run_path}"]
    if interrupt_after is not None:
        fit = loop.fit

        def interrupt(epoch, row, run):
            if epoch == interrupt_after:
                raise KeyboardInterrupt

        def fit_then_interrupt(*args, **kwargs):
            loop.EPOCH_END_HOOKS.append(interrupt)
            try:
                return fit(*args, **kwargs)
            finally:
                loop.EPOCH_END_HOOKS.remove(interrupt)

        monkeypatch.setattr(loop, "fit", fit_then_interrupt)
    try:
        _fit_in_dir(_compose("train", overrides), RunDir(run_path), overrides)
    finally:
        if interrupt_after is not None:
            monkeypatch.setattr(loop, "fit", fit)
    return RunDir(run_path)


def _eval(run, extra):
    from robust_cli.eval_app import evaluate

    return evaluate(_compose("eval", [f"run={run.path}", *EVAL, *extra]))


def test_a_missing_package_is_one_line(monkeypatch):
    from robust_cli.reporting import tracking

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    hint = r"logger=mlflow needs the mlflow package: pip install 'robust-cli\[mlflow\]' \(or logger=csv\)$"
    with pytest.raises(UserError, match=hint):
        tracking.check_logger("mlflow")
    with pytest.raises(UserError, match="logger=wandb: expected one of csv, tensorboard, mlflow"):
        tracking.check_logger("wandb")


def test_tensorboard_history_eval_and_figure(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train = ["epochs=3", "logger=tensorboard"]
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "run", train, interrupt_after=2, monkeypatch=monkeypatch)
    run = _train(tmp_path / "run", train)  # the same command again: resumed from epoch 2's checkpoint
    assert run.path.name == "run" and (run.path / "tensorboard").is_dir()
    assert run.read_history()["epoch"].tolist() == [1, 2, 3]
    _eval(run, ["logger=tensorboard"])
    history = run.read_history()
    events = EventAccumulator(str(run.path / "tensorboard")).Reload()
    for column in ("train_loss", "train_error", "test_error"):
        scalars = events.Scalars(f"train/{column}")
        assert [s.step for s in scalars] == [1, 2, 3]  # each epoch once, the resumed ones too
        assert [s.value for s in scalars] == pytest.approx(history[column].tolist(), rel=1e-6)
    ev = EventAccumulator(str(run.eval.path / "tensorboard"), size_guidance={"images": 0}).Reload()
    summary = run.eval.result("fgsm", "linf").read_summary()
    (median,) = ev.Scalars("eval/fgsm-linf/median_distance")
    assert median.value == pytest.approx(summary["median_distance"], rel=1e-6)
    (image,) = ev.Images("eval/error_curves")
    assert image.width > 100 and image.height > 100


def test_mlflow_file_store_history_eval_and_artifacts(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"file:{tmp_path / 'mlruns'}"
    run = _train(tmp_path / "run", ["epochs=2", "logger=mlflow", f"mlflow_uri={uri}"])
    _eval(run, ["logger=mlflow", f"mlflow_uri={uri}"])
    client = MlflowClient(tracking_uri=uri)
    (train_run,) = client.search_runs([client.get_experiment_by_name("robust-train").experiment_id])
    assert train_run.data.tags["robust.dir"] == str(run.path.resolve())
    history = run.read_history()
    losses = client.get_metric_history(train_run.info.run_id, "train/train_loss")
    assert [m.step for m in losses] == [1, 2]
    assert [m.value for m in losses] == pytest.approx(history["train_loss"].tolist(), rel=1e-12)
    assert train_run.data.params["model.widths"] == "[16]"
    assert {a.path for a in client.list_artifacts(train_run.info.run_id, "run")} == {"run/history.csv",
                                                                                   "run/config.yaml"}
    (eval_run,) = client.search_runs([client.get_experiment_by_name("robust-eval").experiment_id])
    summary = json.loads(run.eval.result("fgsm", "linf").summary_path.read_text())
    assert eval_run.data.metrics["eval/fgsm-linf/clean_error"] == pytest.approx(summary["clean_error"])
    names = {a.path for a in client.list_artifacts(eval_run.info.run_id, "eval")}
    assert {"eval/error_curves.png", "eval/summary.csv", "eval/error_curves.csv"} <= names
