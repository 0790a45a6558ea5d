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
from typing import Annotated, Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from robust_cli.errors import UserError
from robust_cli.schema import NonEmpty, OneOf, Range

#: the accepted values of the top-level options, checked by check_config (robust_cli.schema.check_schema_values)
Positive = Annotated[int, Range(ge=1)]
Count = Annotated[int, Range(ge=0)]
NonNegative = Annotated[float, Range(ge=0)]
Path = Annotated[str, NonEmpty()]

# ---------------------------------------------------------------- data


@dataclass
class AugmentConfig:
    """Training-time augmentation (Finlay et al. App. A): random crop with padding, horizontal flip, cutout."""

    crop_padding: Count = 0  # pixels of zero padding before a random crop back to the image size; 0 = off
    flip: bool = False  # random horizontal flip
    cutout: Count = 0  # side of the square zeroed at a random position (16 CIFAR-10, 8 CIFAR-100); 0 = off


@dataclass
class DatasetConfig:
    """One data set (``conf/dataset/<name>.yaml``, its loader in ``robust_cli/data/sets/<name>.py``).
    ``in_shape`` is ``[C, H, W]``; images are always in [0,1]."""

    name: str = MISSING
    # dotted name of the data set's loader, a function registered in robust_cli/data/sets/ (no other code is
    # ever called); null: the loader of the registry entry with this name
    loader: Optional[str] = None
    in_shape: list[Positive] = MISSING
    num_classes: Annotated[int, Range(ge=2)] = MISSING
    mean: list[float] = MISSING
    std: list[Annotated[float, Range(gt=0)]] = MISSING
    val_size: Count = 0  # images held out of the training set for validation (thesis MNIST: 10000)
    eval_size: Positive = 1000  # the fixed evaluation subset: the first N test images
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    path: Optional[str] = None  # `npz` only: the arrays file
    # robust-accuracy thresholds per norm, {linf: [...], l2: [...], l1: [...], l0: [...]}: the eps at which
    # robust eval reports 1 - err(eps) (Matyasko's thesis §5.4: five fixed per data set); a norm that is
    # null or [] gets no robust-accuracy columns
    thresholds: dict[str, Optional[list[NonNegative]]] = field(
        default_factory=lambda: dict.fromkeys(("linf", "l2", "l1", "l0"))
    )


@dataclass
class DataConfig:
    """Where data sets live and how they are read."""

    root: Path = "${oc.env:ROBUST_DATA,data}"
    download: bool = True
    num_workers: Count = 0


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

    name: Annotated[str, OneOf("sgd", "adam", "adamw")] = MISSING
    lr: Annotated[float, Range(gt=0)] = 0.1
    momentum: NonNegative = 0.9
    nesterov: bool = False
    weight_decay: NonNegative = 0.0
    betas: list[Annotated[float, Range(ge=0, lt=1)]] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class ScheduleConfig:
    """Learning-rate schedule per epoch. ``name``: multistep, exponential, cosine or constant."""

    name: Annotated[str, OneOf("multistep", "exponential", "cosine", "constant")] = MISSING
    milestones: list[Count] = field(default_factory=list)  # multistep: epochs at which lr *= gamma
    gamma: Annotated[float, Range(gt=0)] = 0.1  # multistep factor, or exponential per-epoch decay
    eta_min: NonNegative = 0.0  # cosine: final lr
    warmup_epochs: Count = 0  # linear warm-up from lr/10


@dataclass
class TrainerConfig:
    """Hardware and parallelism of the training loop."""

    devices: Positive = 1  # >1: DistributedDataParallel over this many processes
    # torch.distributed backend; auto = nccl on CUDA, gloo on CPU
    backend: Annotated[str, OneOf("auto", "nccl", "gloo")] = "auto"


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
    epochs: Positive = 10
    batch_size: Positive = 128
    eval_batch_size: Positive = 500
    seed: int = 0
    deterministic: bool = False  # torch deterministic algorithms; bit-exact resume on CPU
    device: str = "auto"  # auto = cuda when present, else cpu
    amp: bool = False  # autocast (bf16 on CUDA)
    channels_last: bool = False  # NHWC activations (faster convolutions with amp on recent GPUs)
    compile: bool = False  # torch.compile the model (not with double-backprop defenses: tulip, lip, margin)
    tikhonov: NonNegative = 0.0  # the papers' weight decay: tikhonov * sum of squared non-bias weights
    max_batches_per_epoch: Optional[Positive] = None  # cap for smoke runs
    # robust validation (robust_cli.training.robust_val): every val_every epochs the first val_n validation
    # images are attacked by val_attack at val_eps in val_norm; history.csv gains val_robust_accuracy and
    # checkpoints/best.pt holds the epoch with the highest (Rice et al. 2020). null: off
    val_attack: Optional[str] = None  # a budget attack of conf/attack (fgsm, pgd, ...)
    val_every: Positive = 1
    val_eps: Optional[NonNegative] = None
    val_norm: Annotated[str, OneOf("linf", "l2", "l1", "l0")] = "linf"
    val_n: Positive = 500
    val_options: dict[str, Any] = field(default_factory=dict)  # the attack's options (val_options.steps=10)
    force: bool = False  # retrain even if the run directory holds a finished run
    out_dir: Path = "outputs"
    run_dir: Optional[str] = None  # explicit run directory; default: named from the overrides
    logger: str = "csv"  # csv | tensorboard | mlflow (robust_cli.reporting.tracking); csv files are always written
    mlflow_uri: Optional[str] = None  # logger=mlflow: the tracking URI; null: the file store <out_dir>/mlruns


