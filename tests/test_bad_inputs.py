"""A battery of bad invocations of ``robust`` (train, eval, data-lipschitz, multiruns, SLURM): each must end
in exactly one line on stderr, ``robust: error: <the bad value and what is accepted>``, exit status 2, no
traceback, and leave every existing run directory byte-identical (hashed before and after).

The commands run in this process through the CLI's own entry point (``cli_helpers.robust_in_process``:
``robust_cli.cli.main``, stderr and the warnings a user would see collected), against one quickstart run
directory trained once for the module. Cases that need a damaged run directory damage a copy of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import robust_in_process

# ---------------------------------------------------------------- the shared run and its damaged copies


def tree_hash(root: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``root`` (plus ``<dir>/`` for every folder)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel + ("/" if path.is_dir() else "")] = (
            hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir")
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """One quickstart run (1 epoch, 2 batches) evaluated once (fgsm, linf, 5 images), npz files with each
    defect, a fake ``sbatch`` per refusal; ``{"R": run, "T": scratch, ...}``."""
    root = tmp_path_factory.mktemp("bad_inputs")
    out = root / "out"
    res = robust_in_process("train", "experiment=quickstart", "epochs=1", "max_batches_per_epoch=2", "device=cpu",
                            f"out_dir={out}")
    assert res.returncode == 0, res.stderr[-3000:]
    run = next(p.parent for p in out.glob("train/*/*/*/*/model.pt"))
    res = robust_in_process("eval", f"run={run}", "attack=fgsm", "norm=linf", "n_examples=5", "device=cpu")
    assert res.returncode == 0, res.stderr[-3000:]

    rng = np.random.default_rng(0)
    x = rng.random((60, 8, 8)).astype(np.float32)
    y = np.arange(60) % 10
    npz = {
        "good": dict(x_train=x, y_train=y, x_test=x[:20], y_test=y[:20]),
        "nan": dict(x_train=np.where(np.arange(64).reshape(8, 8) == 3, np.nan, x), y_train=y, x_test=x, y_test=y),
        "inf": dict(x_train=x, y_train=y, x_test=np.full_like(x, np.inf), y_test=y),
        "badlab": dict(x_train=x, y_train=y + 20, x_test=x, y_test=y),
        "neglab": dict(x_train=x, y_train=y - 5, x_test=x, y_test=y),
        "floatlab": dict(x_train=x, y_train=y.astype(np.float32), x_test=x, y_test=y),
        "notest": dict(x_train=x, y_train=y),
        "range255": dict(x_train=x * 255, y_train=y, x_test=x, y_test=y),
        "count": dict(x_train=x, y_train=y[:50], x_test=x, y_test=y),
        "dtype": dict(x_train=x.astype(np.int32), y_train=y, x_test=x, y_test=y),
        "ndim": dict(x_train=x.reshape(60, 64), y_train=y, x_test=x, y_test=y),
        "onelabel": dict(x_train=x, y_train=np.zeros(60, dtype=np.int64), x_test=x, y_test=y),
        "empty": dict(x_train=x[:0], y_train=y[:0], x_test=x, y_test=y),
    }
    paths = {}
    for name, arrays in npz.items():
        paths[f"npz_{name}"] = root / f"{name}.npz"
        np.savez(paths[f"npz_{name}"], **arrays)
    (root / "text.npz").write_text("not an archive")
    paths["npz_text"] = root / "text.npz"
    np.save(root / "single.npy", x)
    paths["npz_single"] = root / "single.npy"

    bin_dir = root / "bin"  # sbatch stand-ins printing what a real one says, exiting 1
    bin_dir.mkdir()
    for name, said in {
        "dns": "sbatch: error: resolve_ctls_from_dns_srv: res_nsearch error: Unknown host\n"
               "sbatch: error: fetch_config: DNS SRV lookup failed\n"
               "sbatch: error: _establish_config_source: failed to fetch config\n"
               "sbatch: fatal: Could not establish a configuration source",
        "gres": "sbatch: error: Batch job submission failed: Invalid generic resource (gres) specification",
        "down": "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)",
    }.items():
        folder = bin_dir / name
        folder.mkdir()
        script = folder / "sbatch"
        script.write_text("#!/bin/sh\ncat >&2 <<'EOF'\n" + said + "\nEOF\nexit 1\n")
        (folder / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit looks for it before it submits
        for tool in (script, folder / "srun"):
            tool.chmod(0o755)
        paths[f"sbatch_{name}"] = folder
    (bin_dir / "none").mkdir()
    paths["sbatch_none"] = bin_dir / "none"
    return {"R": run, "T": root, **paths}


def damaged(world, name: str, damage: Callable[[Path], None]) -> Path:
    """A copy of the shared run (``<T>/damaged/<name>``) with ``damage`` applied."""
    copy = world["T"] / "damaged" / name
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(world["R"], copy)
    damage(copy)
    return copy


def _blob(run: Path) -> dict:
    return torch.load(run / "model.pt", weights_only=True)


def _save(run: Path, blob) -> None:
    torch.save(blob, run / "model.pt")


def drop_key(run):
    blob = _blob(run)
    blob["state_dict"].pop(next(iter(blob["state_dict"])))
    _save(run, blob)


def other_architecture(run):
    from robust_cli.models.mlp import MLP

    blob = _blob(run)
    blob["state_dict"] = MLP((1, 8, 8), 10).state_dict()
    _save(run, blob)


def nan_weights(run):
    blob = _blob(run)
    key = next(k for k, v in blob["state_dict"].items() if v.is_floating_point())
    blob["state_dict"][key].fill_(float("nan"))
    _save(run, blob)


def overflowing_weights(run):
    """Finite weights (1e20 x) whose products overflow float32: logits inf or NaN."""
    blob = _blob(run)
    for value in blob["state_dict"].values():
        if value.is_floating_point():
            value.mul_(1e20)
    _save(run, blob)


def no_model_cfg(run):
    blob = _blob(run)
    del blob["model_cfg"]
    _save(run, blob)


def unknown_architecture(run):
    blob = _blob(run)
    blob["model_cfg"] = {"_target_": "nowhere.Net", "name": "nowhere"}
    _save(run, blob)


def edit(path: str, content: bytes | Callable[[bytes], bytes]):
    def apply(run: Path):
        target = run / path
        target.write_bytes(content(target.read_bytes()) if callable(content) else content)
    return apply


def set_status(status: str):
    def apply(run: Path):
        rec = json.loads((run / "run.json").read_text())
        rec["status"] = status
        (run / "run.json").write_text(json.dumps(rec))
    return apply


def eval_is_a_file(run):
    shutil.rmtree(run / "eval")
    (run / "eval").write_text("not a folder")


def eval_read_only(run):
    for path in [run / "eval", *(run / "eval").rglob("*")]:
        if path.is_dir():
            path.chmod(stat.S_IRUSR | stat.S_IXUSR)


# ---------------------------------------------------------------- the table

# {R}: the shared run; {D}: the damaged copy; {T}: the scratch folder; {OUT}: an empty out_dir per case;
# {npz_<defect>}, {sbatch_<kind>} from the world fixture
EVAL = ["eval", "run={R}", "attack=fgsm", "norm=linf", "n_examples=5", "device=cpu"]
EVAL_D = ["eval", "run={D}", "attack=fgsm", "norm=linf", "n_examples=5", "device=cpu"]
TRAIN = ["train", "experiment=quickstart", "epochs=1", "max_batches_per_epoch=1", "device=cpu", "out_dir={OUT}"]
NPZ = ["dataset=npz", "dataset.in_shape=[1,8,8]"]
LIP = ["data-lipschitz", "dataset=digits", "device=cpu"]
TRAIN_M = ["train", "-m", *TRAIN[1:]]  # Hydra reads -m before the overrides
SLURM = [*TRAIN_M, "seed=0,1", "hydra/launcher=slurm", "hydra.launcher.partition=cpu"]


@dataclass
class Case:
    id: str
    args: list[str]
    needle: str  # a fragment the one line must contain: the bad value, or what is accepted
    damage: Callable[[Path], None] | None = None
    env: dict | None = None


CASES = [
    # ---- eval: the command line and the schema's values (compose time)
    Case("eval-no-run", ["eval", "attack=fgsm"], "run is required; give run="),
    Case("eval-attack-empty", ["eval", "run={R}", "attack=[]"], "attack is required (attack=[] selects none)"),
    Case("eval-search-steps-0", [*EVAL, "search_steps=0"], "search_steps=0: must be >= 1"),
    Case("eval-search-steps-neg", [*EVAL, "search_steps=-3"], "search_steps=-3: must be >= 1"),
    Case("eval-fgsm-loss", [*EVAL, "attack.fgsm.loss=foo"], "attack.fgsm.loss='foo': expected one of ce, margin"),
    Case("eval-eps-neg", [*EVAL, "eps.linf=-0.1"], "eps.linf=-0.1: must be >= 0"),
    Case("eval-eps-nan", [*EVAL, "eps.l2=nan"], "eps.l2=nan: must be a number"),
    Case("eval-pgd-steps", ["eval", "run={R}", "attack=pgd", "attack.pgd.steps=-1"], "attack.pgd.steps=-1"),
    Case("eval-n-examples-0", [*EVAL[:-2], "n_examples=0"], "n_examples=0: must be >= 1"),
    Case("eval-batch-size", [*EVAL, "batch_size=-1"], "batch_size=-1: must be >= 1"),
    Case("eval-eps-search", [*EVAL, "eps_search=linear"],
         "eps_search='linear': expected one of adaptive, bisection, grid"),
    Case("eval-norm-unknown", [*EVAL[:3], "norm=l3"], "norm='l3'"),
    Case("eval-norm-unsupported", [*EVAL[:3], "norm=l0"], "does not support norm=l0"),
    Case("eval-norm-unsupported-with-option", ["eval", "run={R}", "attack=fmn", "attack.fmn.projection=advlib",
                                                "norm=l0"],
         "attack fmn with projection=advlib does not support norm=l0 (it supports l1, l2, linf)"),
    Case("eval-attack-unknown", ["eval", "run={R}", "attack=nosuch"], "Could not find 'attack/nosuch'"),
    Case("eval-attack-option-typo", ["eval", "run={R}", "attack=pgd", "attack.pgd.stepz=3"], "stepz"),
    Case("eval-attack-option-type", ["eval", "run={R}", "attack=pgd", "attack.pgd.steps=many"], "steps=many"),
    Case("eval-thresholds-neg", [*EVAL, "thresholds.l2=[-1]"], "thresholds.l2=[-1.0]: each entry: must be >= 0"),
    Case("eval-force-type", [*EVAL, "force=maybe"], "force=maybe"),
    Case("eval-device", [*EVAL, "device=tpu"], "device='tpu'"),
    Case("eval-top-key-typo", [*EVAL, "n_exemples=5"], "n_exemples"),
    Case("eval-other-settings", [*EVAL, "search_steps=3"], "was evaluated with search_steps=10 (now 3)"),
    Case("eval-command-unknown", ["evaluate", "run={R}"], "unknown command 'evaluate'"),
    # ---- eval: the run directory and its files
    Case("eval-run-missing", ["eval", "run={T}/nowhere", "attack=fgsm", "norm=linf"], "does not exist"),
    Case("eval-run-a-file", ["eval", "run={npz_good}", "attack=fgsm", "norm=linf"], "is not a directory"),
    Case("eval-run-empty-dir", ["eval", "run={T}", "attack=fgsm", "norm=linf"], "holds no model.pt"),
    Case("eval-model-missing", EVAL_D, "holds no model.pt", lambda r: (r / "model.pt").unlink()),
    Case("eval-model-missing-key", EVAL_D, "do not fit the architecture its model_cfg names (missing", drop_key),
    Case("eval-model-other-arch", EVAL_D, "do not fit the architecture", other_architecture),
    Case("eval-model-garbage", EVAL_D, "cannot read", edit("model.pt", b"\x80\x04garbage not a torch file")),
    Case("eval-model-truncated", EVAL_D, "not a complete torch file (truncated",
         edit("model.pt", lambda b: b[: len(b) // 2])),
    Case("eval-model-empty", EVAL_D, "cannot read", edit("model.pt", b"")),
    Case("eval-model-no-cfg", EVAL_D, "lacks model_cfg", no_model_cfg),
    Case("eval-model-tensor", EVAL_D, "lacks state_dict", lambda r: _save(r, torch.zeros(3))),
    Case("eval-model-nan", EVAL_D, "hold NaN or inf", nan_weights),
    Case("eval-model-overflow", EVAL_D, "logits are NaN or inf", overflowing_weights),
    Case("eval-model-unknown-arch", EVAL_D, "model_cfg", unknown_architecture),
    Case("eval-runjson-not-json", EVAL_D, "run.json is not readable JSON", edit("run.json", b"{status: done")),
    Case("eval-runjson-list", EVAL_D, "run.json holds a list", edit("run.json", b"[1, 2]")),
    Case("eval-runjson-binary", EVAL_D, "run.json is not readable JSON", edit("run.json", b"\xff\xfe\x00")),
    Case("eval-run-running", EVAL_D, "is not a finished run (run.json status: running)", set_status("running")),
    Case("eval-run-failed", EVAL_D, "status: failed", set_status("failed")),
    Case("eval-config-not-yaml", EVAL_D, "config.yaml is not a readable YAML config",
         edit("config.yaml", b"model: [unclosed\n  : :")),
    Case("eval-config-list", EVAL_D, "config.yaml holds a YAML", edit("config.yaml", b"- a\n- b\n")),
    Case("eval-eval-is-file", EVAL_D, "is a file, not the folder", eval_is_a_file),
    pytest.param(Case("eval-eval-read-only", EVAL_D, "is not writable", eval_read_only),
                 marks=pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")),
    # ---- eval multiruns: every combination's values and run directory before any job starts
    Case("eval-m-run-missing", ["eval", "-m", "run={R},{T}/nonexistent", "attack=fgsm", "norm=linf"],
         "run={T}/nonexistent does not exist"),
    Case("eval-m-search-steps", ["eval", "-m", "run={R}", "attack=fgsm,pgd", "search_steps=0"], "search_steps=0"),
    Case("eval-m-eps", ["eval", "-m", "run={R}", "attack=fgsm", "eps.linf=0.1,-1"], "eps.linf=-1.0"),
    Case("eval-m-n-jobs", ["eval", "-m", "run={R}", "attack=fgsm", "hydra/launcher=local",
                           "hydra.launcher.n_jobs=0"], "hydra.launcher.n_jobs=0: must be >= 1"),
    # ---- train: values
    Case("train-epochs-0", [*TRAIN, "epochs=0"], "epochs=0: must be >= 1"),
    Case("train-batch-size-0", [*TRAIN, "batch_size=0"], "batch_size=0: must be >= 1"),
    Case("train-lr-neg", [*TRAIN, "optimizer.lr=-0.1"], "optimizer.lr=-0.1: must be > 0"),
    Case("train-lr-0", [*TRAIN, "optimizer.lr=0"], "optimizer.lr=0"),
    Case("train-betas", [*TRAIN, "optimizer.betas=[0.9,1.5]"], "optimizer.betas=[0.9, 1.5]: each entry"),
    Case("train-val-size-neg", [*TRAIN, "dataset.val_size=-1"], "dataset.val_size=-1: must be >= 0"),
    Case("train-val-size-big", [*TRAIN, "dataset.val_size=5000"], "dataset.val_size=5000 must lie in [0, "),
    Case("train-devices-0", [*TRAIN, "trainer.devices=0"], "trainer.devices=0: must be >= 1"),
    Case("train-backend", [*TRAIN, "trainer.backend=mpi"], "expected one of auto, nccl, gloo"),
    Case("train-gamma-0", [*TRAIN, "schedule=multistep", "schedule.gamma=0"], "schedule.gamma=0"),
    Case("train-warmup-neg", [*TRAIN, "schedule.warmup_epochs=-1"], "schedule.warmup_epochs=-1"),
    Case("train-tikhonov-neg", [*TRAIN, "tikhonov=-1"], "tikhonov=-1"),
    Case("train-max-batches-0", [*TRAIN, "max_batches_per_epoch=0"], "max_batches_per_epoch=0: must be >= 1"),
    Case("train-cutout-neg", [*TRAIN, "dataset.augment.cutout=-4"], "dataset.augment.cutout=-4"),
    Case("train-epochs-type", [*TRAIN, "epochs=abc"], "epochs=abc"),
    Case("train-seed-type", [*TRAIN, "seed=1.5"], "seed=1.5"),
    Case("train-out-dir-empty", [*TRAIN, "out_dir="], "out_dir='': must not be empty"),
    Case("train-model-unknown", [*TRAIN, "model=nosuch"], "Could not find 'model/nosuch'"),
    Case("train-defense-lam", [*TRAIN, "defense=tulip", "defense.lam=-1"], "lam=-1.0 must be >= 0"),
    Case("train-penalty-norm", [*TRAIN, "defense=tulip", "defense.penalty_norm=l7"], "defense.penalty_norm='l7'"),
    Case("train-dropout", [*TRAIN, "model=mlp", "model.dropout=2"], "dropout must be in [0, 1)"),
    Case("train-hydra-run-dir", [*TRAIN, "hydra.run.dir={T}/x"], "hydra.run.dir is not used"),
    Case("train-inside-run", [*TRAIN, "run_dir={R}/eval/x"], "puts the run inside the run directory"),
    # ---- train: npz files (the path and the problem)
    Case("npz-no-path", [*TRAIN, "dataset=npz"], "dataset.path=<file.npz>"),
    Case("npz-missing", [*TRAIN, *NPZ, "dataset.path={T}/nope.npz"], "dataset.path {T}/nope.npz does not exist"),
    Case("npz-nan", [*TRAIN, *NPZ, "dataset.path={npz_nan}"], "hold NaN or inf values"),
    Case("npz-inf-test", [*TRAIN, *NPZ, "dataset.path={npz_inf}"], "(x_test): 60 images hold NaN or inf"),
    Case("npz-labels-big", [*TRAIN, *NPZ, "dataset.path={npz_badlab}"], "training labels lie in [20, 29]"),
    Case("npz-labels-neg", [*TRAIN, *NPZ, "dataset.path={npz_neglab}"], "labels lie in [-5, 4]"),
    Case("npz-labels-float", [*TRAIN, *NPZ, "dataset.path={npz_floatlab}"], "y_train has dtype float32"),
    Case("npz-no-test", [*TRAIN, *NPZ, "dataset.path={npz_notest}"], "lacks arrays ['x_test', 'y_test']"),
    Case("npz-range", [*TRAIN, *NPZ, "dataset.path={npz_range255}"], "must be uint8 in [0,255] or floats in [0,1]"),
    Case("npz-count", [*TRAIN, *NPZ, "dataset.path={npz_count}"], "y_train has shape (50,) for 60 images"),
    Case("npz-dtype", [*TRAIN, *NPZ, "dataset.path={npz_dtype}"], "x_train has dtype int32"),
    Case("npz-ndim", [*TRAIN, *NPZ, "dataset.path={npz_ndim}"], "x_train has shape (60, 64)"),
    Case("npz-shape", [*TRAIN, "dataset=npz", "dataset.path={npz_good}"], "dataset.in_shape is [1, 28, 28]"),
    Case("npz-text", [*TRAIN, *NPZ, "dataset.path={npz_text}"], "is not a readable .npz file"),
    Case("npz-npy", [*TRAIN, *NPZ, "dataset.path={npz_single}"], "holds one array, not an .npz archive"),
    Case("npz-empty", [*TRAIN, *NPZ, "dataset.path={npz_empty}"], "(x_train): no images"),
    # ---- train multiruns: one line before any job trains
    Case("train-m-val-size", [*TRAIN_M, "dataset.val_size=10,5000"], "dataset.val_size=5000 must lie in"),
    Case("train-m-npz-missing", [*TRAIN_M, *NPZ, "dataset.path={npz_good},{T}/nope.npz"], "does not exist"),
    Case("train-m-npz-labels", [*TRAIN_M, *NPZ, "dataset.path={npz_good},{npz_badlab}"], "labels lie in"),
    Case("train-m-n-jobs", [*TRAIN_M, "seed=0,1", "hydra/launcher=local", "hydra.launcher.n_jobs=0"],
         "hydra.launcher.n_jobs=0"),
    Case("train-m-epochs", [*TRAIN_M, "epochs=1,0"], "epochs=0: must be >= 1"),
    Case("train-m-lr", [*TRAIN_M, "optimizer.lr=0.1,-1"], "optimizer.lr=-1"),
    # ---- keys added with `+` (session 14's review): Hydra adds them to any node, so the schemas check them
    Case("eval-plus-attack-option", [*EVAL, "+attack.fgsm.stepz=5"], "attack.fgsm.stepz: not an option of"),
    Case("eval-plus-top-key", [*EVAL, "+bogus_key=1"], "bogus_key: not an option of the command"),
    Case("eval-plus-eps-norm", [*EVAL, "+eps.l7=3"], "eps.l7: not a norm"),
    Case("train-plus-top-key", [*TRAIN, "+bogus=1"], "bogus: not an option of the command"),
    Case("train-plus-model-key", [*TRAIN, "+model.widht=3"], "model.widht: not an option of model"),
    # ---- where a job would write, and which run it would resume
    Case("train-out-dir-a-file", [*TRAIN[:-1], "out_dir={npz_good}"], "is a file, not a folder; give another out_dir"),
    Case("train-out-dir-under-a-file", [*TRAIN[:-1], "out_dir={npz_good}/sub"], "is a file, not a folder"),
    Case("report-out-a-file", ["report", "runs=[{R}]", "out={npz_good}"], "out={npz_good}: {npz_good} is a file"),
    Case("train-m-job-name-path", [*TRAIN_M, "seed=0,1", "hydra.job.name=../../etc"],
         "hydra.job.name='../../etc': must be a plain folder name"),
    Case("train-m-and-cfg", [*TRAIN_M, "seed=0,1", "--cfg", "job"], "--cfg shows one job's config and -m runs"),
    Case("train-run-dir-other-model", [*TRAIN, "run_dir={R}", "model=mlp"],
         "holds a run of another configuration (model=lenet5 (now mlp)"),
    Case("train-run-dir-other-epochs", [*TRAIN, "run_dir={R}", "epochs=3"], "(epochs=1 (now 3)"),
    Case("report-attack-not-run", ["report", "runs=[{R}]", "attacks=cw-l2", "out={T}/report_cw"],
         "attacks: cw-l2 not in the runs; they hold fgsm-linf"),
    # ---- data-lipschitz
    Case("lip-max-images-neg", [*LIP, "max_images=-5"], "max_images=-5: must be >= 2"),
    Case("lip-max-images-0", [*LIP, "max_images=0"], "max_images=0: must be >= 2"),
    Case("lip-max-images-1", [*LIP, "max_images=1"], "max_images=1: must be >= 2"),
    Case("lip-split-val-empty", [*LIP, "split=val"], "split=val of digits is empty"),
    Case("lip-split-unknown", [*LIP, "split=validation"], "split='validation': expected one of train, val, test"),
    Case("lip-chunk-0", [*LIP, "chunk_size=0"], "chunk_size=0: must be >= 1"),
    Case("lip-npz-nan", ["data-lipschitz", *NPZ, "dataset.path={npz_nan}"], "hold NaN or inf values"),
    Case("lip-one-label", ["data-lipschitz", *NPZ, "dataset.path={npz_onelabel}"], "have the one label 0"),
    # ---- SLURM: sbatch's refusals as one line naming what to change
    # (slow: submitit's start-up and a real sbatch process each, ~4 s on a loaded machine)
    *(pytest.param(case, marks=pytest.mark.slow) for case in (
        Case("slurm-no-controller", [*SLURM], "no SLURM controller answers",
             env={"PATH": "{sbatch_dns}:" + os.environ.get("PATH", "")}),
        Case("slurm-controller-down", [*SLURM], "no SLURM controller answers",
             env={"PATH": "{sbatch_down}:" + os.environ.get("PATH", "")}),
        Case("slurm-no-client", [*SLURM], "no SLURM client commands (srun, sbatch) on PATH",
             env={"PATH": "{sbatch_none}"}),
        Case("slurm-gpu-on-cpu-partition", [*SLURM, "hydra.launcher.gpus_per_node=1"],
             "hydra.launcher.gpus_per_node=null", env={"PATH": "{sbatch_gres}:" + os.environ.get("PATH", "")}),
    )),
]

# Variants of a check that the default suite already exercises with another case run in `make test-slow` only
# (each call is ~0.5-1 s on a loaded machine; the default suite keeps the cases and at least 60)
SLOW_IDS = {
    "eval-search-steps-neg", "eval-eps-nan", "eval-batch-size", "eval-attack-option-type", "eval-force-type",
    "eval-top-key-typo", "eval-command-unknown", "eval-norm-unknown", "eval-run-a-file", "eval-run-empty-dir",
    "eval-model-empty", "eval-model-tensor", "eval-runjson-binary", "eval-run-failed", "eval-config-list",
    "eval-m-eps", "train-lr-0", "train-betas", "train-warmup-neg", "train-tikhonov-neg", "train-cutout-neg",
    "train-epochs-type", "train-seed-type", "train-out-dir-empty", "train-model-unknown", "train-penalty-norm",
    "train-dropout", "train-hydra-run-dir", "train-backend", "npz-labels-neg", "npz-inf-test", "npz-dtype",
    "npz-ndim", "npz-npy", "npz-empty", "train-m-lr", "lip-max-images-0", "lip-chunk-0",
}
CASES = [pytest.param(c, marks=pytest.mark.slow) if isinstance(c, Case) and c.id in SLOW_IDS else c for c in CASES]


def _fill(text: str, names: dict[str, Path]) -> str:
    for key, value in names.items():
        text = text.replace("{" + key + "}", str(value))
    return text


def _case_id(case) -> str:
    return case.id if isinstance(case, Case) else "case"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_a_bad_invocation_is_one_line_exit_2_and_changes_nothing(case: Case, world, tmp_path):
    names = {**world, "OUT": tmp_path / "out"}
    if case.damage is not None:
        names["D"] = damaged(world, case.id, case.damage)
    args = [_fill(a, names) for a in case.args]
    env = {k: _fill(v, names) for k, v in (case.env or {}).items()}
    watched = [world["R"], *([names["D"]] if "D" in names else [])]
    before = [tree_hash(p) for p in watched]

    res = robust_in_process(*args, cwd=world["T"], env=env)

    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert len(lines) == 1, res.stderr[-3000:]
    assert lines[0].startswith("robust: error: "), lines[0]
    assert _fill(case.needle, names) in lines[0], lines[0]
    assert [tree_hash(p) for p in watched] == before, "a refused command changed a run directory"
    written = list((tmp_path / "out").rglob("run.json")) if (tmp_path / "out").exists() else []
    assert not written, f"a refused command created run directories: {written}"


def _unwrap(case) -> tuple[Case, bool]:
    """``(case, slow)`` of a table entry (a ``Case`` or a ``pytest.param`` of one)."""
    if isinstance(case, Case):
        return case, False
    return case.values[0], any(m.name == "slow" for m in case.marks)


def test_the_battery_is_large_enough():
    cases = [_unwrap(c) for c in CASES]
    assert len({c.id for c, _ in cases}) == len(cases)  # unique ids
    assert not SLOW_IDS - {c.id for c, _ in cases}  # no stale id
    assert sum(not slow for _, slow in cases) >= 60  # in the default suite


# ---------------------------------------------------------------- NaN logits: refused, never scored


class _NaNOnSome(torch.nn.Module):
    """Logits ``[B, 3]``: finite except on images whose first pixel exceeds ``cut`` (NaN there)."""

    def __init__(self, cut: float):
        super().__init__()
        self.cut = cut
        self.w = torch.nn.Parameter(torch.ones(3))

    def forward(self, x):
        logits = x.flatten(1)[:, :3] * self.w
        return torch.where(x.flatten(1)[:, :1] > self.cut, torch.full_like(logits, float("nan")), logits)


def _shift(model, x, y, *, norm):
    """A stand-in minimal-norm attack: every pixel up by 0.3 (the first pixel 0.4 -> 0.7)."""
    return (x + 0.3).clamp(0, 1)


_shift.norms, _shift.budget = ("linf",), False


@pytest.mark.parametrize("cut", [-1.0, 0.5], ids=["clean-images", "adversarial-images"])
def test_nan_logits_are_refused_not_scored(cut):
    """NaN logits on the clean images (cut -1: on every image), or only on the images the attack returns (cut
    0.5: clean first pixels are 0.4, returned ones 0.7) end the evaluation with a UserError; nothing is scored."""
    from robust_cli.errors import UserError
    from robust_cli.evaluation.runner import run_attack

    x = torch.full((8, 1, 2, 2), 0.4)
    y = torch.zeros(8, dtype=torch.long)  # clean logits tie, argmax 0: correct, so every image is attacked
    with pytest.raises(UserError, match="logits are NaN or inf on 8 of 8 images"):
        run_attack(_NaNOnSome(cut), x, y, _shift, "linf")


def test_finite_logits_are_scored():
    """The refusal's counterpart: the same model without a NaN region is evaluated (the check does not
    always fire): the shifted images still tie at argmax 0, so the attack fails on each (distance inf)."""
    from robust_cli.evaluation.runner import run_attack

    x = torch.full((8, 1, 2, 2), 0.4)
    result = run_attack(_NaNOnSome(2.0), x, torch.zeros(8, dtype=torch.long), _shift, "linf")
    assert len(result.frame) == 8 and np.isinf(result.frame["distance"]).all()


# ---------------------------------------------------------------- long sweeps: every value checked up front


def test_a_bad_value_late_in_a_long_sweep_is_refused_before_any_job(monkeypatch):
    """A bad value after the combinations composed in any case (``FIRST_COMBOS``, 64; 3 here to keep the
    test fast) is refused at compose time too, and a grid is not composed in full to find it."""
    from robust_cli import cli

    monkeypatch.setattr(cli, "FIRST_COMBOS", 3)
    epochs = ",".join(["1", "2", "3", "1", "2", "3", "0"])
    assert cli.validate("train", ["-m", f"epochs={epochs}", "experiment=quickstart"]) == "epochs=0: must be >= 1"
    grid = [[f"seed={s}", f"epochs={e}"] for e in range(1, 11) for s in range(100)]
    chosen = cli._covering(grid)
    assert {o for combo in chosen for o in combo} == {o for combo in grid for o in combo}  # every value once
    assert len(chosen) == 100 + 9  # each seed once (with epochs=1), then one per other epochs value, not 1000


def test_a_read_only_eval_folder_is_refused_where_root_would_write_anyway(tmp_path, monkeypatch):
    """The battery's read-only case skips as root (root writes into read-only folders), which is how CI runs:
    the check itself, with the permission answer ``os.access`` gives an ordinary user."""
    from robust_cli.errors import UserError
    from robust_cli.preflight import check_eval_writable
    from robust_cli.rundir import RunDir

    run = RunDir(tmp_path / "run")
    run.eval.path.mkdir(parents=True)
    check_eval_writable(run)  # writable: accepted
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != run.eval.path)
    with pytest.raises(UserError, match=r"eval is not writable: robust eval writes its results in"):
        check_eval_writable(run)
