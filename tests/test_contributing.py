"""CONTRIBUTING.md's claims, tried: a new attack is one module + one YAML, and so is a new data set.

The attack test copies the worked example's two code blocks out of CONTRIBUTING.md into the source tree,
runs ``robust eval`` with it as a user would, checks the attack against the exact linear-model optimum,
and removes the files again (also when the test fails). The data-set test adds a module + YAML the same way
(an offline stand-in, since the doc's example reads KMNIST from disk) and trains on it.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import robust

# the worked examples are written into the package tree for the test's duration: no other test may enumerate
# conf/ or the registries meanwhile (make test runs these after the parallel rest)
pytestmark = pytest.mark.serial

REPO = Path(__file__).resolve().parents[1]
DOC = (REPO / "CONTRIBUTING.md").read_text()


def _block(after: str, lang: str) -> str:
    """The first ``lang`` code block after the line mentioning ``after`` in CONTRIBUTING.md."""
    start = DOC.index(after)
    match = re.compile(rf"```{lang}\n(.*?)```", re.S).search(DOC, start)
    assert match, f"no {lang} block after {after!r} in CONTRIBUTING.md"
    return match.group(1)


@pytest.fixture
def added_files():
    """Files written into the tree by a test; removed afterwards whatever happens."""
    written: list[Path] = []
    yield written
    for path in written:
        path.unlink(missing_ok=True)
    for module in [m for m in sys.modules if m.startswith("robust_cli.attacks.mifgsm")]:
        del sys.modules[module]


def _write(added: list[Path], rel: str, text: str) -> Path:
    path = REPO / rel
    assert not path.exists(), f"{rel} exists already: the example would overwrite it"
    added.append(path)
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("contrib")
    res = robust("train", "experiment=quickstart", "epochs=1", f"out_dir={out}", cwd=out)
    assert res.returncode == 0, res.stderr[-2000:]
    return next(p.parent for p in (out / "train").rglob("model.pt"))


def test_the_worked_example_attack_is_one_module_and_one_yaml(added_files, quickstart_run):
    _write(added_files, "robust_cli/attacks/mifgsm.py", _block("`robust_cli/attacks/mifgsm.py`:", "python"))
    _write(added_files, "conf/attack/mifgsm.yaml", _block("`conf/attack/mifgsm.yaml`", "yaml"))

    res = robust("eval", f"run={quickstart_run}", "attack=mifgsm", "norm=linf", "n_examples=20",
                 "attack.mifgsm.decay=0.5", "lipschitz=false", cwd=quickstart_run.parent)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((quickstart_run / "eval" / "mifgsm-linf" / "summary.json").read_text())
    assert summary["config"]["params"] == {"steps": 10, "step_size": 0.1, "decay": 0.5}
    assert summary["success_rate"] > 0.5  # a real attack on a one-epoch model

    bad = robust("eval", f"run={quickstart_run}", "attack=mifgsm", "attack.mifgsm.decy=0.5",
                 cwd=quickstart_run.parent)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "decy" in bad.stderr

    from robust_cli.cli import expand_attack_all

    assert "mifgsm" in expand_attack_all(["attack=all"])[0]

    # on the analytic linear model, two classes: the sign step of the gradient is the optimal linf move
    from linear_reference import make_problem, minimal_distance

    from robust_cli.attacks import list_attacks

    model, x, y = make_problem(n=12, num_classes=2, seed=5)
    opt = minimal_distance(model, x, y, "linf")
    x_adv = list_attacks()["mifgsm"](model, x, y, norm="linf", eps=(opt * 1.01 + 1e-5).float())
    with torch.no_grad():
        assert (model(x_adv).argmax(1) != y).all()
    assert ((x_adv - x).abs().flatten(1).amax(1) <= (opt * 1.01 + 1e-5).float() * (1 + 1e-6)).all()


STANDIN_LOADER = '''"""A stand-in data set for tests/test_contributing.py: 4x4 images, label = the brighter half."""

import numpy as np

from robust_cli.data.sets import register_loader



@register_loader
def load(train: bool, *, root: str, download: bool, path: str | None = None):
    rng = np.random.default_rng(0 if train else 1)
    x = rng.random((200 if train else 50, 4, 4), dtype=np.float32)
    return x, (x[:, :2].mean((1, 2)) > x[:, 2:].mean((1, 2))).astype(np.int64)
'''
STANDIN_YAML = """defaults:
  - dataset_schema
name: zz_contrib
loader: robust_cli.data.sets.zz_contrib.load
in_shape: [1, 4, 4]
num_classes: 2
mean: [0.5]
std: [0.29]
eval_size: 50
thresholds: {l2: [0.1, 0.2]}
"""


def test_a_new_data_set_is_one_module_and_one_yaml(added_files, tmp_path):
    _write(added_files, "robust_cli/data/sets/zz_contrib.py", STANDIN_LOADER)
    _write(added_files, "conf/dataset/zz_contrib.yaml", STANDIN_YAML)
    res = robust("train", "dataset=zz_contrib", "model=mlp", "model.widths=[8]", "epochs=1", "batch_size=50",
                 f"out_dir={tmp_path}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    run = next(p.parent for p in (tmp_path / "train").rglob("model.pt"))
    assert run.parts[-4] == "zz_contrib"
    res = robust("eval", f"run={run}", "attack=fgm", "norm=l2", "lipschitz=false", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((run / "eval" / "fgm-l2" / "summary.json").read_text())
    assert list(summary["robust_accuracy"]) == ["0.1", "0.2"]  # the new data set's own thresholds
