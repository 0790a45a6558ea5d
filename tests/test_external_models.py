"""``robust eval model=<kind>``: a model trained by ``robust train``, exported as TorchScript and as a factory +
state dict, gives the same per-image results through every path; every refusal is one line.

The quickstart is trained with ``model=mlp``: LeNet-5's first conv (models/input_grad_conv.py) computes its
input gradient by a CPU fast path that a TorchScript trace does not record, so a traced LeNet-5 agrees with
the original only to the last bits of its gradients (FGSM's results still match; DeepFool's need not).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch

from robust_cli.cli import expand_model_shorthand
from robust_cli.errors import UserError

ATTACKS = ["attack=[fgsm,deepfool]", "norm=linf", "n_examples=24", "batch_size=24", "lipschitz=false",
           "search_steps=6"]
FACTORY = """
from robust_cli.models.mlp import MLP


def make_body():
    return MLP(in_shape=(1, 8, 8), num_classes=10, **{opts})


def make_wrong():
    return MLP(in_shape=(1, 8, 8), num_classes=7)
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A one-epoch quickstart MLP run, its TorchScript export, its body's state dict and a factory module."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from robust_cli.config import register_configs
    from robust_cli.rundir import RunDir
    from robust_cli.training.checkpoint import load_trained_model
    from robust_cli.training.loop import fit

    tmp = tmp_path_factory.mktemp("external")
    register_configs()
    GlobalHydra.instance().clear()
    overrides = ["experiment=quickstart", "model=mlp", "epochs=1", "device=cpu", f"out_dir={tmp / 'out'}"]
    with initialize_config_module("robust_cli.conf", version_base=None):
        cfg = compose("train", overrides=overrides)
    GlobalHydra.instance().clear()
    run = RunDir.of_train(cfg, overrides)
    fit(cfg, run, overrides)
    model, train_cfg = load_trained_model(run)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        torch.jit.trace(model, torch.rand(2, 1, 8, 8)).save(str(tmp / "model_ts.pt"))
    torch.save(model.body.state_dict(), tmp / "body.pt")
    torch.save(model, tmp / "pickled.pt")  # a whole pickled module: loading it would run code
    opts = {k: v for k, v in train_cfg.model.items() if k not in ("_target_", "name", "tanh_head")}
    (tmp / "my_models.py").write_text(FACTORY.replace("{opts}", repr(dict(opts))))
    return tmp, run, model, train_cfg


def _eval_cfg(overrides: list[str]):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from robust_cli.config import check_config, register_configs
    from robust_cli.norms import canonicalize_config

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("robust_cli.conf", version_base=None):
            cfg = compose("eval", overrides=expand_model_shorthand(overrides))
    finally:
        GlobalHydra.instance().clear()
    check_config(canonicalize_config(cfg))
    return cfg


def _evaluate(overrides: list[str]):
    from robust_cli.eval_app import evaluate

    return evaluate(_eval_cfg(overrides))


def _results(directory: Path) -> dict[str, tuple[pd.DataFrame, dict]]:
    out = {}
    for pair in ("fgsm-linf", "deepfool-linf"):
        summary = json.loads((directory / pair / "summary.json").read_text())
        for key in ("seconds", "config", "checks"):
            summary.pop(key)
        out[pair] = (pd.read_csv(directory / pair / "per_sample.csv"), summary)
    return out


