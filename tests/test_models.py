"""The ``model`` config group: every architecture composes, builds and trains on every input shape.

Known answers come from the papers and closed forms: published parameter counts (rounded as published),
LeNet-5 / MLP counts by hand, the tanh head against its formula, Normalize against ``(x - mean) / std``,
and the ResNeXt mean aggregation against a single-branch model with the same weights.
"""

from __future__ import annotations

import dataclasses
import inspect
from importlib.resources import files
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from torch import nn
from torch.nn import functional as F

from robust_cli.config import register_configs
from robust_cli.data.info import DatasetInfo
from robust_cli.errors import UserError
from robust_cli.models import build_model, list_models, model_schemas
from robust_cli.models.layers import Normalize, PreActBlock, num_parameters
from robust_cli.models.resnext import BranchBlock

CONF_DIR = Path(str(files("robust_cli.conf")))  # the installed config package (conf/)
MODEL_NAMES = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
DATASETS = ["digits", "mnist", "cifar10"]  # in_shape (1,8,8), (1,28,28), (3,32,32)

# The smallest sensible size of each architecture for forward/backward tests (depth kept where it is
# the architecture's identity: ResNet-34 and ResNeXt-34 keep their 34 layers).
SMALL = {
    "mlp": ["model.widths=[16,16]"],
    "lenet5": [],
    "allcnn": ["model.channels=[8,16]"],
    "resnet34": ["model.width=4"],
    "resnext34": ["model.width=4"],
    "preact_resnet18": ["model.width=4"],
    "wrn": ["model.depth=10", "model.widen_factor=1"],
    "nin": ["model.channels=[12,10,8]"],
}

register_configs()


@pytest.fixture(scope="module", autouse=True)
def hydra_conf():
    """Hydra initialised on the installed config package for the whole module; one torch thread."""
    GlobalHydra.instance().clear()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a second thread only adds synchronisation on a shared machine
    with initialize_config_module("robust_cli.conf", version_base=None):
        yield
    torch.set_num_threads(threads)
    GlobalHydra.instance().clear()


def compose_train(model: str, dataset: str = "digits", *extra: str):
    """The ``robust train`` config for ``model=<model> dataset=<dataset>`` plus ``extra`` overrides."""
    overrides = [f"model={model}", f"dataset={dataset}", *extra]
    if not (CONF_DIR / "defense" / "none.yaml").exists():
        overrides.append("~defense")  # the defense group is another room's; not needed to build a model
    return compose("train", overrides=overrides)


def info_of(cfg) -> DatasetInfo:
    d = cfg.dataset
    return DatasetInfo(d.name, tuple(d.in_shape), d.num_classes, tuple(d.mean), tuple(d.std))


def build(model: str, dataset: str = "digits", *extra: str, meta: bool = False):
    cfg = compose_train(model, dataset, *extra)
    info = info_of(cfg)
    if meta:
        with torch.device("meta"):
            return build_model(cfg.model, info), info
    return build_model(cfg.model, info), info


# ---------------------------------------------------------------- the group as a whole


def test_every_yaml_has_a_schema_and_vice_versa():
    assert list_models() == MODEL_NAMES
    expected = {"mlp", "lenet5", "allcnn", "resnet34", "resnext34", "preact_resnet18", "wrn", "nin"}
    assert expected <= set(MODEL_NAMES)


@pytest.mark.parametrize("name", sorted(model_schemas()))
def test_schema_defaults_match_the_body_signature(name):
    """The schema, the YAML file and the body's keyword defaults agree, so a dict missing an option and
    a composed config build the same model."""
    schema = model_schemas()[name]
    fields = {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
              for f in dataclasses.fields(schema)}
    assert fields["name"] == name and fields["tanh_head"] is False
    module, _, cls_name = fields["_target_"].rpartition(".")
    assert module.startswith("robust_cli.models.")
    body_cls = getattr(__import__(module, fromlist=[cls_name]), cls_name)
    params = inspect.signature(body_cls).parameters
    options = {k: v for k, v in fields.items() if k not in ("_target_", "name", "tanh_head")}
    assert set(options) == set(params) - {"in_shape", "num_classes"}
    for key, default in options.items():
        sig_default = params[key].default
        assert (list(sig_default) if isinstance(sig_default, tuple) else sig_default) == default, key
    composed = OmegaConf.to_container(compose_train(name).model)
    assert composed == fields


