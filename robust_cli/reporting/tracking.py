"""``logger=csv|tensorboard|mlflow``: the training history and the evaluation summaries where researchers look.

``csv`` (the default) is what every run writes anyway (``history.csv``, ``eval/summary.csv``); the other two
add to it, they replace nothing, and the run directory keeps its deterministic name:

- ``tensorboard``: event files in ``<run>/tensorboard/`` (train: the history's columns as scalars
  ``train/<column>`` per epoch; eval: ``eval/<attack>-<norm>/<number>`` and the error-curve figure as an
  image). A resumed run purges the steps after its checkpoint, so the curves hold each epoch once.
- ``mlflow``: a local file store, no server: ``<out_dir>/mlruns`` (``mlflow_uri=`` for another). One MLflow
  run per run directory, found again by its tag ``robust.dir`` (a resumed or re-evaluated run logs into the
  same MLflow run); params are the overrides, metrics the history per epoch and the evaluation's numbers,
  artifacts ``history.csv``, ``config.yaml``, ``summary.csv``, ``error_curves.csv`` and ``error_curves.png``.

Both are optional extras of the ``robust-cli`` distribution (``pip install 'robust-cli[tensorboard]'``,
``'robust-cli[mlflow]'``; from a checkout ``pip install -e '.[tensorboard,mlflow]'`` or ``make setup-extras``);
asking for one that is not installed is a one-line error before anything runs.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Any

from robust_cli.errors import UserError

LOGGERS = {"csv": None, "tensorboard": "tensorboard", "mlflow": "mlflow"}  # logger -> the module it needs
#: the numbers of an (attack, norm) summary logged as metrics
EVAL_METRICS = ("clean_error", "median_distance", "mean_distance", "error_at_eps", "success_rate", "rho_adv")


def check_logger(kind: str) -> None:
    """Refuse an unknown logger, or one whose package is missing (one line, before any run starts)."""
    if kind not in LOGGERS:
        raise UserError(f"logger={kind}: expected one of {', '.join(LOGGERS)}")
    module = LOGGERS[kind]
    if module is not None and importlib.util.find_spec(module) is None:
        raise UserError(f"logger={kind} needs the {module} package: pip install 'robust-cli[{kind}]' (or logger=csv)")


def _finite(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(float(value)):
            out[key] = float(value)
    return out


class Tracker:
    """One run directory's logger. ``csv``: nothing beyond the files the run writes anyway."""

    def __init__(self, kind: str, run_path: Path, *, experiment: str, mlflow_uri: str | None = None,
                 params: dict[str, Any] | None = None, purge_step: int | None = None):
        check_logger(kind)
        self.kind, self.path = kind, Path(os.path.abspath(run_path))
        self._tb = self._mlflow = None
        if kind == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.path / "tensorboard"), purge_step=purge_step)
        elif kind == "mlflow":
            self._mlflow = _mlflow_run(mlflow_uri, experiment, self.path, params or {})

    def log_metrics(self, prefix: str, metrics: dict[str, Any], step: int) -> None:
        metrics = _finite(metrics)
        if self._tb is not None:
            for key, value in metrics.items():
                self._tb.add_scalar(f"{prefix}/{key}", value, step)
            self._tb.flush()
        if self._mlflow is not None:
            client, run_id = self._mlflow
            for key, value in metrics.items():
                client.log_metric(run_id, f"{prefix}/{key}", value, step=step)

    def log_figure(self, tag: str, png: Path, step: int = 0) -> None:
        """The image file ``png`` (the error curves): an image in TensorBoard, an artifact in MLflow."""
        if not png.is_file():
            return
        if self._tb is not None:
            import matplotlib.image

            image = matplotlib.image.imread(str(png))[..., :3]  # [H, W, 3] floats in [0, 1]
            self._tb.add_image(tag, image, step, dataformats="HWC")
            self._tb.flush()
        if self._mlflow is not None:
            self.log_artifacts([png], tag.split("/")[0])

    def log_artifacts(self, paths: list[Path], folder: str) -> None:
        if self._mlflow is not None:
            client, run_id = self._mlflow
            for path in paths:
                if Path(path).is_file():
                    client.log_artifact(run_id, str(path), artifact_path=folder)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._mlflow is not None:
            client, run_id = self._mlflow
            client.set_terminated(run_id)


def _mlflow_run(uri: str | None, experiment: str, run_path: Path, params: dict[str, Any]):
    """``(MlflowClient, run id)`` of the MLflow run tagged with this run directory (created the first time)."""
    # MLflow 3 keeps the file store in maintenance mode behind this switch; the issue is a local store with
    # no database and no server, which is exactly that backend
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found is not None else client.create_experiment(experiment)
    runs = client.search_runs([experiment_id], filter_string=f"tags.`robust.dir` = '{run_path}'", max_results=1)
    if runs:
        run_id = runs[0].info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        run = client.create_run(experiment_id, run_name=run_path.name, tags={"robust.dir": str(run_path)})
        run_id = run.info.run_id
        for key, value in list(params.items())[:100]:
            client.log_param(run_id, key, str(value)[:500])
    return client, run_id


def mlflow_uri(cfg) -> str:
    """``mlflow_uri=`` or the file store ``<out_dir>/mlruns`` (absolute)."""
    given = cfg.get("mlflow_uri")
    return str(given) if given else "file:" + os.path.abspath(os.path.join(str(cfg.out_dir), "mlruns"))


def log_evaluation(cfg, eval_dir, results: list[tuple[Any, dict[str, Any]]], plot: Path, summary_paths) -> None:
    """Every finished (attack, norm) summary of ``eval_dir`` and the merged files, to ``cfg.logger``."""
    if cfg.logger == "csv":
        return
    tracker = Tracker(cfg.logger, eval_dir.path, experiment="robust-eval", mlflow_uri=mlflow_uri(cfg))
    try:
        for _, summary in results:
            tracker.log_metrics(f"eval/{summary['attack']}-{summary['norm']}",
                                {k: summary.get(k) for k in EVAL_METRICS}, step=int(summary.get("n", 0)))
        tracker.log_figure("eval/error_curves", plot)
        tracker.log_artifacts(list(summary_paths), "eval")
    finally:
        tracker.close()
