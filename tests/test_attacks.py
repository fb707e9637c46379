"""Tests for attacks/rmia.py, attacks/baselines.py and attacks/classifier.py.

Constructed cases with a known right answer (perfect separation, no
information), leave-one-out checks, and slow obvious references.
"""

import numpy as np
import pytest
from scipy.special import expit
from sklearn.ensemble import ExtraTreesClassifier
from sklearn.metrics import roc_auc_score

from attacks.baselines import (
    calibrated,
    confidence_attack,
    entropy_attack,
    loss_attack,
    loss_from_phi,
    minmax,
    point_moments,
    prob_from_phi,
)
from attacks.classifier import classifier_attack
from attacks.rmia import population, rmia
from challenges.scoring import score

SMALL_TREES = ExtraTreesClassifier(n_estimators=20, min_samples_leaf=5, n_jobs=1, random_state=0)


# --------------------------------------------------------------------------- #
# constructed problems
# --------------------------------------------------------------------------- #
def make_scenario(seed, *, S=24, T=6, K=30, E=40, V=1, C=0, gap=8.0, noise=0.1, informative=True, n_loo=3):
    """A MICO-like scenario with a known answer.

    Pool: T*K challenge points (target t owns block t) + E "easy" points no
    target is challenged on.  Every model (shadow or target) has
    phi = base + gap * member + noise; challenge points have
    base ~ U(-1.5, 1.5), easy points base = 3.  Targets train on half of
    their own points and on every easy point, on no other target's points.
    The first ``n_loo`` targets are shadows (rows 0..n_loo-1, exclude set):
    their pool membership is rewritten to the target pattern, so the
    scenario is consistent.  ``informative=False``: membership has no effect
    on any signal.

    Why separable for every attack: members have phi >= base + gap - ~0.5 >=
    6, non-members phi <= ~2 (challenge points).  For RMIA (a = 0.3,
    offline) a member x has LR >= 1 / (0.65 * sigmoid(1.6) + 0.35) ~ 1.13,
    every non-member (x or z) LR <= ~0.95 and an easy z (a member of every
    target) LR ~ 1.03: a member beats every z (score 1), a non-member never
    beats the easy z's (score < 1).
    """
    rng = np.random.default_rng(seed)
    P = T * K + E
    idx = np.arange(T * K).reshape(T, K)
    base = np.concatenate([rng.uniform(-1.5, 1.5, T * K), np.full(E, 3.0)])
    shadow_in = rng.random((S, P)) < 0.5
    target_in = np.zeros((T, P), dtype=bool)
    for t in range(T):  # half of the own points, chosen at random; all easy points
        target_in[t, idx[t, rng.permutation(K)[: K // 2]]] = True
    target_in[:, T * K :] = True
    shadow_in[:n_loo] = target_in[:n_loo]

    def signals(member, n):
        eff = gap * member if informative else 0.0
        phi = base[None, :, None] + np.asarray(eff, dtype=float)[..., None] + noise * rng.normal(size=(n, P, V))
        return phi.astype(np.float32)

    shadow_phi = signals(shadow_in, S)
    target_phi = signals(target_in, T)
    target_phi[:n_loo] = shadow_phi[:n_loo]
    exclude = np.full(T, -1)
    exclude[:n_loo] = np.arange(n_loo)
    # Mentr is decreasing in the true-class margin; a smooth stand-in
    shadow_mentr = np.log1p(np.exp(-shadow_phi)).astype(np.float32)
    target_mentr = np.log1p(np.exp(-target_phi)).astype(np.float32)
    out = dict(
        shadow_phi=shadow_phi,
        target_phi=target_phi,
        shadow_in=shadow_in,
        idx=idx,
        exclude=exclude,
        truth=target_in[np.arange(T)[:, None], idx],
        shadow_mentr=shadow_mentr,
        target_mentr=target_mentr,
    )
    if C:

        def logits(phi):
            z = rng.normal(size=phi.shape + (C,)).astype(np.float32)
            z[..., 0] = phi + np.log(C - 1)  # class 0 is the true class; phi ~ margin
            return z

        out["shadow_logits"] = logits(shadow_phi)
        out["target_logits"] = logits(target_phi)
    return out


def on_challenge(d, key):
    """Target array (T, P, ...) -> (T, K, ...) on each target's own challenge points."""
    T = d["idx"].shape[0]
    return d[key][np.arange(T)[:, None], d["idx"]]


def check_scores(sc, shape):
    assert sc.shape == shape
    assert sc.dtype == np.float64
    assert np.isfinite(sc).all() and sc.min() >= 0 and sc.max() <= 1


def assert_perfect(truth, sc):
    m = score(truth.astype(int).ravel(), sc.ravel())
    assert m["AUC"] == 1.0
    assert m["TPR_FPR_10"] == 1.0


def assert_chance(truth, sc, tol=0.05):
    auc = roc_auc_score(truth.ravel(), sc.ravel())
    assert abs(auc - 0.5) < tol, auc


# all attacks through one interface: d -> (T, K) scores
def run_rmia(d, **kw):
    return rmia(expit(d["target_phi"]), expit(d["shadow_phi"]), d["shadow_in"], d["idx"], d["exclude"], **kw)


ATTACKS = {
    "rmia_offline": lambda d: run_rmia(d),
    "rmia_online": lambda d: run_rmia(d, online=True),
    "rmia_online_all": lambda d: run_rmia(d, online=True, online_weighting="all"),
    "rmia_phi_mean": lambda d: rmia(
        d["target_phi"], d["shadow_phi"], d["shadow_in"], d["idx"], d["exclude"], from_phi=True, views="mean"
    ),
    "loss": lambda d: loss_attack(loss_from_phi(on_challenge(d, "target_phi"))),
    "confidence": lambda d: confidence_attack(prob_from_phi(on_challenge(d, "target_phi"))),
    "entropy": lambda d: entropy_attack(on_challenge(d, "target_mentr")),
    "entropy_cal": lambda d: entropy_attack(
        on_challenge(d, "target_mentr"), d["shadow_mentr"], d["shadow_in"], d["idx"], d["exclude"], mode="mid"
    ),
    "cal_in": lambda d: calibrated(
        on_challenge(d, "target_phi"), d["shadow_phi"], d["shadow_in"], d["idx"], d["exclude"], mode="in"
    ),
    "cal_mid": lambda d: calibrated(
        -loss_from_phi(on_challenge(d, "target_phi")),
        -loss_from_phi(d["shadow_phi"]),
        d["shadow_in"],
        d["idx"],
        d["exclude"],
        mode="mid",
    ),
    "cal_z": lambda d: calibrated(
        on_challenge(d, "target_phi"), d["shadow_phi"], d["shadow_in"], d["idx"], d["exclude"], mode="z"
    ),
    "classifier": lambda d: classifier_attack(
        on_challenge(d, "target_phi"),
        on_challenge(d, "target_mentr"),
        d["shadow_phi"],
        d["shadow_mentr"],
        d["shadow_in"],
        d["idx"],
        d["exclude"],
        estimator=SMALL_TREES,
        max_train=8000,
    ),
}


# --------------------------------------------------------------------------- #
# known answers
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("name", list(ATTACKS))
def test_perfect_separation(name):
    d = make_scenario(1, V=2 if name.startswith("rmia") else 1)
    sc = ATTACKS[name](d)
    check_scores(sc, d["idx"].shape)
    assert_perfect(d["truth"], sc)


def test_perfect_separation_rmia_views_and_classifier_logits():
    d = make_scenario(2, V=3, C=6)
    for views in ("vote", "mean"):
        sc = run_rmia(d, views=views)
        check_scores(sc, d["idx"].shape)
        assert_perfect(d["truth"], sc)
    sc = classifier_attack(
        on_challenge(d, "target_phi"),
        on_challenge(d, "target_mentr"),
        d["shadow_phi"],
        d["shadow_mentr"],
        d["shadow_in"],
        d["idx"],
        d["exclude"],
        target_logits=on_challenge(d, "target_logits"),
        shadow_logits=d["shadow_logits"],
        estimator=SMALL_TREES,
        max_train=8000,
    )
    check_scores(sc, d["idx"].shape)
    assert_perfect(d["truth"], sc)
    sc = classifier_attack(
        on_challenge(d, "target_phi"),
        on_challenge(d, "target_mentr"),
        d["shadow_phi"],
        d["shadow_mentr"],
        d["shadow_in"],
        d["idx"],
        d["exclude"],
        calibration=False,
        estimator=SMALL_TREES,
        max_train=8000,
    )
    assert_perfect(d["truth"], sc)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_no_information_gives_chance(name):
    d = make_scenario(3, S=16, T=16, K=200, E=100, informative=False, noise=1.0, n_loo=8)
    sc = ATTACKS[name](d)
    check_scores(sc, d["idx"].shape)
    assert_chance(d["truth"], sc)


# --------------------------------------------------------------------------- #
# leave-one-out
# --------------------------------------------------------------------------- #
def _drop_shadow(d, e):
    """The same scenario with shadow e removed and no leave-one-out for the targets."""
    keep = np.arange(d["shadow_phi"].shape[0]) != e
    return dict(
        d,
        shadow_phi=d["shadow_phi"][keep],
        shadow_mentr=d["shadow_mentr"][keep],
        shadow_in=d["shadow_in"][keep],
        exclude=np.full(len(d["exclude"]), -1),
    )


LOO_ATTACKS = dict(ATTACKS)
# with the plain mean over all shadows and gamma = 1, adding the target's own p to every
# Pr leaves each comparison p_x / A_x > p_z / A_z unchanged (A = sum over the other
# shadows), so leave-one-out is immaterial there: test it with gamma != 1
LOO_ATTACKS["rmia_online_all"] = lambda d: run_rmia(d, online=True, online_weighting="all", gamma=1.5)


@pytest.mark.parametrize(
    "name",
    ["rmia_offline", "rmia_online", "rmia_online_all", "rmia_phi_mean", "cal_in", "cal_mid", "cal_z", "entropy_cal"],
)
def test_leave_one_out_equals_dropping_the_shadow(name):
    d = make_scenario(4, S=8, V=2, gap=1.5, noise=0.7)
    attack = LOO_ATTACKS[name]
    with_loo = attack(d)
    for t in range(3):
        without = attack(_drop_shadow(d, t))
        if name.startswith("rmia"):  # per-target scores: compare directly
            np.testing.assert_allclose(with_loo[t], without[t], rtol=0, atol=1e-12)
        else:  # one min-max over the call: compare the ranking within the target
            np.testing.assert_array_equal(np.argsort(with_loo[t], kind="stable"), np.argsort(without[t], kind="stable"))
    # and it matters: without leave-one-out the target's own signal is in its statistics
    no_loo = attack(dict(d, exclude=np.full(len(d["exclude"]), -1)))
    assert not np.allclose(no_loo[:3], with_loo[:3])


def test_calibrated_leave_one_out_raw_statistic():
    # before the global min-max: compare the statistics via a common affine map
    d = make_scenario(5, gap=1.0, noise=0.7)
    tgt = on_challenge(d, "target_phi")
    a = calibrated(tgt[:1], d["shadow_phi"], d["shadow_in"], d["idx"][:1], d["exclude"][:1], mode="mid")
    b = calibrated(
        tgt[:1], np.delete(d["shadow_phi"], 0, 0), np.delete(d["shadow_in"], 0, 0), d["idx"][:1], None, mode="mid"
    )
    np.testing.assert_allclose(a, b, atol=1e-12)


def test_classifier_leave_one_out_ignores_the_target_shadow():
    d = make_scenario(6, S=12, gap=1.0, noise=0.7)
    kw = dict(estimator=SMALL_TREES, max_train=1500, seed=3)
    args = (on_challenge(d, "target_phi"), on_challenge(d, "target_mentr"))
    base = classifier_attack(*args, d["shadow_phi"], d["shadow_mentr"], d["shadow_in"], d["idx"], d["exclude"], **kw)
    # scramble everything the shadows know about shadow 0 (= target 0)
    rng = np.random.default_rng(0)
    phi, men, mem = d["shadow_phi"].copy(), d["shadow_mentr"].copy(), d["shadow_in"].copy()
    phi[0] = rng.normal(size=phi[0].shape) * 5
    men[0] = rng.random(men[0].shape)
    mem[0] = ~mem[0]
    changed = classifier_attack(*args, phi, men, mem, d["idx"], d["exclude"], **kw)
    np.testing.assert_array_equal(changed[0], base[0])
    # dev/final targets (exclude -1) do use shadow 0
    assert not np.array_equal(changed[3:], base[3:])


# --------------------------------------------------------------------------- #
# slow references
# --------------------------------------------------------------------------- #
def rmia_reference(tp, sp, member, idx, excl, Z, *, a, gamma, online, weighting, views):
    """One target, one point, one population point at a time, from the docstring."""
    T, K = idx.shape
    S, P, V = sp.shape
    if views == "mean":
        tp, sp, V = tp.mean(-1, keepdims=True), sp.mean(-1, keepdims=True), 1

    def pr(t, q, v):
        keep = [s for s in range(S) if s != excl[t]]
        vin = [sp[s, q, v] for s in keep if member[s, q]]
        vout = [sp[s, q, v] for s in keep if not member[s, q]]
        off = (1 + a) / 2 * np.mean(vout) + (1 - a) / 2 if vout else None
        if not online:
            val = off if vout else np.mean(vin)
        elif weighting == "all":
            val = np.mean(vin + vout)
        elif vin and vout:
            val = (np.mean(vin) + np.mean(vout)) / 2
        else:
            val = off if vout else np.mean(vin)
        return max(val, 1e-300)

    out = np.empty((T, K))
    for t in range(T):
        for k in range(K):
            x = idx[t, k]
            won = 0
            for z in Z[t]:
                votes = sum(tp[t, x, v] / pr(t, x, v) > gamma * (tp[t, z, v] / pr(t, z, v)) for v in range(V))
                won += votes > V / 2
            out[t, k] = won / len(Z[t])
    return out


@pytest.mark.parametrize(
    "online,weighting,views,V,gamma,a",
    [
        (False, "balanced", "vote", 1, 1.0, 0.3),
        (False, "balanced", "vote", 3, 1.5, 0.0),
        (False, "balanced", "vote", 2, 1.0, 1.0),  # even V: ties lose
        (True, "balanced", "vote", 3, 0.7, 0.3),
        (True, "all", "mean", 3, 1.0, 0.3),
        (False, "balanced", "mean", 2, 2.0, 0.5),
    ],
)
def test_rmia_matches_slow_reference(online, weighting, views, V, gamma, a):
    rng = np.random.default_rng(7)
    S, P, T, K = 6, 30, 4, 5
    member = rng.random((S, P)) < 0.5
    member[:, 0] = True  # point 0: no OUT shadow (fallback)
    member[:, 1] = False  # point 1: no IN shadow (online fallback)
    member[1:, 2] = False  # point 2: one IN shadow, the excluded one for target 0
    sp = rng.random((S, P, V))
    sp[:, 3] = 0.5  # identical shadow values: ties in LR
    tp = rng.random((T, P, V))
    tp[:, 3] = 0.5
    idx = np.stack([rng.choice(P, K, replace=False) for _ in range(T)])
    idx[0, :4] = [0, 1, 2, 3]
    excl = np.array([0, 3, -1, 5])
    kw = dict(a=a, gamma=gamma, online=online, weighting=weighting, views=views)
    opts = dict(a=a, gamma=gamma, online=online, online_weighting=weighting, views=views)
    got = rmia(tp, sp, member, idx, excl, **opts, n_population=12, seed=11, chunk=3)
    Z = population(idx, P, 12, 11)
    np.testing.assert_allclose(got, rmia_reference(tp, sp, member, idx, excl, Z, **kw), rtol=0, atol=1e-12)
    # all the non-own pool points, chunk larger than T
    got = rmia(tp, sp, member, idx, excl, **opts, n_population=10**6, seed=1, chunk=100)
    Z = population(idx, P, 10**6, 1)
    assert Z.shape == (T, P - K)
    np.testing.assert_allclose(got, rmia_reference(tp, sp, member, idx, excl, Z, **kw), rtol=0, atol=1e-12)


def test_population_sampling():
    rng = np.random.default_rng(0)
    P, T, K = 500, 7, 20
    idx = np.stack([rng.choice(P, K, replace=False) for _ in range(T)])
    Z = population(idx, P, 100, seed=5)
    assert Z.shape == (T, 100)
    for t in range(T):
        assert len(set(Z[t])) == 100
        assert not set(Z[t]) & set(idx[t])
    # shared order: most of the population is common to all targets
    common = set(Z[0]).intersection(*map(set, Z[1:]))
    assert len(common) > 50
    np.testing.assert_array_equal(Z, population(idx, P, 100, seed=5))
    assert not np.array_equal(Z, population(idx, P, 100, seed=6))
    assert population(idx, P, 10**9, seed=0).shape == (T, P - K)


def calibrated_reference(tgt, shd, member, idx, excl, mode):
    """Per point and shadow, then min-max; views averaged first."""
    tgt, shd = tgt.mean(-1), shd.mean(-1)
    T, K = idx.shape
    S = shd.shape[0]
    stat = np.empty((T, K))
    for t in range(T):
        keep = [s for s in range(S) if s != excl[t]]
        vin = [[shd[s, idx[t, k]] for s in keep if member[s, idx[t, k]]] for k in range(K)]
        vout = [[shd[s, idx[t, k]] for s in keep if not member[s, idx[t, k]]] for k in range(K)]
        gaps = [np.mean(vin[k]) - np.mean(vout[k]) for k in range(K) if vin[k] and vout[k]]
        gap = np.mean(gaps) if gaps else 0.0
        for k in range(K):
            s = tgt[t, k]
            if mode == "z":
                allv = vin[k] + vout[k]
                stat[t, k] = (s - np.mean(allv)) / max(np.std(allv), 1e-6)
                continue
            mu_in = np.mean(vin[k]) if vin[k] else np.mean(vout[k]) + gap
            mu_out = np.mean(vout[k]) if vout[k] else np.mean(vin[k]) - gap
            stat[t, k] = s - (mu_in if mode == "in" else (mu_in + mu_out) / 2)
    lo, hi = stat.min(), stat.max()
    return (stat - lo) / (hi - lo)


@pytest.mark.parametrize("mode", ["in", "mid", "z"])
def test_calibrated_matches_slow_reference(mode):
    rng = np.random.default_rng(8)
    S, P, T, K, V = 7, 25, 4, 6, 2
    member = rng.random((S, P)) < 0.5
    member[:, 0] = True
    member[:, 1] = False
    member[1:, 2] = False
    shd = rng.normal(size=(S, P, V))
    tgt = rng.normal(size=(T, K, V))
    idx = np.stack([rng.choice(P, K, replace=False) for _ in range(T)])
    idx[0, :3] = [0, 1, 2]
    idx[1, :2] = [0, 1]
    excl = np.array([0, -1, 6, 2])
    got = calibrated(tgt, shd, member, idx, excl, mode=mode)
    np.testing.assert_allclose(got, calibrated_reference(tgt, shd, member, idx, excl, mode), rtol=0, atol=1e-12)


def test_point_moments_matches_numpy():
    rng = np.random.default_rng(9)
    S, P = 9, 14
    x = rng.normal(size=(S, P)) * 1e3 + 1e6  # large offset: the centred sums keep precision
    member = rng.random((S, P)) < 0.4
    avail = rng.random(S) < 0.8
    avail[[0, 1]] = True
    idx = rng.integers(0, P, size=(3, 5))
    excl = np.array([[0], [-1], [1]])
    got = point_moments(x, member, idx, excl, avail)
    for g in (True, False):
        n, mean, var = got[g]
        for i in range(3):
            for j in range(5):
                q = idx[i, j]
                vals = [x[s, q] for s in range(S) if avail[s] and s != excl[i, 0] and member[s, q] == g]
                assert n[i, j] == len(vals)
                if vals:
                    assert mean[i, j] == pytest.approx(np.mean(vals), rel=1e-13)
                    assert var[i, j] == pytest.approx(np.var(vals), rel=1e-6, abs=1e-9)


# --------------------------------------------------------------------------- #
# scaling and signals
# --------------------------------------------------------------------------- #
def test_minmax():
    np.testing.assert_array_equal(minmax([[3.0, 3.0], [3.0, 3.0]]), np.full((2, 2), 0.5))
    np.testing.assert_allclose(minmax([-1.0, 0.0, 3.0]), [0.0, 0.25, 1.0])
    big = minmax([-1.7e308, 1.7e308])
    np.testing.assert_array_equal(big, [0.0, 1.0])
    with pytest.raises(ValueError):
        minmax([1.0, np.nan])
    with pytest.raises(ValueError):
        minmax([])


def test_global_threshold_scaling_is_global():
    # target 0's losses are all lower: a global threshold ranks all of them above target 1
    loss = np.array([[0.1, 0.2, 0.3], [1.0, 2.0, 3.0]])[:, :, None]
    sc = loss_attack(loss)
    assert sc[0].min() > sc[1].max()
    assert sc.max() == 1.0 and sc.min() == 0.0
    # views are averaged first: [0, 2] and [1, 1] tie
    sc = loss_attack(np.array([[[0.0, 2.0], [1.0, 1.0], [5.0, 5.0]]]))
    assert sc[0, 0] == sc[0, 1] > sc[0, 2]
    conf = np.array([[[0.9], [0.5]], [[0.7], [0.1]]])
    np.testing.assert_allclose(confidence_attack(conf)[:, :], [[1.0, 0.5], [0.75, 0.0]])
    np.testing.assert_allclose(entropy_attack(np.array([[[0.0], [1.0], [2.0]]])), [[1.0, 0.5, 0.0]])


def test_signal_helpers():
    phi = np.array([-800.0, -30.0, 0.0, 30.0, 800.0], dtype=np.float32)
    loss = loss_from_phi(phi)
    assert np.isfinite(loss).all() and loss.dtype == np.float64
    np.testing.assert_allclose(loss[1:4], np.log1p(np.exp(-phi[1:4].astype(np.float64))), rtol=1e-12)
    assert loss[0] == 800.0 and loss[-1] == 0.0  # no overflow / log(0)
    assert loss[-2] > 0 and loss[-2] == pytest.approx(np.exp(-30.0), rel=1e-12)
    np.testing.assert_allclose(prob_from_phi(phi), expit(phi.astype(np.float64)))


# --------------------------------------------------------------------------- #
# bad inputs
# --------------------------------------------------------------------------- #
def test_bad_inputs_raise():
    d = make_scenario(10, S=6, T=3, K=8, E=5, n_loo=1)
    tp, sp, mem, idx, ex = expit(d["target_phi"]), expit(d["shadow_phi"]), d["shadow_in"], d["idx"], d["exclude"]
    bad_rmia = [
        dict(a=1.5),
        dict(a=-0.1),
        dict(gamma=0.0),
        dict(n_population=0),
        dict(n_population=2.5),
        dict(views="max"),
        dict(online=True, online_weighting="x"),
    ]
    for kw in bad_rmia:
        with pytest.raises(ValueError):
            rmia(tp, sp, mem, idx, ex, **kw)
    with pytest.raises(ValueError, match="probabilities"):
        rmia(tp * 2, sp, mem, idx, ex)
    nan = tp.copy()
    nan[0, 0, 0] = np.nan
    for args in [
        (nan, sp, mem, idx, ex),
        (tp[:, :, :0], sp, mem, idx, ex),
        (tp, sp[:, :-1], mem, idx, ex),
        (tp, sp, mem[:, :-1], idx, ex),
        (tp, sp, mem, idx + 1000, ex),
        (tp, sp, mem, idx, ex[:-1]),
        (tp, sp, mem, idx, np.array([9, -1, -1])),
        (tp, sp, mem.astype(float) * 2, idx, ex),
        (tp, sp, mem, idx.astype(float), ex),
        (tp[0], sp, mem, idx, ex),
    ]:
        with pytest.raises(ValueError):
            rmia(*args)
    # every pool point is someone's own challenge point: no population
    with pytest.raises(ValueError, match="population"):
        rmia(tp[:1, :8], sp[:, :8], mem[:, :8], np.arange(8)[None], None)

    tgt = on_challenge(d, "target_phi")
    with pytest.raises(ValueError, match="mode"):
        calibrated(tgt, d["shadow_phi"], mem, idx, ex, mode="out")
    for args in [
        (tgt[..., :0], d["shadow_phi"], mem, idx, ex),
        (tgt, d["shadow_phi"][..., [0, 0]], mem, idx, ex),
        (tgt, d["shadow_phi"], mem, idx[:, :-1], ex),
        (tgt * np.inf, d["shadow_phi"], mem, idx, ex),
        (tgt, d["shadow_phi"][:1], mem[:1], idx, np.array([0, -1, -1])),
    ]:
        with pytest.raises(ValueError):
            calibrated(*args)
    with pytest.raises(ValueError):
        loss_attack(np.zeros((2, 3)))
    with pytest.raises(ValueError):
        confidence_attack(np.full((1, 2, 1), np.nan))
    with pytest.raises(ValueError):
        entropy_attack(tgt, mode="mid")  # calibrated without shadows

    tm = on_challenge(d, "target_mentr")
    args = (tgt, tm, d["shadow_phi"], d["shadow_mentr"], mem, idx, ex)
    for kw in [dict(n_folds=1), dict(max_train=1), dict(top_k=0), dict(target_logits=np.zeros(tgt.shape + (3,)))]:
        with pytest.raises(ValueError):
            classifier_attack(*args, **kw)
    with pytest.raises(ValueError):
        classifier_attack(tgt, tm[:, :-1], *args[2:])
    with pytest.raises(ValueError):
        classifier_attack(
            *args, target_logits=np.zeros(tgt.shape + (3,)), shadow_logits=np.zeros(d["shadow_phi"].shape + (4,))
        )
