"""The files of a run directory and of a sweep directory: their names, readers and writers, in one place.

Train run directory (``RunDir``)::

    config.yaml  run.json  history.csv  checkpoints/last.pt  [checkpoints/best.pt]  model.pt  train.log
    train.lock  .train.lock.guard         (while a ``robust train`` owns it; the guard file stays)
    eval/  [eval-best/: checkpoint=best]  (``EvalDir``)
      <attack>-<norm>/per_sample.csv  curve.csv  summary.json     (``ResultDir``)
                      [adversarials.npz  adversarials.png]         (``save_adversarials=N``)
      summary.csv  error_curves.csv  error_curves.png  lipschitz.json  .lock
      certified/<method>-<norm>/per_sample.csv  curve.csv  summary.json  (certified radii, ``ResultDir``)
      universal/<norm>/perturbation.npz  summary.json  (``UniversalDir``, ``universal=true``)
      shards/<n>/<i>/<attack>-<norm>/per_sample.csv  shard.json   (robust_cli.rundir.shards)
    detect/summary.json  summary.csv  gradient_norms.png  (``DetectDir``, ``robust detect``)

External model (``ExternalEvalDir``, ``robust eval model=<kind>``)::

    <out_dir>/eval/external/<kind>/<label>-<digest>/model.json  + the files of eval/ above

Sweep directory (``SweepDir``, ``hydra.sweep.dir``)::

    sweep.json  jobs.csv  .jobs.lock  <job num>/job.json

Every write goes through ``robust_cli.io`` (temporary file + rename). The formats of ``model.pt`` and
``checkpoints/last.pt`` belong to ``robust_cli.training.checkpoint``; this module only says where they are.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from robust_cli import io
from robust_cli.rundir.names import train_run_dir
from robust_cli.rundir.record import RunRecord

log = logging.getLogger(__name__)


class _Dir:
    """A directory path with ``os.fspath`` support, compared and printed as its path."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.path == self.path

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.path))

    def is_dir(self) -> bool:
        return self.path.is_dir()


class ResultDir(_Dir):
    """``eval/<attack>-<norm>/``: one attack in one norm.

    ``per_sample.csv`` (one row per image: index, label, predictions, distance, perturbation sizes),
    ``curve.csv`` (``eps``, ``error``) and ``summary.json`` (the numbers, checks and the producing config).
    """

    @property
    def name(self) -> str:
        """``<attack>-<norm>``."""
        return self.path.name

    @property
    def per_sample_path(self) -> Path:
        return self.path / "per_sample.csv"

    @property
    def curve_path(self) -> Path:
        return self.path / "curve.csv"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def adversarials_path(self) -> Path:
        """``adversarials.npz`` (``save_adversarials=N``): indices, labels, predictions, clean and adversarial
        images of the first N successes."""
        return self.path / "adversarials.npz"

    @property
    def adversarials_plot_path(self) -> Path:
        """``adversarials.png``: their grid (clean / adversarial / amplified difference)."""
        return self.path / "adversarials.png"

    def complete(self) -> bool:
        """All three files exist (a result written by ``write``)."""
        return all(p.is_file() for p in (self.summary_path, self.per_sample_path, self.curve_path))

    def write(self, per_sample: pd.DataFrame, curve: pd.DataFrame, summary: dict[str, Any]) -> None:
        """Write the three files, ``summary.json`` last (its presence marks a finished result)."""
        io.write_csv(self.per_sample_path, per_sample)
        io.write_csv(self.curve_path, curve)
        self.write_summary(summary)

    def read_summary(self) -> dict[str, Any]:
        """``summary.json``; raises ``OSError`` / ``ValueError`` when missing or unreadable."""
        return io.read_json(self.summary_path)

    def write_summary(self, summary: dict[str, Any]) -> None:
        io.write_json(self.summary_path, summary)

    def read_per_sample(self) -> pd.DataFrame:
        return pd.read_csv(self.per_sample_path)

    def read_curve(self) -> pd.DataFrame:
        return pd.read_csv(self.curve_path)


class UniversalDir(_Dir):
    """``eval/universal/<norm>/``: a universal perturbation (``robust eval universal=true``):
    ``perturbation.npz`` (``v [C,H,W]``) and ``summary.json`` (eps, fooling rates, images used)."""

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def perturbation_path(self) -> Path:
        return self.path / "perturbation.npz"

    def write(self, summary: dict[str, Any], v) -> None:
        io.write_npz(self.perturbation_path, v=v)
        io.write_json(self.summary_path, summary)

    def read_summary(self) -> dict[str, Any]:
        return io.read_json(self.summary_path)