def test_every_path_gives_the_results_of_the_train_run(exported, monkeypatch):
    tmp, run, model, train_cfg = exported
    monkeypatch.chdir(tmp)  # the factory module is found in the current directory, as with python -m
    out = f"out_dir={tmp / 'out'}"
    mean, std = list(train_cfg.dataset.mean), list(train_cfg.dataset.std)
    _evaluate([f"run={run}", *ATTACKS])
    reference = _results(run.path / "eval")
    assert reference["deepfool-linf"][1]["success_rate"] > 0.5  # a real attack, not a trivial comparison

    ways = {
        "torchscript": ["model=torchscript", "path=model_ts.pt"],
        "python": ["model=python", "factory=my_models:make_body", "path=body.pt", f"mean={mean}", f"std={std}"],
    }
    dirs = {}
    for kind, spec in ways.items():
        _evaluate([*spec, "dataset=digits", out, *ATTACKS])
        found = list((tmp / "out" / "eval" / "external" / kind).iterdir())
        assert len(found) == 1, found
        dirs[kind] = found[0]
        got = _results(found[0])
        for pair, (frame, summary) in reference.items():
            pd.testing.assert_frame_equal(got[pair][0], frame, check_exact=True)
            assert got[pair][1] == summary, (kind, pair)
        record = json.loads((found[0] / "model.json").read_text())
        assert record["kind"] == kind and record["dataset"] == "digits" and len(record["sha256"]) == 64
        assert (found[0] / "error_curves.png").is_file() and (found[0] / "summary.csv").is_file()

    # the same spec finds the same directory (and reuses its results); another normalisation is another one
    _evaluate([*ways["python"], "dataset=digits", out, *ATTACKS])
    assert list((tmp / "out" / "eval" / "external" / "python").iterdir()) == [dirs["python"]]
    other = [*ways["python"][:3], "mean=[0.0]", "std=[1.0]", "dataset=digits", out, "attack=fgsm", "norm=linf",
             "n_examples=10", "lipschitz=false"]
    _evaluate(other)
    assert len(list((tmp / "out" / "eval" / "external" / "python").iterdir())) == 2


@pytest.mark.parametrize("spec, message", [
    (["model=torchscript", "path=body.pt"], "is not a TorchScript archive"),
    (["model=python", "factory=my_models:make_body", "path=model_ts.pt"], "is a TorchScript archive"),
    (["model=python", "factory=my_models:make_body", "path=pickled.pt"], "a pickle that would run code"),
    (["model=python", "factory=no_such_pkg.models:make"], "cannot import no_such_pkg.models"),
    (["model=python", "factory=my_models:missing"], "has no callable missing"),
    (["model=python", "factory=my_models"], "expected pkg.module:function"),
    (["model=python", "factory=my_models:make_wrong"], "needs logits [2, 10]"),
    (["model=python", "factory=my_models:make_body", "path=body.pt", "mean=[0.5]"], "give both mean= and std="),
    (["model=python", "factory=my_models:make_body", "in_shape=[3,8,8]"], "holds images [1, 8, 8]"),
    (["model=torchscript", "path=model_ts.pt", "name=resnet18"], "model=torchscript takes no name="),
    (["model=torchscript", "path=nowhere.pt"], "no such file"),
    (["model=torchvision", "name=not_a_net", "path=body.pt"], "not a torchvision classification model"),
    (["model=robustbench", "name=Standard", "path=body.pt"], "no RobustBench model Standard for dataset=digits"),
    (["model=lenet5", "path=body.pt"], "robust eval takes model=torchscript"),
    (["model=torchscript", "path=model_ts.pt", "certify=[lipschitz,ibp]"],
     "certify= bounds the project's architectures (run=<dir>), not model=torchscript"),
])
def test_refusals_are_one_line(exported, monkeypatch, spec, message):
    tmp = exported[0]
    monkeypatch.chdir(tmp)
    before = sorted(p for p in tmp.rglob("*"))
    with pytest.raises(UserError) as err:
        _evaluate([*spec, "dataset=digits", f"out_dir={tmp / 'out'}", "attack=fgsm", "norm=linf", "n_examples=5"])
    assert message in str(err.value) and "\n" not in str(err.value)
    assert sorted(p for p in tmp.rglob("*") if "__pycache__" not in str(p)) == \
        [p for p in before if "__pycache__" not in str(p)]  # a refusal writes nothing


def test_an_out_dir_inside_a_run_directory_is_refused(exported, monkeypatch):
    tmp, run = exported[0], exported[1]
    monkeypatch.chdir(tmp)
    before = sorted(run.path.rglob("*"))
    with pytest.raises(UserError) as err:
        _evaluate(["model=torchscript", "path=model_ts.pt", "dataset=digits", f"out_dir={run.path / 'sub'}",
                   "attack=fgsm", "norm=linf", "n_examples=5"])
    assert "puts the results inside the run directory" in str(err.value) and str(run.path) in str(err.value)
    assert "\n" not in str(err.value)
    assert sorted(run.path.rglob("*")) == before  # nothing written into the run