# ---------------------------------------------------------------- every model on every shape


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_small_model_forward_backward(name, dataset):
    torch.manual_seed(0)
    model, info = build(name, dataset, *SMALL.get(name, []))
    k = info.num_classes
    x = torch.rand(4, *info.in_shape, requires_grad=True)
    y = torch.arange(4) % k
    logits = model(x)
    assert logits.shape == (4, k)
    assert torch.isfinite(logits).all()
    F.cross_entropy(logits, y).backward()
    # every parameter takes part in the forward pass, and the input gradient (what attacks use) exists
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    assert x.grad is not None and x.grad.abs().sum() > 0
    # eval mode is deterministic (dropout off, BatchNorm on running statistics)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_double_backprop_for_the_lipschitz_penalty(name):
    """``lip``/``tulip`` differentiate the input-gradient norm (create_graph=True) back to the weights; the
    second-order gradient must exist and agree with a finite difference along a random weight direction."""
    torch.manual_seed(0)
    shallow = {"resnet34": ["model.blocks=[1,1]"], "resnext34": ["model.blocks=[1,1]"],
               "preact_resnet18": ["model.blocks=[1,1]"]}.get(name, [])
    model, info = build(name, "digits", *SMALL.get(name, []), *shallow)
    model.eval()  # fixed BatchNorm statistics and no dropout: a deterministic function of the weights
    model.double()
    x = torch.rand(3, *info.in_shape, dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    params = [p for p in model.parameters() if p.requires_grad]

    def penalty() -> torch.Tensor:
        xr = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(xr), y), xr, create_graph=True)
        return g.flatten(1).norm(dim=1).max()

    grads = torch.autograd.grad(penalty(), params, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    direction = [torch.randn_like(p) for p in params]
    analytic = sum(((g if g is not None else torch.zeros_like(d)) * d).sum() for g, d in zip(grads, direction))
    # tiny step: the penalty jumps where a ReLU changes sign, so a wide step could straddle a kink
    h = 1e-8
    with torch.no_grad():
        for p, d in zip(params, direction):
            p.add_(h * d)
    plus = penalty().detach()
    with torch.no_grad():
        for p, d in zip(params, direction):
            p.sub_(2 * h * d)
    minus = penalty().detach()
    assert float(analytic) == pytest.approx(float((plus - minus) / (2 * h)), rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_full_default_config_builds(name, dataset):
    """The full-size default builds for each shape; on the meta device, so shapes propagate at no cost."""
    model, info = build(name, dataset, meta=True)
    with torch.device("meta"):
        out = model(torch.zeros(2, *info.in_shape))
    assert out.shape == (2, info.num_classes)


def test_cifar100_gets_100_logits_and_resnext_cardinality_4():
    model, info = build("resnext34", "cifar100", "model.width=4", "model.cardinality=4")
    assert info.num_classes == 100
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 100)
    blocks = [m for m in model.modules() if isinstance(m, BranchBlock)]
    assert len(blocks) == 15 and all(b.conv1.groups == 4 for b in blocks)


# ---------------------------------------------------------------- parameter counts (no forward passes)

# (model, overrides, published figure, decimals it was published to)
PUBLISHED = [
    ("resnet34", [], 21.3e6, 1e5),  # CIFAR ResNet-34: 21.3M
    ("preact_resnet18", [], 11.2e6, 1e5),  # PreAct-ResNet-18: 11.2M
    ("wrn", [], 36.5e6, 1e5),  # WRN-28-10: 36.5M (Zagoruyko & Komodakis, Table 4)
    ("allcnn", ["model.batchnorm=false"], 1.4e6, 1e5),  # All-CNN-C: 1.4M (Springenberg et al., Table 2)
    ("nin", [], 0.97e6, 1e4),  # CIFAR-10 Network-in-Network: 0.97M
]


@pytest.mark.parametrize(("name", "overrides", "published", "unit"), PUBLISHED)
def test_parameter_count_matches_published_figure(name, overrides, published, unit):
    model, _ = build(name, "cifar10", *overrides, meta=True)
    n = num_parameters(model)
    assert round(n / unit) * unit == pytest.approx(published), n


def test_lenet5_and_mlp_parameter_counts_by_hand():
    lenet, _ = build("lenet5", "mnist", meta=True)
    # conv 1->6 5x5, conv 6->16 5x5, FC 16*5*5 -> 120 -> 84 -> 10 (the MNIST map is 5x5 after two pools)
    expected = (6 * 25 + 6) + (16 * 6 * 25 + 16) + (400 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)
    assert num_parameters(lenet) == expected == 61706
    mlp, _ = build("mlp", "mnist", meta=True)
    assert num_parameters(mlp) == (784 * 1000 + 1000) + 2 * (1000 * 1000 + 1000) + (1000 * 10 + 10)


@pytest.mark.parametrize(("name", "depth"), [("resnet34", 34), ("resnext34", 34), ("preact_resnet18", 18)])
def test_depth_counts_weight_layers_on_the_main_path(name, depth):
    model, _ = build(name, "cifar10", meta=True)
    layers = [n for n, m in model.named_modules()
              if isinstance(m, (nn.Conv2d, nn.Linear)) and "shortcut" not in n]
    assert len(layers) == depth


# ---------------------------------------------------------------- shared layers


def test_normalize_is_the_first_layer():
    torch.manual_seed(0)
    model, info = build("lenet5", "cifar10")
    assert isinstance(next(iter(model.children())), Normalize)
    model.eval()
    x = torch.rand(3, *info.in_shape)
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.body((x - mean) / std))
        assert not torch.allclose(model(x), model.body(x))  # the normalisation is not a no-op