class EvalDir(_Dir):
    """``<run>/eval/``: what ``robust eval`` writes (the per-pair results and the merged files)."""

    def result(self, attack: str, norm: str) -> ResultDir:
        """The result directory of one (attack, norm) pair (it may not exist yet)."""
        return ResultDir(self.path / f"{attack}-{norm}")

    def results(self) -> list[tuple[ResultDir, dict[str, Any]]]:
        """``[(result directory, summary)]`` of every finished evaluation, sorted by directory name.

        A ``summary.json`` that cannot be read (a foreign file: ours are written atomically) is skipped
        with a warning.
        """
        return self._summaries("*/summary.json")

    def _summaries(self, pattern: str) -> list[tuple[ResultDir, dict[str, Any]]]:
        out = []
        for path in sorted(self.path.glob(pattern)):
            result = ResultDir(path.parent)
            try:
                out.append((result, result.read_summary()))
            except (OSError, json.JSONDecodeError) as err:
                log.warning("skipping unreadable %s: %s", path, err)
        return out

    def certified(self, method: str, norm: str) -> ResultDir:
        """``certified/<method>-<norm>/``: certified radii of one bound method (``robust_cli.certification``);
        kept out of ``results()`` so that no worst case mixes radii with adversarial distances."""
        return ResultDir(self.path / "certified" / f"{method}-{norm}")

    def universal(self, norm: str) -> UniversalDir:
        """``universal/<norm>/``: the universal perturbation of one norm."""
        return UniversalDir(self.path / "universal" / norm)

    def certified_results(self) -> list[tuple[ResultDir, dict[str, Any]]]:
        """``[(certified result directory, summary)]``, sorted; unreadable summaries skipped with a warning."""
        return self._summaries("certified/*/summary.json")

    @property
    def summary_path(self) -> Path:
        """``summary.csv``: one row per (attack, norm) and per norm's worst case."""
        return self.path / "summary.csv"

    @property
    def curves_path(self) -> Path:
        """``error_curves.csv``: the long table (attack, norm, eps, error)."""
        return self.path / "error_curves.csv"

    @property
    def plot_path(self) -> Path:
        """``error_curves.png``."""
        return self.path / "error_curves.png"

    @property
    def lipschitz_path(self) -> Path:
        return self.path / "lipschitz.json"

    def write_merged(self, summary: pd.DataFrame, curves: pd.DataFrame) -> None:
        """Write ``summary.csv`` and ``error_curves.csv``."""
        io.write_csv(self.summary_path, summary)
        io.write_csv(self.curves_path, curves)

    def read_lipschitz(self) -> dict[str, Any]:
        """``lipschitz.json``, or ``{}`` where it was not written yet."""
        return io.read_json(self.lipschitz_path) if self.lipschitz_path.is_file() else {}

    def write_lipschitz(self, stats: dict[str, Any]) -> None:
        io.write_json(self.lipschitz_path, stats)

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """An exclusive lock (``.lock``) for writing: concurrent ``robust eval`` calls (``-m`` jobs, two
        commands at once) write their results and merge one after another."""
        return io.file_lock(self.path / ".lock")

    def remove_temp_files(self) -> list[Path]:
        """Delete the temporary files killed writes left in ``eval/`` and its result folders (call it holding
        ``lock``: every writer of ``eval/`` holds it, so no temp file there is a live write's)."""
        merged = [self.summary_path, self.curves_path, self.plot_path, self.lipschitz_path]
        results = [p for d in self.path.iterdir() if d.is_dir()
                   for p in (ResultDir(d).per_sample_path, ResultDir(d).curve_path, ResultDir(d).summary_path)]
        return [tmp for path in merged + results for tmp in io.remove_temp_files(path)]


class ExternalEvalDir(EvalDir):
    """``<out_dir>/eval/external/<kind>/<label>-<digest>/`` (``names.external_eval_dir``): what ``robust eval
    model=<kind>`` writes for a model ``robust train`` did not make. The layout of ``eval/`` (results per
    pair, merged files) plus ``model.json``: the spec, the file's SHA-256 and the data set evaluated on."""

    @property
    def spec_path(self) -> Path:
        return self.path / "model.json"

    def read_spec(self) -> dict[str, Any] | None:
        return io.read_json(self.spec_path) if self.spec_path.is_file() else None

    def write_spec(self, spec: dict[str, Any]) -> None:
        io.write_json(self.spec_path, spec)