def test_refusals_need_a_dataset_and_one_target(exported):
    run = exported[1]
    with pytest.raises(UserError, match="needs dataset=<name>"):
        _evaluate(["model=torchscript", "path=x.pt", "attack=fgsm", "norm=linf"])
    with pytest.raises(UserError, match="give run= or model=, not both"):
        _evaluate([f"run={run}", "model=torchscript", "path=x.pt", "dataset=digits", "attack=fgsm", "norm=linf"])
    with pytest.raises(UserError, match="dataset=digits is for model=<kind>"):
        _evaluate([f"run={run}", "dataset=digits", "attack=fgsm", "norm=linf"])
    with pytest.raises(UserError, match="holds no checkpoints/best.pt: it was trained without val_attack="):
        _evaluate([f"run={run}", "checkpoint=best", "attack=fgsm", "norm=linf"])
    with pytest.raises(UserError, match="checkpoint=best is for run=<dir>"):
        _evaluate(["model=torchscript", "path=x.pt", "dataset=digits", "checkpoint=best", "attack=fgsm", "norm=linf"])
    with pytest.raises(UserError, match="nothing to evaluate"):
        _evaluate(["attack=fgsm", "norm=linf"])


@pytest.mark.slow  # a subprocess (~10 s on a loaded machine); the messages themselves are checked above
def test_the_command_line_refuses_a_pickle_in_one_line(exported):
    from cli_helpers import robust

    tmp = exported[0]
    res = robust("eval", "model=python", "factory=my_models:make_body", "path=pickled.pt", "dataset=digits",
                 "attack=fgsm", "norm=linf", f"out_dir={tmp / 'out2'}", cwd=tmp)
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("robust: error: cannot read path=pickled.pt"), res.stderr
    assert not (tmp / "out2").exists()


def test_shorthand_only_where_a_model_is_given():
    assert expand_model_shorthand(["run=x", "name=y"]) == ["run=x", "name=y"]
    assert expand_model_shorthand(["model=python", "factory=a.b:c", "path=w.pt", "mean=[0.5]", "norm=l2"]) == [
        "model.kind=python", "model.factory=a.b:c", "model.path=w.pt", "model.mean=[0.5]", "norm=l2"]
    assert expand_model_shorthand(["-m", "model=torchscript,python"]) == ["-m", "model.kind=torchscript,python"]


def _npz(tmp_path: Path, channels: int = 3, side: int = 8) -> Path:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(6, channels, side, side, generator=gen).numpy()
    y = torch.randint(0, 10, (6,), generator=gen).numpy()
    path = tmp_path / "tiny.npz"
    import numpy as np

    np.savez(path, x_train=x, y_train=y, x_test=x, y_test=y)
    return path


@pytest.mark.slow  # two ResNet-18s (~5 s idle, ~19 s on a loaded 2-core machine)
def test_torchvision_matches_the_same_weights_through_a_factory(tmp_path, monkeypatch):
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    torch.save({"state_dict": net.state_dict()}, tmp_path / "resnet18_weights.pt")
    (tmp_path / "tv_factory.py").write_text("import torchvision\n\n\ndef make():\n"
                                            "    return torchvision.models.resnet18(num_classes=10)\n")
    monkeypatch.chdir(tmp_path)
    data = [f"dataset.path={_npz(tmp_path)}", "dataset=npz", "dataset.in_shape=[3,8,8]",
            "dataset.mean=[0.5,0.5,0.5]", "dataset.std=[0.25,0.25,0.25]"]
    common = [*data, f"out_dir={tmp_path / 'out'}", "attack=fgsm", "norm=linf", "n_examples=6",
              "lipschitz=false", "search_steps=4"]
    _evaluate(["model=torchvision", "name=resnet18", "path=resnet18_weights.pt", *common])
    _evaluate(["model=python", "factory=tv_factory:make", "path=resnet18_weights.pt", *common])
    frames = [pd.read_csv(next((tmp_path / "out/eval/external" / kind).iterdir()) / "fgsm-linf/per_sample.csv")
              for kind in ("torchvision", "python")]
    pd.testing.assert_frame_equal(frames[0], frames[1], check_exact=True)
    with torch.no_grad():  # and the predictions are those of the network itself
        x = torch.from_numpy(__import__("numpy").load(tmp_path / "tiny.npz")["x_test"])
        assert frames[0]["clean_pred"].tolist() == net(x).argmax(1).tolist()


