"""Shared test setup: tests/ on sys.path (for linear_reference), one CPU thread per test process."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)  # test tensors are small: threads only add contention

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def mnist_root() -> Path:
    """The real MNIST in ../shared/data (torchvision layout); skips the test where it is absent."""
    if not (SHARED_DATA / "MNIST" / "raw").is_dir():
        pytest.skip(f"real MNIST not found at {SHARED_DATA}/MNIST/raw")
    return SHARED_DATA


@pytest.fixture
def hydra_compose():
    """Hydra's ``compose`` inside the package's config module (schemas registered), cleared afterwards."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from robust_cli.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module("robust_cli.conf", version_base=None):
        yield compose
    GlobalHydra.instance().clear()


HOOKS = Path(__file__).parent / "hooks"


@pytest.fixture
def epoch_hooks():
    """``epoch_hooks(crash_after=N, min_epoch_seconds=S, pause_seconds=P, base=env)`` -> the environment for a
    ``robust`` subprocess whose training loop runs the test hooks of tests/hooks/sitecustomize.py (kill the
    process after epoch N; pad every epoch to S seconds; sleep P seconds after every epoch). ``base``: the
    environment to extend (PYTHONPATH kept)."""
    import os

    def env(crash_after: int | None = None, min_epoch_seconds: float | None = None,
            pause_seconds: float | None = None, base: dict | None = None):
        base = dict(base or {})
        path = base.get("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
        out = {**base, "PYTHONPATH": os.pathsep.join(p for p in (str(HOOKS), path) if p)}
        if crash_after is not None:
            out["ROBUST_TEST_CRASH_AFTER_EPOCH"] = str(crash_after)
        if min_epoch_seconds is not None:
            out["ROBUST_TEST_MIN_EPOCH_SECONDS"] = str(min_epoch_seconds)
        if pause_seconds is not None:
            out["ROBUST_TEST_EPOCH_PAUSE_SECONDS"] = str(pause_seconds)
        return out

    return env