def test_tanh_head_bounds_logits_and_has_no_bn_affine():
    torch.manual_seed(0)
    model, info = build("mlp", "digits", "model.widths=[16]", "model.tanh_head=true")
    head = model.head
    assert head.bn.affine is False and list(head.bn.parameters()) == []
    assert [n for n, _ in head.named_parameters()] == ["t"]
    with torch.no_grad():
        head.t.fill_(0.3)
    x = torch.rand(16, *info.in_shape)
    # train mode: BatchNorm on batch statistics, then t * tanh(z / t)
    z = model.body(model.normalize(x))
    z_hat = (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + head.bn.eps)
    out = model(x)
    torch.testing.assert_close(out, 0.3 * torch.tanh(z_hat / 0.3))
    assert out.abs().max() <= 0.3
    # huge inputs saturate the bound, but never cross it
    big = model(x * 1e4 - 5e3)
    assert big.abs().max() <= 0.3 + 1e-6 and big.abs().max() > 0.29
    out.sum().backward()
    assert head.t.grad is not None and head.t.grad != 0


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_preact_block_state_dict_keys(dropout):
    """PreAct-ResNet and WRN share this block; its keys are those of checkpoints saved before the merge."""
    core = {f"{bn}.{k}" for bn in ("bn1", "bn2")
            for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    core |= {"conv1.weight", "conv2.weight"}
    assert set(PreActBlock(4, 4, 1, dropout=dropout).state_dict()) == core
    assert set(PreActBlock(4, 8, 2, dropout=dropout).state_dict()) == core | {"shortcut.weight"}


# ---------------------------------------------------------------- ResNeXt: branches aggregated by the mean


def _tile_branches(one: nn.Module, many: nn.Module, c: int) -> None:
    """Copy a cardinality-1 ResNeXt into a cardinality-``c`` one with every branch equal to the single one."""
    src, dst = one.state_dict(), many.state_dict()
    for key, value in dst.items():
        s = src[key]
        if value.shape == s.shape:
            value.copy_(s)
        else:  # branch-stacked conv weights [c*C, ...] and BatchNorm vectors [c*C]
            assert value.shape[0] == c * s.shape[0], key
            value.copy_(s.repeat(c, *([1] * (s.dim() - 1))))


@pytest.mark.parametrize("c", [2, 3])
def test_resnext_branches_are_averaged(c):
    torch.manual_seed(0)
    one, _ = build("resnext34", "digits", "model.width=4", "model.cardinality=1", "model.blocks=[1,1]")
    many, info = build("resnext34", "digits", "model.width=4", f"model.cardinality={c}", "model.blocks=[1,1]")
    with torch.no_grad():
        for m in one.modules():  # non-trivial BatchNorm statistics, so the check is not on zeros
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    _tile_branches(one, many, c)
    x = torch.rand(5, *info.in_shape)
    one.eval()
    many.eval()
    with torch.no_grad():
        torch.testing.assert_close(many(x), one(x))  # mean of c identical branches == one branch

    # and in one block: relu(x + mean_k branch_k) == relu(x + branch), which a sum (c * branch) would not be
    block_1, block_c = BranchBlock(4, 1).eval(), BranchBlock(4, c).eval()
    with torch.no_grad():
        for m in block_1.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.bias.uniform_(-0.5, 0.5)
    _tile_branches(block_1, block_c, c)
    h = torch.randn(3, 4, 6, 6)
    with torch.no_grad():
        branch = block_1.bn1(block_1.conv1(F.relu(block_1.bn0(block_1.conv0(h)))))
        torch.testing.assert_close(block_c(h), F.relu(h + branch))
        assert not torch.allclose(block_c(h), F.relu(h + c * branch))


# ---------------------------------------------------------------- config errors fail early


def test_misspelled_option_fails_at_compose_time(tmp_path):
    with pytest.raises(Exception, match="widthz"):
        compose_train("mlp", "digits", "model.widthz=[8]")
    # Hydra's `+` adds a key even to a structured node; build_model re-checks against the schema
    cfg = compose_train("mlp", "digits", "+model.widthz=[8]")
    with pytest.raises(UserError, match="widthz"):
        build_model(cfg.model, info_of(cfg))
    with pytest.raises(Exception, match="dropout"):
        compose_train("mlp", "digits", "model.dropout=lots")
    # a YAML file with a typo, composed against the registered schema
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mlp_typo.yaml").write_text("defaults:\n  - mlp_schema\nwidthz: [8]\n")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(tmp_path), version_base=None):
            assert compose(overrides=["+model=mlp_schema"]).model.name == "mlp"  # the stored schema
            with pytest.raises(Exception, match="widthz"):
                compose(overrides=["+model=mlp_typo"])
    finally:
        GlobalHydra.instance().clear()
        initialize_config_module("robust_cli.conf", version_base=None)


def test_build_model_from_plain_dict_validates():
    info = DatasetInfo("digits", (1, 8, 8), 10, (0.3,), (0.4,))
    model = build_model({"name": "mlp", "widths": [8]}, info)  # missing options take the defaults
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(UserError, match="widthz"):
        build_model({"name": "mlp", "widthz": [8]}, info)
    with pytest.raises(UserError, match="unknown model"):
        build_model({"name": "resnet1000"}, info)
    with pytest.raises(UserError, match="not a registered"):  # a checkpoint cannot name arbitrary code
        build_model({"name": "mlp", "_target_": "os.system"}, info)
    with pytest.raises(UserError, match="6n"):
        build_model({"name": "wrn", "depth": 27}, info)
