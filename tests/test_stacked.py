"""The stacked attack (attacks.stacked) and holding shadows out (attacks.folds)."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from attacks import folds, stacked
from attacks.options import AttackOptions
from attacks.suite import STACK_BASE, make_attack
from tests.fake_scenario import fake_scenario, permute_membership

BASE = {label: make_attack(o) for label, o in STACK_BASE}


def _rows(data):
    rows = np.concatenate([data.phase_rows(p) for p in ("train", "dev", "final")])
    return rows, np.where(rows < data.n_shadows, rows, -1)


def test_held_out_reorders_and_relabels():
    data = fake_scenario(n_train=6)
    sub, new_row = folds.held_out(data, [4, 1])
    assert [m.model_id for m in sub.models] == [0, 2, 3, 5, 1, 4, 6, 7, 8, 9]
    assert [m.phase for m in sub.models[:6]] == ["train"] * 4 + [folds.HELD_OUT] * 2
    assert np.array_equal(sub.shadow_in, data.shadow_in[[0, 2, 3, 5]])
    assert np.array_equal(sub.runner_up_in, data.runner_up_in[[0, 2, 3, 5]])
    for old in range(len(data.models)):
        new = new_row[old]
        assert np.array_equal(sub.phi[new], data.phi[old]) and np.array_equal(sub.solutions[new], data.solutions[old])
    assert len(data.shadow_in) == 6 and data.models[1].phase == "train"  # the original is untouched
    with pytest.raises(ValueError, match="shadow rows"):
        folds.held_out(data, [6])


class _Unread(np.ndarray):
    """A cached field that fails the test when any of it is read (copied, reordered)."""

    def __getitem__(self, key):
        raise AssertionError("a field no attack of the call reads was copied")


def test_held_out_copies_a_field_only_when_read():
    """A held-out scenario reorders a field when an attack first reads it: the stacked attack's
    folds never copy the logits (4 GiB a copy at MICO's cifar10 size; bench/bench_memory.py)."""
    data = fake_scenario()
    data.fields["logits"] = np.zeros(data.phi.shape + (3,), dtype=np.float32).view(_Unread)
    rows, exclude = _rows(data)
    stacked.stacked_attack(data, rows, exclude, BASE)  # LiRA, RMIA, calibrated, entropy: phi and Mentr
    sub, new_row = folds.held_out(data, [1, 4])
    assert "logits" in sub.fields and list(sub.fields) == list(data.fields) and len(sub.fields) == 3
    assert sub.fields.get("nothing") is None
    assert sub.fields["mentr"] is sub.fields["mentr"]  # reordered once, then kept
    assert np.array_equal(sub.fields["mentr"][new_row], data.fields["mentr"])


def test_features_and_fit_predict():
    x = stacked.features([np.array([0.0, 0.5, 1.0]), np.array([0.2, 0.2, 0.2])])
    assert x.shape == (3, 2) and np.isfinite(x).all() and x[1, 0] == 0.0
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.5
    xf = np.column_stack([y + rng.normal(0, 1, 200), np.full(200, 3.0)])  # one constant feature
    p = stacked.fit_predict(xf, y, xf)
    z = (xf[:, :1] - xf[:, 0].mean()) / xf[:, 0].std()  # (S2) by hand; the constant adds nothing
    ref = LogisticRegression(C=1.0, max_iter=1000).fit(z, y).predict_proba(z)[:, 1]
    np.testing.assert_allclose(p, ref, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="both members and non-members"):
        stacked.fit_predict(xf, np.ones(200, dtype=bool), xf)


def test_target_membership_never_enters_its_scores():
    """Shuffling a train model's own membership leaves its out-of-fold stacked scores as they were
    (its signals are unchanged); scored without leave-one-out, they change, so the check can fail."""
    data = fake_scenario()
    rows, exclude = _rows(data)
    t = 3
    before = stacked.stacked_attack(data, rows, exclude, BASE)
    shuffled = permute_membership(data, t)
    after = stacked.stacked_attack(shuffled, rows, exclude, BASE)
    assert np.array_equal(before[t], after[t])
    leaky = [stacked.stacked_attack(d, rows, np.full(len(rows), -1), BASE)[t] for d in (data, shuffled)]
    assert not np.array_equal(*leaky)


def test_dev_targets_match_a_fit_by_hand():
    data = fake_scenario()
    train, targets = data.phase_rows("train"), np.concatenate([data.phase_rows("dev"), data.phase_rows("final")])
    got = stacked.stacked_attack(data, targets, np.full(len(targets), -1), BASE)
    # each base attack on fit and target rows in one call: min-max attacks share one scale
    joint = np.column_stack(
        [a(data, np.r_[train, targets], np.r_[train, np.full(len(targets), -1)]).ravel() for a in BASE.values()]
    )
    n_fit = train.size * data.challenge.shape[1]
    lx = stacked.features(joint.T)
    ref = stacked.fit_predict(lx[:n_fit], data.solutions[train].ravel(), lx[n_fit:])
    np.testing.assert_allclose(got.ravel(), ref, rtol=1e-12)


def test_stacked_attack_through_the_suite_has_power():
    data = fake_scenario(n_train=10, P=80)
    rows, exclude = _rows(data)
    scores = make_attack(AttackOptions(attack="stacked"))(data, rows, exclude)
    assert scores.shape == (len(rows), data.challenge.shape[1]) and ((scores >= 0) & (scores <= 1)).all()
    assert roc_auc_score(data.solutions[rows].ravel(), scores.ravel()) > 0.7


def test_bad_inputs_raise():
    data = fake_scenario()
    rows, exclude = _rows(data)
    with pytest.raises(ValueError, match="n_folds"):
        stacked.stacked_attack(data, rows, exclude, BASE, n_folds=1)
    with pytest.raises(ValueError, match="at least one base attack"):
        stacked.stacked_attack(data, rows, exclude, {})
    few = fake_scenario(n_train=2)  # a fold's fit: 1 train model, no shadow left for LiRA
    rows, exclude = _rows(few)
    with pytest.raises(ValueError, match="stacked: base attack LiRA offline cannot run with 1 shadows"):
        stacked.stacked_attack(few, rows, exclude, BASE)


def test_low_fpr_objective_refits_with_the_top_of_the_ranking_weighted():
    """Issue 24, item 3: 'low-fpr' refits (S4) with the fit rows above the non-members' (1 -
    FOCUS_FPR) quantile weighted FOCUS_WEIGHT times; checked against the rounds done by hand."""
    rng = np.random.default_rng(0)
    y = rng.random(2000) < 0.5
    x = np.column_stack(
        [y * 1.0 + rng.normal(0, 1, 2000), (y & (rng.random(2000) < 0.1)) * 3.0 + rng.normal(0, 1, 2000)]
    )
    new = rng.normal(0, 1, (50, 2))
    got = stacked.fit_predict(x, y, new, objective="low-fpr")
    z = (x - x.mean(axis=0)) / x.std(axis=0)
    w = np.ones(len(y))
    for _ in range(1 + stacked.FOCUS_ROUNDS):
        m = LogisticRegression(C=1.0, max_iter=1000).fit(z, y, sample_weight=w)
        p = m.predict_proba(z)[:, 1]
        w = np.where(p >= np.quantile(p[~y], 1 - stacked.FOCUS_FPR), stacked.FOCUS_WEIGHT, 1.0)
    np.testing.assert_allclose(got, m.predict_proba((new - x.mean(axis=0)) / x.std(axis=0))[:, 1], rtol=1e-10)
    assert not np.allclose(got, stacked.fit_predict(x, y, new))  # the weights change the fit
    with pytest.raises(ValueError, match="unknown stacking objective 'auc'"):
        stacked.fit_predict(x, y, new, objective="auc")
    data = fake_scenario(n_train=10, P=80)
    rows, exclude = _rows(data)
    scores = make_attack(AttackOptions(attack="stacked", stack_objective="low-fpr"))(data, rows, exclude)
    assert roc_auc_score(data.solutions[rows].ravel(), scores.ravel()) > 0.7
    with pytest.raises(ValueError, match="unknown stack_objective"):
        AttackOptions(attack="stacked", stack_objective="auc")