def test_robustbench_layout_loads_without_the_package(tmp_path, monkeypatch):
    """A checkpoint in RobustBench's layout (``{"state_dict": {"module.<key>": tensor}}``) of their WRN; a
    small WRN-10-1 stands in for Standard's WRN-28-10 (the same code, see the slow test below)."""
    from robust_cli.data import DatasetInfo
    from robust_cli.models import robustbench_wrn
    from robust_cli.models.external import load_external

    torch.manual_seed(0)
    net = robustbench_wrn.RobustBenchWideResNet(depth=10, widen_factor=1).eval()
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "Tiny.pt")
    monkeypatch.setitem(robustbench_wrn.BUILTIN, ("cifar10", "Linf", "Tiny"),
                        lambda: robustbench_wrn.RobustBenchWideResNet(10, 1, 10))
    info = DatasetInfo(name="cifar10", in_shape=(3, 32, 32), num_classes=10, mean=(0.5,) * 3, std=(0.25,) * 3)
    try:
        import robustbench  # noqa: F401
        pytest.skip("robustbench installed: it, not the built-in table, names the architectures")
    except ImportError:
        pass
    model = load_external({"kind": "robustbench", "name": "Tiny", "path": str(tmp_path / "Tiny.pt"),
                           "threat_model": "Linf"}, info)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), net(x))  # no normalisation added: RobustBench models take [0,1]
    with pytest.raises(UserError, match="no RobustBench model Tiny for dataset=cifar10 threat_model=L2"):
        load_external({"kind": "robustbench", "name": "Tiny", "path": str(tmp_path / "Tiny.pt"),
                       "threat_model": "L2"}, info)


@pytest.mark.slow
def test_robustbench_standard_layout(tmp_path):
    """Standard (WRN-28-10) in RobustBench's layout loads strictly and computes what the network does."""
    from robust_cli.data import DatasetInfo
    from robust_cli.models import robustbench_wrn
    from robust_cli.models.external import load_external

    net = robustbench_wrn.BUILTIN[("cifar10", "Linf", "Standard")]().eval()
    assert sum(p.numel() for p in net.parameters()) == 36_479_194  # WRN-28-10 on CIFAR-10
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "Standard.pt")
    info = DatasetInfo(name="cifar10", in_shape=(3, 32, 32), num_classes=10, mean=(0.5,) * 3, std=(0.25,) * 3)
    model = load_external({"kind": "robustbench", "name": "Standard", "path": str(tmp_path / "Standard.pt"),
                           "threat_model": "Linf"}, info)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), net(x))


def test_targeted_eval_and_per_class_in_the_summary(exported, monkeypatch):
    tmp = exported[0]
    monkeypatch.chdir(tmp)
    spec = ["model=torchscript", "path=model_ts.pt", "dataset=digits", f"out_dir={tmp / 'out_t'}"]
    _evaluate([*spec, "attack=[fgsm,pgd]", "attack.pgd.steps=5", "norm=linf", "targeted=true", "n_examples=20",
               "lipschitz=false", "search_steps=5"])
    (directory,) = (tmp / "out_t" / "eval" / "external" / "torchscript").iterdir()
    assert sorted(p.name for p in directory.iterdir() if p.is_dir()) == ["fgsm-targeted-linf", "pgd-targeted-linf"]
    frame = pd.read_csv(directory / "pgd-targeted-linf" / "per_sample.csv")
    summary = json.loads((directory / "pgd-targeted-linf" / "summary.json").read_text())
    assert (frame["target"] != frame["label"]).all()
    hit = frame["distance"].between(1e-12, 1e9)
    assert hit.any() and (frame.loc[hit, "adv_pred"] == frame.loc[hit, "target"]).all()
    assert sum(s["n"] for s in summary["per_target"].values()) == int((frame["label"] == frame["clean_pred"]).sum())
    assert sum(s["n"] for s in summary["per_class"].values()) == 20
    for label, stats in summary["per_class"].items():
        mine = frame[frame["label"] == int(label)]
        assert stats["clean_error"] == pytest.approx((mine["clean_pred"] != mine["label"]).mean())
    with pytest.raises(UserError, match="attack deepfool has no targeted option"):
        _evaluate([*spec, "attack=deepfool", "norm=linf", "targeted=true"])
