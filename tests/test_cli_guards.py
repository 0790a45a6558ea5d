"""What the CLI guards before and around a job (session 14's review of bad inputs): Ctrl-C before a job starts,
``--cfg job`` on a machine without the data, a ``per_sample.csv`` cut short, and which stored runs a
``robust train`` may resume (``robust_cli.training.same_run``). The one-line refusals themselves are in
``tests/test_bad_inputs.py``'s battery."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from cli_helpers import robust_in_process
from omegaconf import OmegaConf

from robust_cli import cli
from robust_cli.training.same_run import stored_differences


def _quickstart_run(tmp_path) -> Path:
    """A quickstart run (one epoch of two batches) trained under ``tmp_path/out``; its directory."""
    out = tmp_path / "out"
    res = robust_in_process("train", "experiment=quickstart", "epochs=1", "max_batches_per_epoch=2", "device=cpu",
                            f"out_dir={out}")
    assert res.returncode == 0, res.stderr[-2000:]
    return next(p.parent for p in out.glob("train/*/*/*/*/model.pt"))


def test_ctrl_c_before_a_job_starts_is_one_line_and_status_130(monkeypatch, capsys):
    def interrupted(argv):
        raise KeyboardInterrupt  # what Ctrl-C raises while torch and Hydra import

    monkeypatch.setattr(cli, "_main", interrupted)
    assert cli.main(["eval", "run=x", "attack=fgsm"]) == 130
    assert capsys.readouterr().err == "robust: interrupted\n"


def test_cfg_job_shows_a_recipe_without_its_data(tmp_path):
    res = robust_in_process("train", "dataset=mnist", f"data.root={tmp_path}", "--cfg", "job")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "name: mnist" in res.stdout
    assert not any(tmp_path.iterdir())  # nothing downloaded or created
    # a bad value is still refused: only the files are left unchecked
    res = robust_in_process("train", "dataset=mnist", f"data.root={tmp_path}", "epochs=0", "--cfg", "job")
    assert res.returncode == 2 and "epochs=0" in res.stderr


def test_a_cut_per_sample_csv_is_recomputed_not_reused(tmp_path):
    run = _quickstart_run(tmp_path)
    args = ("eval", f"run={run}", "attack=fgsm", "norm=linf", "n_examples=6", "device=cpu", "lipschitz=false")
    assert robust_in_process(*args).returncode == 0
    per_sample = run / "eval" / "fgsm-linf" / "per_sample.csv"
    full = pd.read_csv(per_sample)
    assert len(full) == 6
    per_sample.write_text(per_sample.read_text().splitlines()[0] + "\n")  # the header alone
    res = robust_in_process(*args)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "per_sample.csv holds 0 of its 6 images; recomputing" in res.stderr
    pd.testing.assert_frame_equal(pd.read_csv(per_sample), full)  # the same attack again: the same rows


def test_images_asked_of_a_stored_result_without_them_recompute_it(tmp_path):
    """``save_adversarials=`` on a pair evaluated without images: the same settings again, keeping them (a reuse
    would end with none); the distances are the stored ones."""
    run = _quickstart_run(tmp_path)
    args = ("eval", f"run={run}", "attack=fgsm", "norm=linf", "n_examples=6", "device=cpu", "lipschitz=false")
    assert robust_in_process(*args).returncode == 0
    result = run / "eval" / "fgsm-linf"
    stored = pd.read_csv(result / "per_sample.csv")
    assert not any(result.glob("adversarials*"))
    res = robust_in_process(*args, "save_adversarials=3")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "recomputing it to save them" in res.stderr
    assert any(result.glob("adversarials*"))
    pd.testing.assert_frame_equal(pd.read_csv(result / "per_sample.csv"), stored)
    res = robust_in_process(*args, "save_adversarials=3")  # now they are there: reused
    assert res.returncode == 0 and "already evaluated, reusing" in res.stderr


def test_an_out_dir_a_job_does_not_write_in_is_not_checked(tmp_path):
    """``robust eval run=`` writes into the run, so an ``out_dir`` it never uses (here a file) is no error: an
    evaluation from a read-only folder, with the default ``out_dir=outputs`` there, keeps working."""
    run = _quickstart_run(tmp_path)
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    res = robust_in_process("eval", f"run={run}", "attack=fgsm", "norm=linf", "n_examples=4", "device=cpu",
                            "lipschitz=false", f"out_dir={a_file}")
    assert res.returncode == 0, res.stderr[-2000:]
    res = robust_in_process("train", "experiment=quickstart", "epochs=1", "max_batches_per_epoch=2", "device=cpu",
                            f"run_dir={run}", f"out_dir={a_file}")  # run_dir= given: out_dir unused too
    assert res.returncode == 0 and "already trained" in res.stderr, res.stderr[-2000:]


def test_a_stored_run_is_compared_on_what_decides_the_weights():
    stored = OmegaConf.create({"model": {"name": "lenet5", "channels": [6, 16]}, "epochs": 20, "seed": 0,
                               "dataset": {"name": "npz", "path": "/data/a.npz", "thresholds": {"l2": [1.0]}},
                               "device": "cuda"})
    same = OmegaConf.create({"model": {"name": "lenet5", "channels": [6, 16], "tanh_head": False}, "epochs": 20,
                             "seed": 0, "dataset": {"name": "npz", "path": "a.npz"}, "device": "cpu",
                             "val_options": {}})
    # a key added to the code since (tanh_head, val_options), the data file's path, what only robust eval reads
    # (thresholds) and the device: no change
    assert stored_differences(stored, same) == []
    other = OmegaConf.merge(same, {"model": {"name": "mlp"}, "epochs": 3})
    assert stored_differences(stored, other) == ["model=lenet5 (now mlp)", "epochs=20 (now 3)"]
    wider = OmegaConf.merge(same, {"model": {"channels": [8, 16]}})
    assert stored_differences(stored, wider) == ["model.channels=[6, 16] (now [8, 16])"]
    assert stored_differences(OmegaConf.create({}), other) == []  # a foreign run directory: nothing to compare
