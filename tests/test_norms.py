"""Norm spellings are canonicalised once, where a config enters the program; library code sees l0/l1/l2/linf."""

from __future__ import annotations

import pytest

from robust_cli.errors import UserError
from robust_cli.norms import canonical_norm, canonicalize_config, check_norm


@pytest.mark.parametrize("spelling,canon", [("2", "l2"), (2, "l2"), ("inf", "linf"), (float("inf"), "linf"),
                                            ("L_inf", "linf"), ("l1", "l1"), (1.0, "l1"), ("0", "l0")])
def test_spellings(spelling, canon):
    assert canonical_norm(spelling) == canon


def test_eval_and_defense_norms_are_canonical_after_the_boundary(hydra_compose):
    cfg = canonicalize_config(hydra_compose("eval", overrides=["run=x", "norm=[2,inf,l2]"]))
    assert list(cfg.norm) == ["l2", "linf"]  # de-duplicated, in order
    cfg = canonicalize_config(hydra_compose("train", overrides=["defense=pgd_at", "defense.norm=2",
                                                                "defense.penalty_norm=inf"]))
    assert (cfg.defense.norm, cfg.defense.penalty_norm) == ("l2", "linf")


def test_unknown_norms_are_one_line_errors(hydra_compose):
    with pytest.raises(UserError, match=r"norm='l3' is not a norm here; expected one of l0, l1, l2, linf"):
        canonicalize_config(hydra_compose("eval", overrides=["run=x", "norm=l3"]))
    with pytest.raises(UserError, match="defense.penalty_norm"):
        canonicalize_config(hydra_compose("train", overrides=["defense=lip", "defense.penalty_norm=3"]))


def test_library_code_takes_canonical_names_only():
    assert check_norm("l2") == "l2"
    with pytest.raises(ValueError, match="canonical names only"):
        check_norm("2")
    from robust_cli.defenses.lip import Lip

    with pytest.raises(ValueError):
        Lip(penalty_norm="inf")  # the CLI boundary canonicalises; the library does not parse spellings
