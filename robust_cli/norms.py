"""The four threat-model norms and their spellings, canonicalised once where a config enters the program.

Library code (attacks, defenses, the evaluation) sees only the canonical names ``l0``, ``l1``, ``l2``,
``linf``. A user may write ``2``, ``inf``, ``Linf``, ``l_inf`` ...: :func:`canonicalize_config` rewrites
every norm-valued key of a composed config (``norm``, ``penalty_norm``, and lists of them) when an app
starts and when ``robust`` validates the command line, so an unknown norm fails at compose time with one
line and nothing below the CLI ever parses a spelling.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig, open_dict

from robust_cli.errors import UserError

NORMS = ("l0", "l1", "l2", "linf")

#: accepted spellings (lower case, spaces and underscores removed) -> canonical name
ALIASES = {
    "l0": "l0", "0": "l0",
    "l1": "l1", "1": "l1", "1.0": "l1",
    "l2": "l2", "2": "l2", "2.0": "l2",
    "linf": "linf", "inf": "linf", "infinity": "linf",
}

#: config keys whose value is a norm (or a list of norms)
NORM_KEYS = ("norm", "penalty_norm", "val_norm")


def canonical_norm(value: Any, allowed: tuple[str, ...] = NORMS, *, key: str = "norm") -> str:
    """``"l0" | "l1" | "l2" | "linf"`` from a spelling (``2``, ``"inf"``, ``float("inf")``, ``"L_inf"``).

    Raises ``UserError`` (one line naming ``key`` and the accepted values) for anything else, or for a
    norm outside ``allowed``.
    """
    text = str(value).strip().lower().replace("_", "").replace(" ", "")
    canon = ALIASES.get(text)
    if canon is None or canon not in allowed:
        raise UserError(f"{key}={value!r} is not a norm here; expected one of {', '.join(allowed)}")
    return canon


def check_norm(norm: str, allowed: tuple[str, ...] = NORMS, *, who: str = "") -> str:
    """``norm`` itself if it is canonical and in ``allowed``; library code calls this, never parses."""
    if norm not in allowed:
        prefix = f"{who}: " if who else ""
        raise ValueError(f"{prefix}norm {norm!r} is not one of {allowed} (canonical names only)")
    return norm


def canonicalize_config(cfg: DictConfig, path: str = "") -> DictConfig:
    """Rewrite, in place, every ``norm``/``penalty_norm`` value below ``cfg`` to its canonical name.

    Lists (``norm=[2,inf]``) are canonicalised element by element and de-duplicated; ``hydra`` is skipped.
    Returns ``cfg``.
    """
    with open_dict(cfg):
        for key in list(cfg.keys()):
            if key == "hydra" or not isinstance(key, str):
                continue
            where = f"{path}.{key}" if path else key
            node = cfg._get_node(key)
            if node is None or node._is_missing():
                continue
            value = cfg[key]
            if isinstance(value, DictConfig):
                canonicalize_config(value, where)
            elif key in NORM_KEYS and value is not None:
                if isinstance(value, ListConfig):
                    cfg[key] = list(dict.fromkeys(canonical_norm(v, key=where) for v in value))
                else:
                    cfg[key] = canonical_norm(value, key=where)
    return cfg
