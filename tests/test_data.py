"""Data sources and batched augmentation."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from robust_cli.data import load_split
from robust_cli.data.augment import cutout, random_crop, random_flip
from robust_cli.errors import UserError

DATA = OmegaConf.create({"root": "unused", "download": False})


def digits_cfg(val_size=0):
    return OmegaConf.create({"name": "digits", "in_shape": [1, 8, 8], "num_classes": 10, "val_size": val_size,
                             "mean": [0.3], "std": [0.4], "path": None})


def test_digits_splits_are_disjoint_and_in_range():
    x_tr, y_tr = load_split(digits_cfg(100), DATA, "train")
    x_va, _ = load_split(digits_cfg(100), DATA, "val")
    x_te, y_te = load_split(digits_cfg(100), DATA, "test")
    assert (len(x_tr), len(x_va), len(x_te)) == (1400, 100, 297)
    assert x_tr.dtype == torch.float32 and x_tr.min() >= 0 and x_tr.max() <= 1
    assert set(y_te.tolist()) == set(range(10))
    full, _ = load_split(digits_cfg(0), DATA, "train")
    assert torch.equal(full[-100:], x_va)  # validation = the last val_size training images


def test_npz_layouts_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 4, 4, 3), dtype=np.uint8)  # NHWC uint8
    y = rng.integers(0, 5, 20)
    path = tmp_path / "a.npz"
    np.savez(path, x_train=x, y_train=y, x_test=x[:5], y_test=y[:5])
    cfg = OmegaConf.create({"name": "npz", "path": str(path), "in_shape": [3, 4, 4], "num_classes": 5,
                            "val_size": 0, "mean": [0.5] * 3, "std": [0.5] * 3})
    xt, yt = load_split(cfg, DATA, "test")
    assert xt.shape == (5, 3, 4, 4)
    assert torch.allclose(xt[0, :, 1, 2], torch.tensor(x[0, 1, 2] / 255.0, dtype=torch.float32))
    cfg.in_shape = [1, 4, 4]
    with pytest.raises(UserError, match="in_shape"):
        load_split(cfg, DATA, "test")
    cfg.path = str(tmp_path / "missing.npz")
    with pytest.raises(UserError, match="does not exist"):
        load_split(cfg, DATA, "test")


def test_random_crop_is_a_shifted_window_of_the_padded_image():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 6, 6)
    out = random_crop(x, 2, g)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(8):  # every output is one of the 25 windows of its own padded image
        windows = [padded[i, :, dy:dy + 6, dx:dx + 6] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)


def test_flip_and_cutout():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(64, 1, 5, 5)
    out = random_flip(x, g)
    flipped = [torch.equal(out[i], x[i].flip(2)) for i in range(64)]
    assert 10 < sum(flipped) < 54 and all(f or torch.equal(out[i], x[i]) for i, f in enumerate(flipped))
    ones = torch.ones(32, 2, 12, 12)
    cut = cutout(ones, 4, g)
    zeros = (cut[:, 0] == 0).sum(dim=(1, 2))
    assert (zeros <= 16).all() and (zeros > 0).all()  # at most a 4x4 square, clipped at the border
    assert (zeros == 16).sum() > 8
    assert torch.equal(cut[:, 0], cut[:, 1])  # the same square on every channel


def test_a_failed_download_leaves_no_folders_behind(tmp_path, monkeypatch):
    """Offline, torchvision creates ``<root>/MNIST/raw`` before its download fails: the error names the
    folder to fill and nothing is left on disk; folders that were there stay."""
    import urllib.error
    import urllib.request

    from robust_cli.data.sets._torchvision import read_torchvision

    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    root = tmp_path / "new" / "data"
    with pytest.raises(UserError, match="MNIST not found in .* put the MNIST files there"):
        read_torchvision("MNIST", "MNIST", root=str(root), train=True, download=True)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "kept" / "MNIST" / "notes").mkdir(parents=True)
    with pytest.raises(UserError, match="MNIST not found"):
        read_torchvision("MNIST", "MNIST", root=str(tmp_path / "kept"), train=True, download=True)
    assert sorted(p.name for p in (tmp_path / "kept" / "MNIST").iterdir()) == ["notes"]