# ---------------------------------------------------------------- evaluation


@dataclass
class ExternalModelConfig:
    """``robust eval model=<kind> ...``: a model not trained by ``robust train`` (robust_cli.models.external).

    The command line's ``model=``, ``path=``, ``factory=``, ``name=``, ``threat_model=``, ``mean=``, ``std=``
    and ``in_shape=`` are these keys (``robust_cli.cli.expand_model_shorthand``)."""

    kind: Optional[str] = None  # torchscript | python | torchvision | robustbench; null: evaluate run=<dir>
    path: Optional[str] = None  # the file: a TorchScript archive, or weights (a state dict) for the others
    factory: Optional[str] = None  # python: "pkg.module:function", called without arguments -> nn.Module
    name: Optional[str] = None  # torchvision: the architecture (resnet18); robustbench: the model name
    threat_model: str = "Linf"  # robustbench: Linf | L2 | corruptions (the leaderboard the name belongs to)
    # the per-channel normalisation the model expects, applied inside the wrapper so attacks see [0,1]
    # images; null: the model takes [0,1] images as they are
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None
    in_shape: Optional[list[int]] = None  # [C,H,W] the model takes; null: the data set's


@dataclass
class EvalConfig:
    """``robust eval``: the top-level keys of conf/eval.yaml."""

    run: Optional[str] = None  # the train run directory (or model=<kind> ...: an external model)
    model: ExternalModelConfig = field(default_factory=ExternalModelConfig)
    checkpoint: str = "model"  # run=: model (model.pt, results in eval/) | best (checkpoints/best.pt, in eval-best/)
    dataset: Any = None  # model=<kind> only: the data set to evaluate on (dataset=<name>)
    attack: Any = MISSING  # filled by the attack group: {<name>: {...params}}
    norm: Any = "l2"  # l0 | l1 | l2 | linf, or a list of them
    n_examples: Positive = 1000
    batch_size: Positive = 250
    device: str = "auto"
    seed: int = 0
    # distance | fixed: per-image distances (budget attacks: an eps search), or robust accuracy at exactly
    # the eps listed in eps.<norm> (AutoAttack's protocol, no search)
    mode: str = "distance"
    # the error reported "at eps" for each norm (the error curve of Finlay et al. Def. 4.1 read at one eps);
    # mode=fixed: a list per norm, eps.linf=[0.1,0.2,0.3], the budgets the attacks run at
    eps: dict[str, Any] = field(
        default_factory=lambda: {"l0": 10.0, "l1": 10.0, "l2": 1.0, "linf": 0.1}
    )
    # robust-accuracy thresholds per norm, merged over the run's dataset.thresholds: thresholds.l2=[0.5,1.0]
    # replaces the data set's l2 list, thresholds.l0=[] drops l0's; a norm left null keeps the data set's
    thresholds: dict[str, Optional[list[NonNegative]]] = field(
        default_factory=lambda: dict.fromkeys(("linf", "l2", "l1", "l0"))
    )
    # budget attacks: adaptive (to eps_rtol / eps_tol) | bisection | grid
    eps_search: Annotated[str, OneOf("adaptive", "bisection", "grid")] = "adaptive"
    search_steps: Positive = 10  # adaptive: rounds at most; bisection: halvings; grid: points
    eps_rtol: float = 0.01  # adaptive: each distance to this fraction of itself ...
    eps_tol: Optional[float] = None  # ... or to this absolute eps (replaces eps_rtol)
    lipschitz: bool = True  # write lipschitz.json
    # every selected attack targeted (attacks with a `targeted` option only): the attack gets a target class
    # per image and succeeds where the model predicts it; results in <attack>-targeted-<norm>/ with per_target
    targeted: bool = False
    targets: str = "random"  # random (uniform over the other classes, from seed) | next ((y + 1) mod K)
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
    # i/n: evaluate only the n-th part i of the images (whole batches); the job finishing the last shard of
    # a set merges them into the ordinary results (robust_cli.evaluation.shards)
    shard: Optional[str] = None
    # the attacks' forward passes: fp32, or bf16 / fp16 autocast; the verification of every returned image is
    # always fp32 (robust_cli.acceleration)
    precision: Annotated[str, OneOf("fp32", "bf16", "fp16")] = "fp32"
    compile: bool = False  # torch.compile the model the attacks query (the verification uses the bare model)
    merge: bool = False  # merge the finished shard sets of the run (no attack runs)
    # -m: the sweep directory <out_dir>/sweeps/eval/<name>; model=<kind>: <out_dir>/eval/external/...
    out_dir: str = "outputs"
    # csv | tensorboard | mlflow: the summaries and the error-curve figure logged there too
    logger: Annotated[str, OneOf("csv", "tensorboard", "mlflow")] = "csv"
    mlflow_uri: Optional[str] = None  # logger=mlflow: the tracking URI; null: the file store <out_dir>/mlruns


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
    split: Annotated[str, OneOf("train", "val", "test")] = "train"
    chunk_size: Positive = 2048
    device: str = "auto"
    # the first N images; a constant needs two images of different labels
    max_images: Optional[Annotated[int, Range(ge=2)]] = None


