"""``val_attack=pgd val_every=N``: the robust-accuracy column, best.pt by it, and a resume that stays exact."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from robust_cli.errors import UserError

BASE = ["experiment=quickstart", "model=mlp", "model.widths=[32]", "epochs=3", "device=cpu", "deterministic=true",
        "max_batches_per_epoch=10", "dataset.val_size=100"]
VAL = ["val_attack=pgd", "val_every=2", "val_eps=0.05", "val_n=48", "+val_options.steps=3"]


def _cfg(overrides):
    from cli_helpers import compose_checked

    return compose_checked("train", overrides)


def _train(tmp_path, name, extra=(), stop_after=None):
    """Train into ``tmp_path/name``; ``stop_after``: interrupt after that epoch, then resume to the end.
    Returns the run dir and ``{epoch: state dict of last.pt}`` seen after each epoch."""
    from robust_cli.rundir import RunDir
    from robust_cli.training import loop

    overrides = [*BASE, *VAL, *extra, f"run_dir={tmp_path / name}"]
    cfg = _cfg(overrides)
    run = RunDir(tmp_path / name)
    states = {}

    def hook(epoch, row, run_dir):
        states[epoch] = torch.load(run_dir.checkpoint_path, weights_only=True)["model"]
        if epoch == stop_after:
            raise KeyboardInterrupt

    loop.EPOCH_END_HOOKS.append(hook)
    try:
        if stop_after is not None:
            with pytest.raises(KeyboardInterrupt):
                loop.fit(cfg, run, overrides)
            assert run.status() == "interrupted"
        loop.fit(cfg, run, overrides)
    finally:
        loop.EPOCH_END_HOOKS.remove(hook)
    return run, states


def test_column_best_checkpoint_and_an_exact_resume(tmp_path):
    from robust_cli.attacks.pgd import pgd
    from robust_cli.data import load_split
    from robust_cli.training.checkpoint import load_trained_model

    run, states = _train(tmp_path, "straight")
    history = run.read_history()
    col = history["val_robust_accuracy"]
    assert col.isna().tolist() == [True, False, False]  # epochs 2 and 3 (val_every=2, the last)

    # the last value, recomputed here: the model.pt of the run, the first 48 validation images, PGD at 0.05,
    # success only where the clipped image is within the budget and misclassified
    model, cfg = load_trained_model(run)
    x, y = load_split(cfg.dataset, cfg.data, "val")
    x, y = x[:48], y[:48]
    x_adv = pgd(model, x, y, norm="linf", eps=0.05, steps=3).clamp(0, 1)
    assert (x_adv - x).abs().amax() <= 0.05 + 1e-6
    with torch.no_grad():
        robust = (model(x).argmax(1) == y) & (model(x_adv).argmax(1) == y)
        clean = (model(x).argmax(1) == y).float().mean().item()
    assert col.iloc[2] == robust.sum().item() / 48
    assert col.iloc[2] <= clean and 0 < col.iloc[2] < 1  # the attack does something, not everything

    # best.pt: the weights of the first epoch with the highest robust accuracy
    best = torch.load(run.best_checkpoint_path, weights_only=True)
    best_epoch = int(history.loc[col.idxmax(), "epoch"])
    assert best["epoch"] == best_epoch and best["val_robust_accuracy"] == col.max()
    for key, value in states[best_epoch].items():
        assert torch.equal(best["state_dict"][key], value), key

    # robust eval checkpoint=best evaluates best.pt, into eval-best/ (eval/ of model.pt untouched)
    from robust_cli.eval_app import evaluate

    from test_tracking import _compose

    evaluate(_compose("eval", [f"run={run.path}", "checkpoint=best", "attack=fgsm", "norm=linf", "n_examples=10",
                               "lipschitz=false", "search_steps=3"]))
    frame = pd.read_csv(run.best_eval.result("fgsm", "linf").per_sample_path)
    best_model, _ = load_trained_model(run, checkpoint="best")
    x_test, _ = load_split(cfg.dataset, cfg.data, "test")
    with torch.no_grad():
        assert frame["clean_pred"].tolist() == best_model(x_test[:10]).argmax(1).tolist()
    assert not run.eval.path.exists()

    # killed after epoch 2 and resumed: the same history, last.pt, best.pt and model.pt, bit for bit
    resumed, _ = _train(tmp_path, "resumed", stop_after=2)
    a, b = run.read_history(), resumed.read_history()
    pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"), check_exact=True)
    for path in ("best_checkpoint_path", "model_path"):
        left = torch.load(getattr(run, path), weights_only=True)["state_dict"]
        right = torch.load(getattr(resumed, path), weights_only=True)["state_dict"]
        assert all(torch.equal(left[k], right[k]) for k in left), path


@pytest.mark.parametrize("extra, message", [
    (["dataset.val_size=0"], "needs a validation split"),
    (["val_attack=deepfool"], "is a minimal-norm attack"),
    (["val_attack=nope"], "val_attack=nope: not an attack"),
    (["val_attack=fgm", "val_norm=linf"], "does not support val_norm=linf"),
    (["+val_options.stepz=3"], "val_options.stepz: pgd has no such option"),
    (["+val_options.steps=0"], "val_options.steps=0"),
    (["val_eps=null"], "needs val_eps > 0"),
])
def test_refusals_before_anything_is_written(tmp_path, extra, message):
    from robust_cli.rundir import RunDir
    from robust_cli.training.loop import fit

    val = [o for o in VAL if not (o.startswith("+val_options") and any("val_options" in e for e in extra))]
    overrides = [*BASE, *val, *extra, f"run_dir={tmp_path / 'run'}"]
    with pytest.raises(UserError, match=message):
        fit(_cfg(overrides), RunDir(tmp_path / "run"), overrides)
    assert not (tmp_path / "run").exists()


def test_val_norm_spellings_are_canonical():
    assert _cfg([*BASE, *VAL, "val_norm=inf"]).val_norm == "linf"
