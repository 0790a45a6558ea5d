"""The data-set registry: one loader module (robust_cli/data/sets/) and one YAML (conf/dataset/) per data set,
with the robust-accuracy thresholds in the YAML; old run directories without the new keys still evaluate."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from cli_helpers import only_run_dir, robust
from omegaconf import OmegaConf

from robust_cli import io
from robust_cli.data import load_split
from robust_cli.data.sets import REGISTRY_KEYS, list_datasets, loader_of, loaders, registry_entry, thresholds_of
from robust_cli.errors import UserError
from robust_cli.norms import NORMS

REPO = Path(__file__).resolve().parents[1]
DATA = OmegaConf.create({"root": "unused", "download": False})
NAMES = ("cifar10", "cifar100", "digits", "fashion_mnist", "mnist", "npz", "svhn")  # the shipped ones


def test_registry_lists_every_yaml_and_every_yaml_names_its_own_registered_loader(hydra_compose):
    assert set(NAMES) <= set(list_datasets())  # a new data set is a module + a YAML: no list here to extend
    named = set()
    for name in list_datasets():
        cfg = hydra_compose("train", overrides=[f"dataset={name}"]).dataset
        assert cfg.name == name
        assert cfg.loader == f"robust_cli.data.sets.{name}.load"  # the module of the same name
        assert cfg.loader in loaders() and loader_of(cfg)[1] is loaders()[cfg.loader]
        assert (REPO / "robust_cli" / "data" / "sets" / f"{name}.py").is_file()
        assert set(cfg.thresholds) <= set(NORMS)
        assert all(v is None or all(t > 0 for t in v) for v in cfg.thresholds.values())
        named.add(cfg.loader)
    assert named == set(loaders())  # no registered loader without its YAML


#: files that may name a data set, and why
NAMING_ALLOWED = {"robust_cli/models/robustbench_wrn.py": "RobustBench's model zoo is keyed by its own data-set names"}


def test_no_code_outside_the_registry_switches_on_a_dataset_name():
    literal = re.compile(r"[\"'](" + "|".join(NAMES) + r")[\"']")
    sets = REPO / "robust_cli" / "data" / "sets"
    hits = [f"{p.relative_to(REPO)}: {m.group(0)}" for p in (REPO / "robust_cli").rglob("*.py")
            if sets not in p.parents and str(p.relative_to(REPO)) not in NAMING_ALLOWED
            for m in literal.finditer(p.read_text())]
    assert hits == []


def test_thresholds_per_dataset(hydra_compose):
    def of(name):
        return thresholds_of(hydra_compose("train", overrides=[f"dataset={name}"]).dataset)

    mnist, cifar = of("mnist"), of("cifar10")
    assert mnist == {"linf": [0.2, 0.25, 0.3, 0.325, 0.35], "l2": [1.0, 1.5, 2.0, 2.5, 3.0],
                     "l1": [2.5, 5.0, 7.5, 10.0, 12.5]}  # thesis Tables 5.2-5.4; their l0 is lost
    assert cifar == {"linf": [k / 255 for k in (2, 4, 6, 8, 10)], "l2": [0.25, 0.5, 0.75, 1.0, 1.25],
                     "l1": [5.0, 8.75, 12.5, 16.25, 20.0], "l0": [1.0, 3.0, 5.0, 8.0, 12.0]}  # exact, Tables 5.6-5.8
    assert of("digits") == {  # MNIST's rescaled from 784 to 64 values, as documented in digits.yaml
        "linf": mnist["linf"], "l2": [round(t * math.sqrt(64 / 784), 4) for t in mnist["l2"]],
        "l1": [round(t * 64 / 784, 4) for t in mnist["l1"]]}
    # same shapes as CIFAR-10 / MNIST, but no paper gives their thresholds: none, not someone else's
    for name in ("cifar100", "svhn", "fashion_mnist", "npz"):
        assert of(name) == {}, name


def test_eval_overrides_merge_per_norm(hydra_compose):
    dataset = hydra_compose("train", overrides=["dataset=mnist"]).dataset
    cfg = hydra_compose("eval", overrides=["run=x", "thresholds.l2=[0.5,1.0]", "thresholds.linf=[]",
                                           "thresholds.l0=[3,5]"])
    assert thresholds_of(dataset, cfg.thresholds) == {
        "l2": [0.5, 1.0], "l1": [2.5, 5.0, 7.5, 10.0, 12.5], "l0": [3.0, 5.0]}  # linf dropped, l1 kept
    assert thresholds_of(dataset, hydra_compose("eval", overrides=["run=x"]).thresholds) == thresholds_of(dataset)
    svhn = hydra_compose("train", overrides=["dataset=svhn", "dataset.thresholds.l2=[0.1]"]).dataset
    assert thresholds_of(svhn) == {"l2": [0.1]}
    assert thresholds_of({"name": "npz"}, {"inf": [0.1]}) == {"linf": [0.1]}  # spellings canonicalised
    with pytest.raises(UserError, match="thresholds.l3"):
        thresholds_of({"name": "npz"}, {"l3": [1.0]})


def test_only_registered_loaders_are_called():
    cfg = {"name": "evil", "loader": "os.system", "in_shape": [1, 8, 8], "num_classes": 10, "val_size": 0}
    with pytest.raises(UserError, match="not a registered loader"):
        load_split(OmegaConf.create(cfg), DATA, "test")
    cfg["loader"] = "robust_cli.data.sets._torchvision.read_torchvision"  # importable, but not a loader
    with pytest.raises(UserError, match="not a registered loader"):
        load_split(OmegaConf.create(cfg), DATA, "test")
    with pytest.raises(UserError, match="unknown dataset 'evil'"):
        load_split(OmegaConf.create({**cfg, "loader": None}), DATA, "test")
    assert registry_entry("../train") is None and registry_entry("evil") is None


def test_old_style_dataset_config_falls_back_to_the_registry_entry(hydra_compose):
    new = hydra_compose("train", overrides=["dataset=digits"]).dataset
    old = {k: v for k, v in OmegaConf.to_container(new).items() if k not in REGISTRY_KEYS}
    x_old, y_old = load_split(OmegaConf.create(old), DATA, "test")
    x_new, y_new = load_split(new, DATA, "test")
    assert torch.equal(x_old, x_new) and torch.equal(y_old, y_new)
    assert thresholds_of(old) == thresholds_of(new) and thresholds_of(old)["l2"][0] == 0.2857
    assert thresholds_of({**old, "thresholds": {}}) == {}  # present but empty: none, no fallback


def test_eval_threshold_override_reaches_summary_csv_of_an_old_style_run(tmp_path):
    """Train a tiny digits run, strip the new keys from its stored configs (a run written before the registry),
    evaluate with ``thresholds.l2=[0.5,1.0]``: l2 gets those columns, linf the registry's digits ones."""
    res = robust("train", "experiment=quickstart", "epochs=1", "max_batches_per_epoch=3", f"out_dir={tmp_path}",
                 cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    run = only_run_dir(tmp_path)
    blob = io.torch_load(run / "model.pt")
    for key in REGISTRY_KEYS:
        del blob["dataset_cfg"][key]
    io.torch_save(run / "model.pt", blob)
    stored = OmegaConf.load(run / "config.yaml")
    for key in REGISTRY_KEYS:
        stored.dataset.pop(key)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(stored))

    res = robust("eval", f"run={run}", "attack=[fgm,fgsm]", "norm=[l2,linf]", "n_examples=10", "search_steps=4",
                 "lipschitz=false", "thresholds.l2=[0.5,1.0]", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    table = pd.read_csv(run / "eval" / "summary.csv").set_index("attack")
    acc = [c for c in table.columns if c.startswith("robust_acc@")]
    assert sorted(acc, key=lambda c: float(c.split("@")[1])) == [
        "robust_acc@0.2", "robust_acc@0.25", "robust_acc@0.3", "robust_acc@0.325", "robust_acc@0.35",
        "robust_acc@0.5", "robust_acc@1"]
    l2 = table.loc["fgm"]
    assert l2["norm"] == "l2" and l2[["robust_acc@0.5", "robust_acc@1"]].notna().all()
    assert l2[[c for c in acc if c not in ("robust_acc@0.5", "robust_acc@1")]].isna().all()
    per = pd.read_csv(run / "eval" / "fgm-l2" / "per_sample.csv")
    assert l2["robust_acc@1"] == pytest.approx(1 - (per["distance"] <= 1.0).mean())
    linf = table.loc["fgsm"]
    assert linf[["robust_acc@0.2", "robust_acc@0.35"]].notna().all() and pd.isna(linf["robust_acc@0.5"])


def test_torchvision_loaders_pass_the_right_arguments(monkeypatch, tmp_path):
    """The shared torchvision reader: ``train=`` and ``targets`` (CIFAR, MNIST), ``split=`` and ``labels``
    (SVHN); a download is tried only when the files are missing and ``data.download`` is true."""
    import numpy as np
    import torchvision

    calls = []

    def fake(labels_attr):
        class Fake:
            def __init__(self, root, download, **kwargs):
                calls.append((root, download, kwargs))
                if not download:
                    raise RuntimeError("Dataset not found")
                self.data = np.zeros((3, 32, 32, 3), np.uint8) if labels_attr == "targets" else np.zeros(
                    (3, 3, 32, 32), np.uint8)
                setattr(self, labels_attr, [1, 2, 3])
        return Fake

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", fake("targets"))
    monkeypatch.setattr(torchvision.datasets, "SVHN", fake("labels"))
    data = OmegaConf.create({"root": str(tmp_path), "download": True})
    for name, kwargs in (("cifar100", {"train": False}), ("svhn", {"split": "test"})):
        calls.clear()
        x, y = load_split(OmegaConf.create({"name": name, "in_shape": [3, 32, 32], "num_classes": 100}), data,
                          "test")
        assert x.shape == (3, 3, 32, 32) and y.tolist() == [1, 2, 3]
        assert calls == [(str(tmp_path), False, kwargs), (str(tmp_path), True, kwargs)]
    with pytest.raises(UserError, match=r"SVHN not found in .*svhn"):
        load_split(OmegaConf.create({"name": "svhn", "in_shape": [3, 32, 32], "num_classes": 10}),
                   OmegaConf.create({"root": str(tmp_path / "other"), "download": False}), "test")
