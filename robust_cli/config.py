"""Dataclass schemas behind the YAML configs, registered in Hydra's ConfigStore.

Every YAML file names its schema first in its defaults list (``- <name>_schema``), so a misspelled key or a
value of the wrong type fails when the config is composed, before any work starts.

The ``model``, ``defense`` and ``attack`` groups have one schema per option. Their modules declare
``SCHEMAS = {"<yaml file name>": Dataclass}``; ``register_configs`` discovers them, so adding an option
means adding a module and a YAML file, nothing here.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

# ---------------------------------------------------------------- data


@dataclass
class AugmentConfig:
    """Training-time augmentation (Finlay et al. App. A): random crop with padding, horizontal flip, cutout."""

    crop_padding: int = 0  # pixels of zero padding before a random crop back to the image size; 0 = off
    flip: bool = False  # random horizontal flip
    cutout: int = 0  # side of the square zeroed at a random position (16 CIFAR-10, 8 CIFAR-100); 0 = off


@dataclass
class DatasetConfig:
    """One data set (``conf/dataset/<name>.yaml``, its loader in ``robust_cli/data/sets/<name>.py``).
    ``in_shape`` is ``[C, H, W]``; images are always in [0,1]."""

    name: str = MISSING
    # dotted name of the data set's loader, a function registered in robust_cli/data/sets/ (no other code is
    # ever called); null: the loader of the registry entry with this name
    loader: Optional[str] = None
    in_shape: list[int] = MISSING
    num_classes: int = MISSING
    mean: list[float] = MISSING
    std: list[float] = MISSING
    val_size: int = 0  # images held out of the training set for validation (thesis MNIST: 10000)
    eval_size: int = 1000  # the fixed evaluation subset: the first N test images
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    path: Optional[str] = None  # `npz` only: the arrays file
    # robust-accuracy thresholds per norm, {linf: [...], l2: [...], l1: [...], l0: [...]}: the eps at which
    # robust eval reports 1 - err(eps) (Matyasko's thesis §5.4: five fixed per data set); a norm that is
    # null or [] gets no robust-accuracy columns
    thresholds: dict[str, Optional[list[float]]] = field(
        default_factory=lambda: dict.fromkeys(("linf", "l2", "l1", "l0"))
    )


@dataclass
class DataConfig:
    """Where data sets live and how they are read."""

    root: str = "${oc.env:ROBUST_DATA,data}"
    download: bool = True
    num_workers: int = 0


@dataclass
class EvalDataConfig:
    """``robust eval``'s ``data``: where to read the run's data set now. ``root`` null: the run's stored
    ``data.root`` (absolute since it is stored so); ``data.root=<dir>`` or ``$ROBUST_DATA`` replaces it
    (the data set moved, or another machine)."""

    root: Optional[str] = "${oc.env:ROBUST_DATA,null}"


# ---------------------------------------------------------------- optimisation


@dataclass
class OptimizerConfig:
    """``name`` is sgd, adam or adamw; unused fields are ignored by the other optimizers."""

    name: str = MISSING
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class ScheduleConfig:
    """Learning-rate schedule per epoch. ``name``: multistep, exponential, cosine or constant."""

    name: str = MISSING
    milestones: list[int] = field(default_factory=list)  # multistep: epochs at which lr *= gamma
    gamma: float = 0.1  # multistep factor, or exponential per-epoch decay
    eta_min: float = 0.0  # cosine: final lr
    warmup_epochs: int = 0  # linear warm-up from lr/10


@dataclass
class TrainerConfig:
    """Hardware and parallelism of the training loop."""

    devices: int = 1  # >1: DistributedDataParallel over this many processes
    backend: str = "auto"  # torch.distributed backend; auto = nccl on CUDA, gloo on CPU


@dataclass
class TrainConfig:
    """``robust train``: the top-level keys of conf/train.yaml."""

    dataset: Any = MISSING
    model: Any = MISSING
    defense: Any = MISSING
    optimizer: OptimizerConfig = MISSING
    schedule: ScheduleConfig = MISSING
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 500
    seed: int = 0
    deterministic: bool = False  # torch deterministic algorithms; bit-exact resume on CPU
    device: str = "auto"  # auto = cuda when present, else cpu
    amp: bool = False  # autocast (bf16 on CUDA)
    channels_last: bool = False
    tikhonov: float = 0.0  # the papers' weight decay: tikhonov * sum of squared non-bias weights
    max_batches_per_epoch: Optional[int] = None  # cap for smoke runs
    force: bool = False  # retrain even if the run directory holds a finished run
    out_dir: str = "outputs"
    run_dir: Optional[str] = None  # explicit run directory; default: named from the overrides


# ---------------------------------------------------------------- evaluation


@dataclass
class EvalConfig:
    """``robust eval``: the top-level keys of conf/eval.yaml."""

    run: str = MISSING  # the train run directory
    attack: Any = MISSING  # filled by the attack group: {<name>: {...params}}
    norm: Any = "l2"  # l0 | l1 | l2 | linf, or a list of them
    n_examples: int = 1000
    batch_size: int = 250
    device: str = "auto"
    seed: int = 0
    eps: dict[str, float] = field(
        default_factory=lambda: {"l0": 10.0, "l1": 10.0, "l2": 1.0, "linf": 0.1}
    )  # the error reported "at eps" for each norm (the error curve of Finlay et al. Def. 4.1 read at one eps)
    # robust-accuracy thresholds per norm, merged over the run's dataset.thresholds: thresholds.l2=[0.5,1.0]
    # replaces the data set's l2 list, thresholds.l0=[] drops l0's; a norm left null keeps the data set's
    thresholds: dict[str, Optional[list[float]]] = field(
        default_factory=lambda: dict.fromkeys(("linf", "l2", "l1", "l0"))
    )
    eps_search: str = "bisection"  # budget attacks: bisection | grid
    search_steps: int = 10  # bisection steps, or grid points
    lipschitz: bool = True  # write lipschitz.json
    # certified error curves beside the attacked ones (robust_cli.certification): any of lipschitz, ibp,
    # crown; l2 and linf only, crown on feed-forward models only; bisection over search_steps
    certify: Any = field(default_factory=list)
    # a transfer evaluation: the attacks craft on this train run's model and are scored on run's (same data set);
    # results are named transfer_<attack>_<6 hex of the source path>
    source: Optional[str] = None
    # a universal perturbation per norm (l2, linf) at eps.<norm>, crafted on the first universal_images training
    # images (Moosavi-Dezfooli et al. 2017, Alg. 1), its fooling rate measured on the evaluated test images
    universal: bool = False
    universal_images: int = 200
    # the first N successful adversarials per (attack, norm) to <attack>-<norm>/adversarials.npz and .png; 0: none
    save_adversarials: int = 0
    force: bool = False  # recompute attacks already evaluated, also with other settings than stored
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    out_dir: str = "outputs"  # -m only: the sweep directory <out_dir>/sweeps/eval/<name> (results go to <run>/eval)


@dataclass
class DetectConfig:
    """``robust detect``: the gradient-norm detector of a trained run against attacks (conf/detect.yaml)."""

    run: str = MISSING  # the train run directory
    attack: Any = MISSING  # filled by the attack group, as for robust eval
    norm: Any = "l2"
    fpr: float = 0.05  # fraction of clean calibration images the threshold flags, in (0, 1)
    n_examples: int = 500  # test images: the first half calibrates the threshold, the second is attacked
    batch_size: int = 250
    eps_search: str = "bisection"
    search_steps: int = 8  # budget attacks' eps search and the evasive attack's bisection
    evasive: bool = True  # also run the evasive attack (l2 and linf)
    evasive_steps: int = 30  # its iterations per eps
    evasive_lam: float = 10.0  # weight of the gradient-norm penalty
    device: str = "auto"
    seed: int = 0
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    out_dir: str = "outputs"


@dataclass
class DataLipschitzConfig:
    """``robust data-lipschitz``: the Lipschitz constant of a data set (Finlay Table 2)."""

    dataset: Any = MISSING
    data: DataConfig = field(default_factory=DataConfig)
    split: str = "train"
    chunk_size: int = 2048
    device: str = "auto"
    max_images: Optional[int] = None


# ---------------------------------------------------------------- registration

_GROUP_PACKAGES = {"model": "robust_cli.models", "defense": "robust_cli.defenses", "attack": "robust_cli.attacks"}
_registered = False


def discover_schemas(package: str) -> dict[str, type]:
    """``{yaml name: dataclass}`` from the ``SCHEMAS`` dicts of every module of ``package``."""
    pkg = importlib.import_module(package)
    found: dict[str, type] = dict(getattr(pkg, "SCHEMAS", {}))
    for info in pkgutil.iter_modules(pkg.__path__):
        module = importlib.import_module(f"{package}.{info.name}")
        found.update(getattr(module, "SCHEMAS", {}))
    return found


@functools.lru_cache(maxsize=1)
def _registered_objects() -> dict[str, Any]:
    """``{_target_: object}`` of every schema of the model, defense and attack groups."""
    found = {}
    for package in _GROUP_PACKAGES.values():
        for schema in discover_schemas(package).values():
            obj = getattr(schema, "__robust_target__", None)
            if obj is not None:
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


def check_config(cfg: Any) -> None:
    """Check every model, defense and attack node of a composed config against what its code's signature
    states beyond types (``Literal`` choices, ``Range`` bounds; ``robust_cli.schema.check_options``).

    Raises ``UserError`` naming the key, e.g. ``attack.pgd.steps=-1: must be >= 1``.
    """
    from omegaconf import DictConfig, OmegaConf

    from robust_cli.schema import check_options

    nodes = [(key, cfg.get(key)) for key in ("model", "defense")]
    attacks = cfg.get("attack")
    if isinstance(attacks, DictConfig):
        nodes += [(f"attack.{name}", node) for name, node in attacks.items()]
    objects = None
    for where, node in nodes:
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        objects = objects or _registered_objects()
        obj = objects.get(str(node._target_))
        if obj is not None:
            check_options(obj, OmegaConf.to_container(node, resolve=True), where)


def register_configs() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent)."""
    global _registered
    if _registered:
        return
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="eval_schema", node=EvalConfig)
    cs.store(name="data_lipschitz_schema", node=DataLipschitzConfig)
    cs.store(name="detect_schema", node=DetectConfig)
    cs.store(group="dataset", name="dataset_schema", node=DatasetConfig)
    cs.store(group="optimizer", name="optimizer_schema", node=OptimizerConfig)
    cs.store(group="schedule", name="schedule_schema", node=ScheduleConfig)
    for group, package in _GROUP_PACKAGES.items():
        for name, schema in discover_schemas(package).items():
            # attacks are selected several at a time (attack=[fgsm,pgd]): each lives at attack.<name>
            pkg = f"attack.{name}" if group == "attack" else None
            cs.store(group=group, name=f"{name}_schema", node=schema, package=pkg)
    _registered = True
