"""Tests for challenges/scoring.py (MICO scoring semantics)."""

import os

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from challenges.report import plot_roc, score_table
from challenges.scoring import FPR_THRESHOLDS, METRIC_KEYS, METRIC_LABELS, TPR_KEYS, ranking_metric, score


def test_keys():
    assert TPR_KEYS == ("TPR_FPR_10", "TPR_FPR_100", "TPR_FPR_500", "TPR_FPR_1000", "TPR_FPR_1500", "TPR_FPR_2000")
    s = score([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8])
    assert set(s) == set(METRIC_KEYS) | {"fpr", "tpr"}
    assert all(isinstance(s[k], float) for k in METRIC_KEYS)


def test_perfect_separation():
    s = score([0, 0, 0, 1, 1], [0.0, 0.1, 0.2, 0.7, 1.0])
    assert all(s[k] == 1.0 for k in TPR_KEYS)
    assert s["AUC"] == 1.0 and s["MIA"] == 1.0 and s["accuracy"] == 1.0


def test_inverted_separation():
    s = score([1, 1, 0, 0], [0.0, 0.1, 0.8, 0.9])
    assert all(s[k] == 0.0 for k in TPR_KEYS)
    assert s["AUC"] == 0.0 and s["MIA"] == 0.0 and s["accuracy"] == 0.5


def test_constant_scores():
    # roc_curve gives only (0, 0) and (1, 1): fpr < t keeps just the origin, so TPR 0
    s = score([0, 1, 0, 1, 1], [0.5] * 5)
    np.testing.assert_array_equal(s["fpr"], [0, 1])
    np.testing.assert_array_equal(s["tpr"], [0, 1])
    assert all(s[k] == 0.0 for k in TPR_KEYS)
    assert s["AUC"] == 0.5 and s["MIA"] == 0.0 and s["accuracy"] == 0.5


def test_ties():
    # the 0.5 tie holds one member and one non-member: ROC jumps (0, .5) -> (.5, 1)
    s = score([1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1])
    assert all(s[k] == 0.5 for k in TPR_KEYS)
    assert s["AUC"] == pytest.approx(3.5 / 4)
    assert s["MIA"] == 0.5 and s["accuracy"] == 0.75


def test_hand_computed_case():
    # 20 non-members (FPR steps of 0.05), 4 members.
    # ranking: M .99, M .96, N .95, M .90, N .19 .18 .17 .16, M .155, N .15 ... .01
    non = [0.95] + [0.01 * i for i in range(1, 20)]
    mem = [0.99, 0.96, 0.90, 0.155]
    s = score([0] * 20 + [1] * 4, non + mem)
    # TPR is 0.5 while FPR == 0 and 0.75 once FPR reaches 0.05; the strict "<" means
    # t = 0.05 still only sees FPR 0
    expect = {
        "TPR_FPR_10": 0.5,
        "TPR_FPR_100": 0.5,
        "TPR_FPR_500": 0.5,
        "TPR_FPR_1000": 0.75,
        "TPR_FPR_1500": 0.75,
        "TPR_FPR_2000": 0.75,
    }
    for k, v in expect.items():
        assert s[k] == v, k
    assert s["AUC"] == pytest.approx((20 + 20 + 19 + 15) / 80)
    assert s["MIA"] == pytest.approx(0.75)  # at (0.25, 1.0)
    assert s["accuracy"] == pytest.approx(0.875)  # (1 + 0.75) / 2


def test_matches_sklearn_directly():
    rng = np.random.default_rng(0)
    for _ in range(5):
        sol = rng.integers(0, 2, 2000)
        pred = np.clip(rng.normal(0.5 + 0.1 * sol, 0.2), 0, 1).round(3)  # rounding -> ties
        s = score(sol, pred)
        fpr, tpr, _ = roc_curve(sol, pred)
        for k, t in zip(TPR_KEYS, FPR_THRESHOLDS):
            assert s[k] == max(tpr[fpr < t])
        assert s["AUC"] == roc_auc_score(sol, pred)
        assert s["MIA"] == np.max(tpr - fpr)
        assert s["accuracy"] == np.max(1 - (fpr + (1 - tpr)) / 2)
        np.testing.assert_array_equal(s["fpr"], fpr)
        np.testing.assert_array_equal(s["tpr"], tpr)


def test_accepts_bool_and_2d():
    sol = np.array([[True, False], [False, True]])
    pred = np.array([[0.9, 0.1], [0.2, 0.8]], dtype=np.float32)
    assert score(sol, pred)["AUC"] == 1.0


@pytest.mark.parametrize(
    "sol,pred,msg",
    [
        ([0, 1, 1], [0.1, 0.2], "shape"),
        ([], [], "no challenge points"),
        ([0, 1, 2], [0.1, 0.2, 0.3], "only 0"),
        ([1, 1, 1], [0.1, 0.2, 0.3], "both"),
        ([0, 1, 0], [0.1, np.nan, 0.3], "NaN"),
        ([0, 1, 0], [0.1, np.inf, 0.3], "NaN"),
        ([0, 1, 0], [0.1, 1.2, 0.3], r"\[0, 1\]"),
        ([0, 1, 0], [-0.1, 0.2, 0.3], r"\[0, 1\]"),
        (["a", "b"], [0.1, 0.2], "0/1"),
        ([0, 1], ["0.1", "0.2"], "real numbers"),
    ],
)
def test_bad_inputs(sol, pred, msg):
    with pytest.raises(ValueError, match=msg):
        score(sol, pred)


def test_table_and_ranking_metric():
    a = score([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    b = score([1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1])
    by = {"cifar10_inf": a, "cifar10_hi": b}
    assert ranking_metric(by) == pytest.approx((1.0 + 0.5) / 2)
    table = score_table(by)
    lines = table.splitlines()
    assert lines[0].split() == ["scenario", *(METRIC_LABELS[k] for k in METRIC_KEYS)]
    assert lines[2].startswith("cifar10_inf") and lines[3].startswith("cifar10_hi")
    assert lines[-1] == "average TPR@10%FPR (ranking metric): 0.7500"
    assert len({len(l) for l in lines[:5]}) == 1  # fixed width
    with pytest.raises(ValueError):
        ranking_metric({})


def test_plot_roc(tmp_path):
    s = score([0, 0, 1, 1, 0, 1], [0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    path = tmp_path / "roc.png"
    plot_roc({"a": (s["fpr"], s["tpr"]), "const": ([0, 1], [0, 1])}, path, "test")
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(tmp_path) == ["roc.png"]  # no temporary left behind
    plot_roc({}, path, "")  # overwrite, empty figure
    assert os.listdir(tmp_path) == ["roc.png"]