class DetectDir(_Dir):
    """``<run>/detect/``: what ``robust detect`` writes: ``summary.json`` (threshold, FPRs, every attack's
    detection numbers, the evasive attack's), ``summary.csv`` (one row per attack and norm) and
    ``gradient_norms.png`` (histograms of the detector score)."""

    @property
    def summary_json_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.csv"

    @property
    def plot_path(self) -> Path:
        return self.path / "gradient_norms.png"

    def write(self, summary: dict[str, Any], table: pd.DataFrame) -> None:
        io.write_csv(self.summary_path, table)
        io.write_json(self.summary_json_path, summary)


class RunDir(_Dir):
    """A train run directory: the only thing ``robust train`` hands to ``robust eval``.

    ``RunDir(path)`` names an existing or future directory; ``RunDir.of_train(cfg, overrides)`` the
    deterministic one of a training command (see ``robust_cli.rundir.names``).
    """

    @classmethod
    def of_train(cls, cfg, overrides: list[str]) -> RunDir:
        """``<out_dir>/train/<dataset>/<model>/<defense>/<run name>``, or ``cfg.run_dir`` when given.

        Refused (``UserError``) inside another run directory (its ``eval/`` included): a run there would
        mix its files with that run's, and ``robust eval`` would read them as results."""
        run = cls(train_run_dir(cfg, overrides))
        outer = run.enclosing_run()
        if outer is not None:
            from robust_cli.errors import UserError

            given = f"run_dir={cfg.run_dir}" if cfg.get("run_dir") else f"out_dir={cfg.out_dir}"
            raise UserError(f"{given} puts the run inside the run directory {outer}; give a directory "
                            "outside every run directory")
        return run

    def enclosing_run(self) -> RunDir | None:
        """The train run directory (one holding ``run.json``) this path lies strictly inside, or None."""
        for parent in Path(os.path.abspath(self.path)).parents:
            if RunDir(parent).has_record():
                return RunDir(parent)
        return None

    # ------------------------------------------------------------------ paths
    @property
    def config_path(self) -> Path:
        """``config.yaml``: the composed config, resolved."""
        return self.path / "config.yaml"

    @property
    def record_path(self) -> Path:
        """``run.json`` (see ``RunRecord``)."""
        return self.path / "run.json"

    @property
    def history_path(self) -> Path:
        """``history.csv``: one row per completed epoch."""
        return self.path / "history.csv"

    @property
    def checkpoint_path(self) -> Path:
        """``checkpoints/last.pt``: the checkpoint of the last completed epoch."""
        return self.path / "checkpoints" / "last.pt"

    @property
    def best_checkpoint_path(self) -> Path:
        """``checkpoints/best.pt``: the model of the epoch with the highest robust validation accuracy
        (``val_attack=``; the format of ``model.pt``, see ``robust_cli.training.checkpoint``)."""
        return self.path / "checkpoints" / "best.pt"

    @property
    def model_path(self) -> Path:
        """``model.pt``: the finished model."""
        return self.path / "model.pt"

    @property
    def log_path(self) -> Path:
        """``train.log``."""
        return self.path / "train.log"

    @property
    def eval(self) -> EvalDir:
        """``eval/``."""
        return EvalDir(self.path / "eval")

    @property
    def best_eval(self) -> EvalDir:
        """``eval-best/``: ``robust eval checkpoint=best`` (the model of ``checkpoints/best.pt``), apart from
        ``eval/`` so that neither evaluation replaces the other's results."""
        return EvalDir(self.path / "eval-best")

    @property
    def detect(self) -> DetectDir:
        """``detect/``."""
        return DetectDir(self.path / "detect")

    def train_files(self) -> list[Path]:
        """Every file ``robust train`` writes (their temporary files are the run's own leftovers)."""
        return [self.config_path, self.record_path, self.history_path, self.checkpoint_path,
                self.best_checkpoint_path, self.model_path]

    # ------------------------------------------------------------------ one writer: train.lock
    @property
    def lock_path(self) -> Path:
        """``train.lock``: host, pid and start time of the ``robust train`` process that owns the run."""
        return self.path / "train.lock"

    @property
    def lock_guard_path(self) -> Path:
        """``.train.lock.guard``: flocked while a process creates, takes over or removes ``train.lock``."""
        return self.path / ".train.lock.guard"

    def owner_lock(self) -> io.OwnerLock:
        """The run's owner lock (``robust_cli.io.OwnerLock``: the staleness rule, the heartbeat)."""
        return io.OwnerLock(self.lock_path, self.lock_guard_path)

    def remove_temp_files(self) -> list[Path]:
        """Delete the temporary files of killed writes of ``train_files`` (call it as the lock's owner)."""
        return [tmp for path in self.train_files() for tmp in io.remove_temp_files(path)]

    # ------------------------------------------------------------------ run.json
    def has_record(self) -> bool:
        return self.record_path.is_file()

    def record(self) -> RunRecord:
        """``run.json`` (read when it exists, else empty until its first ``save``)."""
        return RunRecord(self.record_path)

    def status(self) -> str | None:
        """The status in ``run.json`` (running / interrupted / failed / done); None without one."""
        return self.record().status if self.has_record() else None

    # ------------------------------------------------------------------ config.yaml
    def write_config(self, cfg) -> None:
        """``config.yaml`` from a DictConfig, interpolations resolved."""
        from omegaconf import OmegaConf

        io.write_text(self.config_path, OmegaConf.to_yaml(cfg, resolve=True))

    def read_config(self):
        """``config.yaml`` as a DictConfig (empty where there is none: a foreign run directory)."""
        from omegaconf import DictConfig, OmegaConf

        from robust_cli.errors import UserError

        if not self.config_path.is_file():
            return OmegaConf.create({})
        try:
            cfg = OmegaConf.load(self.config_path)
        except Exception as err:  # yaml's errors are many classes; each means the file is not a config
            first = " ".join(str(err).split())[:200]
            raise UserError(f"{self.config_path} is not a readable YAML config ({first}); restore it, or remove "
                            "it (robust eval then uses model.pt's own config)") from None
        if not isinstance(cfg, DictConfig):
            raise UserError(f"{self.config_path} holds a YAML {type(cfg).__name__}, not a config mapping; restore "
                            "it, or remove it (robust eval then uses model.pt's own config)")
        return cfg

    # ------------------------------------------------------------------ history.csv
    def write_history(self, rows: list[dict[str, Any]]) -> None:
        """``history.csv`` from the list of epoch rows (dicts), atomically."""
        io.write_csv(self.history_path, pd.DataFrame(rows))

    def read_history(self) -> pd.DataFrame | None:
        """``history.csv``; None where it is missing or empty."""
        try:
            history = pd.read_csv(self.history_path)
        except (FileNotFoundError, pd.errors.EmptyDataError, OSError):
            return None
        return None if history.empty else history