@dataclass
class ReportConfig:
    """``robust report``: tables and figures over several runs (``robust_cli.report_app``)."""

    runs: Any = MISSING  # a run dir, a glob, a sweep dir, a folder of runs, or a list of them
    by: Any = None  # the row columns (defense, model, defense.C, ...); null: every parameter that varies but seed
    metrics: Any = None  # metrics of the tidy and metrics tables; null: all (tidy), the defaults (metrics table)
    attacks: Any = None  # <attack> or <attack>-<norm> of the per-attack tables and the tidy CSV; null: all
    format: Any = field(default_factory=lambda: ["md", "csv", "tex", "html"])
    plots: bool = True
    name: Optional[str] = None  # <out_dir>/reports/<name>; null: named from the command's overrides
    out: Optional[str] = None  # the report directory itself (instead of <out_dir>/reports/<name>)
    out_dir: str = "outputs"
    force: bool = False  # replace a report directory that holds another report


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


EVAL_MODES = ("distance", "fixed")


def eps_values(value: Any, where: str) -> list[float]:
    """``eps.<norm>`` as a list of budgets (a number is a list of one); ``UserError`` unless numbers >= 0."""
    from omegaconf import ListConfig

    from robust_cli.errors import UserError

    values = list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise UserError(f"{where}={value}: expected a number or a list of numbers") from None
    shown = values if isinstance(value, (list, tuple, ListConfig)) else out[0] if out else value
    if any(v != v for v in out):
        raise UserError(f"{where}={shown}: must be a number, not nan")
    if not out or any(not v >= 0 for v in out):
        raise UserError(f"{where}={shown}: must be >= 0 (a number; a list of numbers with mode=fixed)")
    return out


def check_eval_mode(cfg: Any) -> None:
    """``mode`` is ``distance`` or ``fixed``; every ``eps.<norm>`` a number (distance) or numbers (fixed)."""
    from robust_cli.errors import UserError

    mode = str(cfg.mode)
    if mode not in EVAL_MODES:
        raise UserError(f"mode={mode}: expected one of {', '.join(EVAL_MODES)}")
    for norm, value in cfg.eps.items():
        values = eps_values(value, f"eps.{norm}")
        if mode == "distance" and not isinstance(value, (int, float)):
            raise UserError(f"eps.{norm}={values}: a list of eps needs mode=fixed (mode=distance reads one eps)")


