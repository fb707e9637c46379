"""Paired bootstrap over target models (challenges.scoring.bootstrap_tpr) and its report table."""

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from challenges import report, scoring


def _challenge(M=12, K=10, seed=0, ties=False):
    rng = np.random.default_rng(seed)
    truth = np.tile(np.r_[np.ones(K // 2), np.zeros(K // 2)], (M, 1)).astype(int)
    s = rng.random((M, K)) + 0.4 * truth
    s = s / s.max()
    return truth, (np.round(s, 1) if ties else s), rng


def _slow(truth, s, counts, fpr):
    """One replicate the obvious way: the drawn models' rows copied, one ROC over them."""
    rows = np.repeat(np.arange(len(counts)), counts)
    f, t, _ = roc_curve(truth[rows].ravel(), s[rows].ravel(), drop_intermediate=False)
    return float(np.max(t[f < fpr]))


@pytest.mark.parametrize("ties", [False, True])
def test_replicates_match_copies_scored_the_obvious_way(ties):
    truth, s, _ = _challenge(ties=ties)
    reps = scoring.bootstrap_tpr(truth, {"a": s}, fpr=0.1, n_boot=30, seed=7, chunk=7)["a"]
    draws = np.random.default_rng(7).integers(0, len(truth), size=(30, len(truth)))
    slow = [_slow(truth, s, np.bincount(d, minlength=len(truth)), 0.1) for d in draws]
    np.testing.assert_allclose(reps, slow, rtol=0, atol=1e-12)
    if not ties:  # and MICO's scorer agrees on every draw
        micos = [scoring.score(truth[d], s[d])["TPR_FPR_1000"] for d in draws]
        np.testing.assert_allclose(reps, micos, rtol=0, atol=1e-12)


def test_pairing():
    truth, s, rng = _challenge(M=30)
    other = s + rng.normal(0, 0.2, s.shape)
    other = (other - other.min()) / (other.max() - other.min())
    reps = scoring.bootstrap_tpr(truth, {"a": s, "same": 0.5 * s + 0.1, "b": other}, n_boot=400)
    assert np.array_equal(reps["a"], reps["same"])  # a monotone map: the same resamples, the same TPR
    assert scoring.paired_se(reps["a"], reps["same"]) == 0.0
    se_a, se_b = scoring.paired_se(reps["a"]), scoring.paired_se(reps["b"])
    assert 0 < scoring.paired_se(reps["a"], reps["b"]) < se_a + se_b
    # unpaired resamples of the same two attacks would give a larger SE of the difference
    b_alone = scoring.bootstrap_tpr(truth, {"b": other}, n_boot=400, seed=99)["b"]
    assert scoring.paired_se(reps["a"], reps["b"]) < scoring.paired_se(reps["a"], b_alone)


def test_standard_error_shrinks_with_more_models():
    se = []
    for M in (10, 160):
        truth, s, _ = _challenge(M=M, seed=M)
        se.append(scoring.paired_se(scoring.bootstrap_tpr(truth, {"a": s}, n_boot=300)["a"]))
    assert se[1] < se[0] / 2


def test_bad_inputs_raise():
    truth, s, _ = _challenge()
    with pytest.raises(ValueError, match="at least 2 models"):
        scoring.bootstrap_tpr(truth[:1], {"a": s[:1]})
    with pytest.raises(ValueError, match="n_boot"):
        scoring.bootstrap_tpr(truth, {"a": s}, n_boot=1)
    with pytest.raises(ValueError, match="differ in shape"):
        scoring.bootstrap_tpr(truth, {"a": s[:, :4]})
    one_class = truth.copy()
    one_class[0] = 1
    with pytest.raises(ValueError, match="both members and non-members"):
        scoring.bootstrap_tpr(one_class, {"a": s})


def test_bootstrap_table():
    reps = {"w": np.array([0.30, 0.32, 0.34]), "c": np.array([0.31, 0.33, 0.35]), "x": np.array([0.4, 0.4, 0.5])}
    point = {"w": 0.32, "c": 0.33, "x": 0.43}
    lines = report.bootstrap_table(point, reps, {"w": "winner", "c": "winner's config", "gone": "absent"})
    head = "| attack | average TPR@10%FPR (ranking metric) ± SE | Δ vs winner ± SE | Δ vs winner's config ± SE |"
    assert lines[0] == head
    assert [ln.split(" | ")[0] for ln in lines[2:]] == ["| x", "| c", "| w"]  # ranked by score
    assert lines[2] == "| x | 0.4300 ± 0.0577 | +0.1100 ± 0.0416 | +0.1000 ± 0.0416 |"
    assert lines[3].endswith("| +0.0100 ± 0.0000 | — |")


def test_versus_best_table():
    point = {"inf": {"s": 0.5, "a": 0.4, "b": 0.6}, "hi": {"s": 0.3, "a": 0.2, "b": 0.1}}
    reps = {sc: {"s": np.array([0.1, 0.3]), "a": np.array([0.1, 0.2]), "b": np.array([0.1, 0.1])} for sc in point}
    lines = report.versus_best_table(point, reps, "s", ["a", "b"])
    assert lines[2] == "| inf | 0.5000 | b | 0.6000 | -0.1000 ± 0.1414 |"
    assert lines[3] == "| hi | 0.3000 | a | 0.2000 | +0.1000 ± 0.0707 |"


def test_strata_and_scores_by_stratum():
    truth, s, _ = _challenge(M=10, seed=3)
    strata = np.r_[np.zeros(4, int), np.ones(6, int)]
    reps = scoring.bootstrap_tpr(
        truth, {"pooled": s, "halves": s}, n_boot=20, seed=2, strata=strata, by_stratum=("halves",)
    )
    rng = np.random.default_rng(2)  # the draws, stratum by stratum as the function makes them
    counts = np.zeros((20, 10), dtype=int)
    for members in (np.arange(4), np.arange(4, 10)):
        d = members[rng.integers(0, len(members), size=(20, len(members)))]
        np.add.at(counts, (np.arange(20)[:, None], d), 1)
    assert (counts[:, :4].sum(axis=1) == 4).all()  # each stratum keeps its size
    pooled = [_slow(truth, s, c, 0.1) for c in counts]
    halves = [np.mean([_slow(truth[g], s[g], c[g], 0.1) for g in (slice(0, 4), slice(4, 10))]) for c in counts]
    np.testing.assert_allclose(reps["pooled"], pooled, atol=1e-12)
    np.testing.assert_allclose(reps["halves"], halves, atol=1e-12)
    with pytest.raises(ValueError, match="one group per model"):
        scoring.bootstrap_tpr(truth, {"a": s}, strata=strata[:5])


def test_mean_over_groups():
    truth, s, _ = _challenge(M=10, seed=4)
    groups = np.r_[np.zeros(5, int), np.ones(5, int)]
    m = scoring.mean_over_groups(truth, s, groups)
    a, b = scoring.score(truth[:5], s[:5]), scoring.score(truth[5:], s[5:])
    for key in scoring.METRIC_KEYS:
        assert m[key] == pytest.approx((a[key] + b[key]) / 2)
    assert m["fpr"][0] == 0 and m["fpr"][-1] == 1 and m["tpr"][-1] == 1 and (np.diff(m["tpr"]) >= 0).all()


def test_each_phase_is_scored_on_its_own():
    """Issue 22, item 2: MICO ranked dev and final apart, and the winner as submitted min-max scales
    each phase apart; one ROC over both pooled puts two scalings under one threshold."""
    truth, s, _ = _challenge(M=12, K=10, seed=3)
    phases = np.array(["dev"] * 6 + ["final"] * 6)
    scaled = np.where(phases[:, None] == "dev", 0.5 * s, 0.5 + 0.5 * s)  # each phase scaled on its own
    m = scoring.phase_mean(truth, scaled, phases, n_boot=50)
    each = [scoring.score(truth[phases == ph], scaled[phases == ph]) for ph in ("dev", "final")]
    for key in scoring.METRIC_KEYS:
        assert m[key] == pytest.approx(np.mean([e[key] for e in each]))
    pooled = scoring.score(truth, scaled)[scoring.RANKING_KEY]
    assert m[scoring.RANKING_KEY] != pytest.approx(pooled)  # the pooled ROC would bias it
    # a rescaling of one phase alone changes nothing: each phase is scored on its own ROC
    rescaled = scoring.phase_mean(truth, np.where(phases[:, None] == "dev", s, scaled), phases, n_boot=50)
    assert {k: rescaled[k] for k in scoring.METRIC_KEYS} == pytest.approx({k: m[k] for k in scoring.METRIC_KEYS})
    for key in scoring.SE_FPRS:
        assert m[key + scoring.SE_SUFFIX] > 0
    # the replicates resample within each phase: each keeps 6 dev and 6 final models
    reps = scoring.phase_replicates(truth, {"a": scaled, "b": s}, phases, n_boot=50, seed=1)
    direct = scoring.bootstrap_tpr(
        truth, {"a": scaled, "b": s}, n_boot=50, seed=1, strata=phases, by_stratum=("a", "b")
    )
    assert all(np.array_equal(reps[k], direct[k]) for k in reps)