class SweepDir(_Dir):
    """``hydra.sweep.dir`` of a multirun: ``sweep.json`` (the expected jobs), ``jobs.csv`` (one row per
    job) and each job's record ``<job num>/job.json`` (see ``robust_cli.sweep``)."""

    RECORD = "job.json"

    @property
    def expected_path(self) -> Path:
        """``sweep.json``, written by the submitting process before the jobs launch."""
        return self.path / "sweep.json"

    @property
    def summary_path(self) -> Path:
        """``jobs.csv``."""
        return self.path / "jobs.csv"

    @staticmethod
    def record_path(job_dir: str | os.PathLike) -> Path:
        """The record of the job working in ``job_dir`` (``hydra.runtime.output_dir``)."""
        return Path(job_dir) / SweepDir.RECORD

    @staticmethod
    def read_record(job_dir: str | os.PathLike) -> dict[str, Any]:
        """The record of the job working in ``job_dir``; ``{}`` where it is missing or unreadable."""
        path = SweepDir.record_path(job_dir)
        try:
            return io.read_json(path) if path.exists() else {}
        except (OSError, json.JSONDecodeError):
            return {}

    @staticmethod
    def write_record(job_dir: str | os.PathLike, record: dict[str, Any]) -> None:
        io.write_json(SweepDir.record_path(job_dir), record)

    def job_dir(self, num: int) -> Path:
        """``<sweep dir>/<num>``: the job's directory where Hydra gives none."""
        return self.path / str(num)

    def records(self) -> Iterator[tuple[Path, dict[str, Any]]]:
        """``(path, record)`` of every readable job record under the sweep directory."""
        for path in self.path.glob(f"*/{self.RECORD}"):
            try:
                yield path, io.read_json(path)
            except (OSError, json.JSONDecodeError):
                continue

    def read_expected(self) -> dict[str, Any] | None:
        """``sweep.json``; None where the submitting process wrote none."""
        return io.read_json(self.expected_path) if self.expected_path.exists() else None

    def write_expected(self, content: dict[str, Any]) -> None:
        io.write_json(self.expected_path, content)

    def write_summary(self, frame: pd.DataFrame) -> None:
        io.write_csv(self.summary_path, frame)

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """An exclusive lock (``.jobs.lock``): concurrent jobs regenerate ``jobs.csv`` one at a time."""
        return io.file_lock(self.path / ".jobs.lock")