def check_config(cfg: Any) -> None:
    """Check every model, defense and attack node of a composed config against what its code's signature
    states beyond types (``Literal`` choices, ``Range`` bounds; ``robust_cli.schema.check_options``).

    The top-level schemas' own annotations are checked too (``search_steps=0: must be >= 1``,
    ``eps.linf=-0.1``, ``split=foo``; ``robust_cli.schema.check_schema_values``), and a required value left
    out (``run``, an empty ``attack=[]``) is named with what to give.

    Raises ``UserError`` naming the key, e.g. ``attack.pgd.steps=-1: must be >= 1``.
    """
    from omegaconf import DictConfig, OmegaConf

    from robust_cli.schema import check_known_keys, check_options, check_schema_values

    from robust_cli.errors import UserError

    for key, kind in (("eps_rtol", "relative"), ("eps_tol", "absolute")):  # robust eval's search tolerances
        value = cfg.get(key) if hasattr(cfg, "get") else None
        if value is not None and not float(value) > 0:
            raise UserError(f"{key}={value}: must be > 0 (the eps search's {kind} tolerance of each distance)")
    if cfg.get("shard") is not None:
        from robust_cli.evaluation.shards import parse_shard

        parse_shard(cfg.shard)
    if isinstance(cfg.get("precision"), str):
        from robust_cli.acceleration import check_precision

        check_precision(cfg.precision)
    if "mode" in cfg and "eps" in cfg:
        check_eval_mode(cfg)
    check_required(cfg)
    check_known_keys(cfg)
    check_norm_keys(cfg)
    check_schema_values(cfg)
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


#: config nodes keyed by norm (``eps.linf=0.3``, ``thresholds.l2=[0.5,1]``, ``dataset.thresholds``)
NORM_KEYED = ("eps", "thresholds")


def check_norm_keys(node: Any, where: str = "") -> None:
    """Raise ``UserError`` for a key of a norm-keyed node (``NORM_KEYED``) that is not a norm
    (``+eps.l7=3``), which would otherwise sit unused in the run's config."""
    from omegaconf import DictConfig

    from robust_cli.errors import UserError
    from robust_cli.norms import NORMS

    if not isinstance(node, DictConfig):
        return
    for key in node:
        child = node._get_node(key)
        if not isinstance(child, DictConfig) or child._is_missing() or child._is_none():
            continue
        if key in NORM_KEYED:
            for norm in child:
                if norm not in NORMS:
                    raise UserError(f"{where}{key}.{norm}: not a norm; expected one of {', '.join(NORMS)}")
        else:
            check_norm_keys(child, f"{where}{key}.")


#: what to give for a required value left out (the key's ``???`` in the schema or YAML)
_REQUIRED_HINTS = {
    "run": "give run=<a finished train run directory>",
    "attack": "give attack=<name>, attack=[a,b] or attack=all",
    "dataset.path": "dataset=npz needs dataset.path=<file.npz> holding x_train, y_train, x_test, y_test",
}


def check_required(cfg: Any) -> None:
    """Raise ``UserError`` for the first required value a composed config leaves out (``robust eval`` with no
    ``run=``, ``attack=[]``), naming it and what to give, before any code reads it."""
    from omegaconf import OmegaConf

    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        key = missing[0]
        hint = _REQUIRED_HINTS.get(key, f"give {key}=<value>")
        given = " (attack=[] selects none)" if key == "attack" else ""
        raise UserError(f"{key} is required{given}; {hint}")


def check_job_name(hydra_cfg: Any) -> None:
    """``hydra.job.name`` names a sweep's folder under ``<out_dir>/sweeps/``: one plain name, never a path that
    leads out of it (``../../etc``) or elsewhere (``/tmp/x``)."""
    from omegaconf import OmegaConf

    name = str(OmegaConf.select(hydra_cfg, "job.name", default="") or "")
    if not name or name in (".", "..") or any(sep in name for sep in ("/", "\\")):
        raise UserError(f"hydra.job.name={name!r}: must be a plain folder name (no '/', not '..'): it names the "
                        "sweep's folder <out_dir>/sweeps/<name>")


def check_launcher(hydra_cfg: Any) -> None:
    """The values of ``hydra.launcher`` the launchers' own schemas accept but cannot run: joblib's
    ``n_jobs=0`` ("has no meaning" in joblib: >= 1 workers, or -1 for one per core)."""
    from omegaconf import OmegaConf

    target = str(OmegaConf.select(hydra_cfg, "launcher._target_", default="") or "")
    if "joblib" in target.lower():
        n_jobs = OmegaConf.select(hydra_cfg, "launcher.n_jobs", default=None)
        if n_jobs is not None and int(n_jobs) == 0:
            raise UserError("hydra.launcher.n_jobs=0: must be >= 1 (parallel jobs), or negative (-1: one per core)")


def register_configs() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent)."""
    global _registered
    if _registered:
        return
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="eval_schema", node=EvalConfig)
    cs.store(name="data_lipschitz_schema", node=DataLipschitzConfig)
    cs.store(name="report_schema", node=ReportConfig)
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
