"""Every config file of every group composes against its schema and instantiates."""

from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import get_method

from robust_cli.data import info_of
from robust_cli.models import build_model
from robust_cli.training.optim import build_optimizer
from robust_cli.training.schedules import lr_at

CONF = Path(__file__).resolve().parents[1] / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["dataset", "model", "defense", "optimizer", "schedule", "experiment"])
def test_train_groups_compose_and_instantiate(hydra_compose, group):
    from robust_cli.defenses import build_defense

    names = options(group)
    assert names, f"conf/{group} is empty"
    for name in names:
        cfg = hydra_compose("train", overrides=[f"{group}={name}"])
        info = info_of(cfg.dataset)
        assert len(info.in_shape) == 3 and info.num_classes > 1
        assert callable(build_defense(cfg.defense))
        lrs = [lr_at(e, cfg.optimizer.lr, cfg.schedule, cfg.epochs) for e in range(cfg.epochs)]
        assert all(lr > 0 for lr in lrs[:1])
        if group in ("model", "dataset", "optimizer"):
            # build on the digits shape (and the data set's own for dataset configs): cheap forward pass
            model = build_model(cfg.model, info)
            build_optimizer(model.parameters(), cfg.optimizer)
            if group != "dataset" or info.in_shape[1] <= 32:
                model.eval()
                with torch.no_grad():
                    out = model(torch.rand(2, *info.in_shape))
                assert out.shape == (2, info.num_classes)


def test_attack_group_composes_and_resolves(hydra_compose):
    from robust_cli.norms import NORMS

    names = [n for n in options("attack") if n != "all"]
    assert names
    for name in names:
        cfg = hydra_compose("eval", overrides=[f"attack={name}", "run=x"])
        node = cfg.attack[name]
        fn = get_method(node._target_)
        assert set(fn.norms) <= set(NORMS) and isinstance(fn.budget, bool)


def test_schema_rejects_typo_and_wrong_type(hydra_compose):
    with pytest.raises(ConfigCompositionException, match="bacth"):
        hydra_compose("train", overrides=["dataset.bacth=3"])
    with pytest.raises(ConfigCompositionException, match="epochs"):
        hydra_compose("train", overrides=["epochs=many"])
    with pytest.raises(MissingConfigException, match="no_such_model"):
        hydra_compose("train", overrides=["model=no_such_model"])
