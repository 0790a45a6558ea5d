"""Per-class statistics of ``summary.json``: each class's error curve read at 0, at eps and at 50%."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from robust_cli.evaluation.summary import per_class, summarize


def _frame():
    # class 0: one misclassified clean (distance 0), one at 0.1, one the attack failed on (inf)
    # class 1: distances 0.3 and 0.5;  class 4: one image at 0.2
    return pd.DataFrame({"label": [0, 0, 0, 1, 1, 4], "clean_pred": [1, 0, 0, 1, 1, 4],
                         "distance": [0.0, 0.1, math.inf, 0.3, 0.5, 0.2]})


def test_per_class_by_hand():
    got = per_class(_frame(), eps=0.25)
    assert got == {
        "0": {"n": 3, "clean_error": 1 / 3, "error_at_eps": 2 / 3, "median_distance": 0.1},
        "1": {"n": 2, "clean_error": 0.0, "error_at_eps": 0.0, "median_distance": 0.3},
        "4": {"n": 1, "clean_error": 0.0, "error_at_eps": 1.0, "median_distance": 0.2},
    }


def test_summary_holds_it_and_the_classes_add_up():
    frame = _frame()
    s = summarize(frame, attack="a", norm="l2", x_norm=np.ones(len(frame)), eps=0.25, thresholds=[],
                  seconds=0.0, forward_per_sample=0.0, backward_per_sample=0.0)
    classes = s["per_class"]
    assert sum(c["n"] for c in classes.values()) == s["n"]
    weighted = sum(c["n"] * c["error_at_eps"] for c in classes.values()) / s["n"]
    assert math.isclose(weighted, s["error_at_eps"])
