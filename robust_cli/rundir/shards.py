"""The files of a sharded evaluation (``robust eval shard=i/n``), under ``<run>/eval/shards/``::

    shards/<n>/<i>/<attack>-<norm>/per_sample.csv  shard.json       (``ShardResultDir``)

Each shard writes only its own directory (atomically, ``shard.json`` last: its presence marks a finished
shard), so shards running at once never touch each other's files; the merge (robust_cli.evaluation.shards)
reads them and writes the run's ordinary ``eval/<attack>-<norm>/`` files.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import pandas as pd

from robust_cli import io
from robust_cli.rundir.layout import EvalDir, _Dir

log = logging.getLogger(__name__)

#: the integer columns of per_sample.csv (robust_cli.evaluation.runner); every other column is float64
INT_COLUMNS = ("index", "label", "clean_pred", "adv_pred")


class ShardResultDir(_Dir):
    """``shards/<n>/<i>/<attack>-<norm>/``: one shard of one (attack, norm) pair."""

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def per_sample_path(self):
        return self.path / "per_sample.csv"

    @property
    def record_path(self):
        """``shard.json``: the shard's range, pass counts, ``||x||`` per image and the producing config."""
        return self.path / "shard.json"

    def complete(self) -> bool:
        return self.record_path.is_file() and self.per_sample_path.is_file()

    def write(self, per_sample: pd.DataFrame, record: dict[str, Any]) -> None:
        io.write_csv(self.per_sample_path, per_sample)
        io.write_json(self.record_path, record)

    def read_record(self) -> dict[str, Any]:
        """``shard.json``; ``{}`` where missing or unreadable (an unfinished shard)."""
        try:
            return io.read_json(self.record_path)
        except (OSError, json.JSONDecodeError):
            return {}

    def read_per_sample(self) -> pd.DataFrame:
        """The shard's rows, read back exactly with the runner's dtypes, so that the merged ``per_sample.csv``
        is byte for byte the one an unsharded run writes.

        ``to_csv`` writes each float64 as its shortest round-tripping repr and NaN as an empty field; the
        cells are read as text and converted by Python's correctly rounded ``float`` (numpy's ``astype`` of
        ``str`` objects), which gives back the written float bit for bit. pandas' own parser is not
        guaranteed exact (its ``float_precision="round_trip"`` option, which was, is deprecated)."""
        text = pd.read_csv(self.per_sample_path, dtype=str, keep_default_na=False)
        columns = {}
        for c in text.columns:
            cells = text[c].to_numpy(dtype=object)
            if c in INT_COLUMNS:
                columns[c] = cells.astype(np.int64)
            else:
                columns[c] = np.where(cells == "", "nan", cells).astype(np.float64)
        return pd.DataFrame(columns, columns=text.columns)


class ShardsDir(_Dir):
    """``<run>/eval/shards/``."""

    @classmethod
    def of(cls, eval_dir: EvalDir) -> ShardsDir:
        return cls(eval_dir.path / "shards")

    def result(self, count: int, index: int, attack: str, norm: str) -> ShardResultDir:
        return ShardResultDir(self.path / str(int(count)) / str(int(index)) / f"{attack}-{norm}")

    def counts(self) -> list[int]:
        """The shard counts ``n`` that have a directory here."""
        if not self.path.is_dir():
            return []
        return sorted(int(p.name) for p in self.path.iterdir() if p.is_dir() and p.name.isdigit())

    def pair_names(self, count: int) -> list[str]:
        """``<attack>-<norm>`` of every pair with at least one shard of ``count``."""
        return sorted({p.name for p in (self.path / str(int(count))).glob("*/*") if p.is_dir()})
