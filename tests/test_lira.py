"""Tests for attacks/lira.py: hand-computed cases and a slow, obvious reference."""

import itertools
import math

import numpy as np
import pytest
from scipy.special import expit
from scipy.stats import norm

from attacks.lira import LOGIT_EPS, LOGIT_LOW, SIGMA_FLOOR, lira, signal_from_phi, signal_kind, squash


# --------------------------------------------------------------------------- #
# reference: one point at a time, straight from the documented definitions
# --------------------------------------------------------------------------- #
def lira_reference(
    target_signal,
    shadow_signal,
    shadow_in,
    target_index,
    exclude,
    *,
    online,
    global_variance,
    mu_estimator="mean",
    min_shadows=2,
    sigma_floor=SIGMA_FLOOR,
    offline_map="cdf",
):
    T, K, V = target_signal.shape
    S = shadow_signal.shape[0]
    loc = np.mean if mu_estimator == "mean" else np.median
    out = np.empty((T, K))
    for t in range(T):
        keep = [s for s in range(S) if s != exclude[t]]
        stat = np.zeros(K)
        for v in range(V):
            vin, vout = [], []
            for k in range(K):
                p = target_index[t, k]
                vin.append([shadow_signal[s, p, v] for s in keep if shadow_in[s, p]])
                vout.append([shadow_signal[s, p, v] for s in keep if not shadow_in[s, p]])
            pool_out = [a for l in vout for a in l]
            pool_in = [a for l in vin for a in l]
            assert pool_out
            ok_out = [len(l) >= min_shadows for l in vout]
            ok_in = [len(l) >= min_shadows for l in vin]
            gaps = [loc(vin[k]) - loc(vout[k]) for k in range(K) if ok_in[k] and ok_out[k]]
            if gaps:
                gap = np.mean(gaps)
            elif pool_in:
                gap = np.mean(pool_in) - np.mean(pool_out)
            else:
                gap = 0.0
            for k in range(K):
                s = target_signal[t, k, v]
                mu_out = loc(vout[k]) if ok_out[k] else np.mean(pool_out)
                if global_variance or not ok_out[k]:
                    sd_out = np.std(pool_out)
                else:
                    sd_out = np.std(vout[k])
                sd_out = max(sd_out, sigma_floor)
                if not online:
                    stat[k] += (s - mu_out) / sd_out
                    continue
                mu_in = loc(vin[k]) if ok_in[k] else mu_out + gap
                if ok_in[k] and not global_variance:
                    sd_in = np.std(vin[k])
                else:
                    sd_in = np.std(pool_in) if pool_in else sd_out
                sd_in = max(sd_in, sigma_floor)
                stat[k] += norm.logpdf(s, mu_in, sd_in) - norm.logpdf(s, mu_out, sd_out)
        for k in range(K):
            if online:
                out[t, k] = squash(stat[k] / V)
            else:
                z = stat[k] / math.sqrt(V)
                out[t, k] = norm.cdf(z) if offline_map == "cdf" else squash(z)
    return out


def make_problem(seed, *, S=10, P=25, T=5, K=12, V=1, kind="prob", loo=False, sparse=True):
    """Random pool + targets drawn from it.  Members get a higher phi."""
    rng = np.random.default_rng(seed)
    member = rng.random((S, P)) < 0.5
    if sparse:  # exercise the fallbacks: points with 0/1 IN and 0/1 OUT shadows
        member[:, 0] = False
        member[1:, 1] = False
        member[:, 2] = True
        member[1:, 3] = True
    base = rng.normal(0, 2, size=(1, P, 1))
    phi = (base + 2.5 * member[:, :, None] + rng.normal(0, 1, size=(S, P, V))).astype(np.float32)
    idx = np.stack([rng.choice(P, size=K, replace=False) for _ in range(T)])
    idx[0, :4] = [0, 1, 2, 3]
    if loo:
        exclude = rng.choice(S, size=T, replace=False)
        exclude[-1] = -1  # a mix of LOO and plain targets
        tphi = phi[np.maximum(exclude, 0)[:, None], idx]
        tphi[-1] = rng.normal(1, 2, size=(K, V))
    else:
        exclude = np.full(T, -1)
        tphi = rng.normal(1, 2, size=(T, K, V)).astype(np.float32)
    return (signal_from_phi(tphi, kind), signal_from_phi(phi, kind), member, idx, exclude)


# --------------------------------------------------------------------------- #
# signals
# --------------------------------------------------------------------------- #
def test_signal_from_phi_kinds():
    phi = np.array([-200.0, -5.0, 0.0, 3.0, 16.0, 30.0, 200.0], dtype=np.float32)
    prob = signal_from_phi(phi)
    assert prob.dtype == np.float64
    np.testing.assert_array_equal(prob, expit(phi).astype(np.float64))
    st = signal_from_phi(phi, "stable_logit")
    assert st.dtype == np.float64
    np.testing.assert_array_equal(st, phi.astype(np.float64))
    lg = signal_from_phi(phi, "logit")
    assert lg.dtype == np.float64 and np.isfinite(lg).all()
    assert lg.max() == pytest.approx(math.log((1 - LOGIT_EPS) / LOGIT_EPS))  # +16.64
    assert lg.min() == pytest.approx(math.log(LOGIT_LOW))  # p == 0 in float32: about -87.3
    # float32 still resolves small probabilities: phi = -80 keeps its own value
    np.testing.assert_allclose(signal_from_phi(np.float32([-80.0]), "logit"), [-80.0], atol=1e-3)
    # moderate values: the naive logit recovers phi up to float32 rounding of p
    np.testing.assert_allclose(lg[1:4], phi[1:4], atol=1e-5)
    # saturation: phi = 30 and 200 become indistinguishable (p == 1.0 in float32)
    assert lg[-1] == lg[-2]
    assert signal_from_phi(phi.reshape(7, 1, 1), "logit").shape == (7, 1, 1)
    with pytest.raises(ValueError, match="unknown signal kind"):
        signal_from_phi(phi, "loss")


def test_signal_kind_precedence():
    assert signal_kind() == "prob"
    assert signal_kind(logit_scaling=True) == "logit"
    assert signal_kind(stable_logit_scaling=True) == "stable_logit"
    assert signal_kind(True, True) == "stable_logit"


def test_squash_monotone_and_unsaturated():
    x = np.array([-1e308, -1e20, -50.0, -1.0, 0.0, 1e-9, 1.0, 40.0, 41.0, 1e6, 1e15, 1e300, 1e308])
    y = squash(x)
    assert np.all(np.diff(y) > 0)
    assert y.min() > 0 and y.max() < 1
    assert squash(0.0) == 0.5
    np.testing.assert_allclose(squash(-x), 1 - y, rtol=0, atol=1e-15)


# --------------------------------------------------------------------------- #
# hand-computed cases
# --------------------------------------------------------------------------- #
def _one_point(out_vals, in_vals, s):
    """1 point, shadows OUT then IN, one target with signal s."""
    vals = np.array(list(out_vals) + list(in_vals), dtype=np.float64)
    shadow = vals.reshape(-1, 1, 1)
    member = np.array([False] * len(out_vals) + [True] * len(in_vals)).reshape(-1, 1)
    target = np.array(s, dtype=np.float64).reshape(-1, 1, 1)
    return target, shadow, member


def test_hand_offline():
    # OUT {0.1, 0.3}: mu 0.2, sigma (ddof=0) 0.1.  s = 0.5 -> z = 3.
    tgt, shd, mem = _one_point([0.1, 0.3], [0.7, 0.9], [0.5, 0.2, 0.05])
    sc = lira(tgt[:, :, :], shd, mem, target_index=np.zeros((3, 1), int))
    np.testing.assert_allclose(sc[:, 0], [norm.cdf(3.0), 0.5, norm.cdf(-1.5)], rtol=1e-12)
    assert sc[0, 0] == pytest.approx(0.9986501019683699, abs=1e-15)


def test_hand_online():
    # OUT {0.0, 0.4}: mu 0.2, sd 0.2; IN {0.7, 0.9}: mu 0.8, sd 0.1.
    # s = 0.6: z_out = 2, z_in = -2 ->
    #   llr = [-log 0.1 - 2] - [-log 0.2 - 2] = log 2
    # s = 0.5: z_out = 1.5, z_in = -3 -> llr = log 2 + 1.125 - 4.5
    tgt, shd, mem = _one_point([0.0, 0.4], [0.7, 0.9], [0.6, 0.5])
    sc = lira(tgt, shd, mem, target_index=np.zeros((2, 1), int), online=True)
    l1 = math.log(2)
    l2 = math.log(2) + 1.125 - 4.5
    expect = [0.5 + 0.5 * math.asinh(l) / (1 + abs(math.asinh(l))) for l in (l1, l2)]
    np.testing.assert_allclose(sc[:, 0], expect, rtol=1e-12)
    # equal spreads, s halfway between the means -> llr 0 -> 0.5
    tgt, shd, mem = _one_point([0.1, 0.3], [0.7, 0.9], [0.5])
    assert lira(tgt, shd, mem, online=True)[0, 0] == pytest.approx(0.5, abs=1e-12)


def test_hand_leave_one_out():
    # shadow 4 (IN, 5.0) is the target itself; leaving it out gives the 4-shadow case
    tgt, shd, mem = _one_point([0.0, 0.4], [0.7, 0.9, 5.0], [0.6])
    with_loo = lira(tgt, shd, mem, exclude=np.array([4]), online=True)
    without = lira(tgt, shd[:4], mem[:4], online=True)
    np.testing.assert_allclose(with_loo, without, rtol=1e-12)
    assert with_loo[0, 0] == pytest.approx(squash(math.log(2)), rel=1e-12)
    assert not np.allclose(lira(tgt, shd, mem, online=True), with_loo)


def test_offline_equals_runner_up_formula():
    rng = np.random.default_rng(0)
    out_vals = rng.random(7)
    tgt, shd, mem = _one_point(out_vals, rng.random(5), [0.3, 0.7, 0.99])
    sc = lira(tgt, shd, mem, target_index=np.zeros((3, 1), int))
    expect = norm.cdf(tgt[:, 0, 0], np.mean(out_vals), np.std(out_vals) + 1e-30)
    np.testing.assert_allclose(sc[:, 0], expect, rtol=1e-13)


def test_global_variance_is_pooled_std():
    # target has 2 points; pooled OUT signals over both points, excluding shadow 0
    shd = np.array([[1.0, 2.0], [2.0, 3.0], [4.0, 7.0], [0.5, 1.0], [9.0, 9.0]])[:, :, None]
    mem = np.array([[False, False], [False, False], [False, False], [True, False], [True, True]])
    tgt = np.array([[3.0, 5.0]])[:, :, None]
    sc = lira(tgt, shd, mem, exclude=np.array([0]), global_variance=True)
    pool = [2.0, 4.0, 3.0, 7.0, 1.0]
    sd = np.std(pool)
    np.testing.assert_allclose(sc[0], norm.cdf([(3 - 3.0) / sd, (5 - 11 / 3) / sd]), rtol=1e-12)


def test_median_estimator():
    tgt, shd, mem = _one_point([0.0, 0.1, 0.5], [0.7, 0.9], [0.3])
    sc = lira(tgt, shd, mem, mu_estimator="median")
    np.testing.assert_allclose(sc[0, 0], norm.cdf((0.3 - 0.1) / np.std([0.0, 0.1, 0.5])), rtol=1e-12)


# --------------------------------------------------------------------------- #
# fast vs reference
# --------------------------------------------------------------------------- #
FLAGS = list(itertools.product([False, True], repeat=4))


@pytest.mark.parametrize("gv,online,logit,stable", FLAGS)
@pytest.mark.parametrize("loo", [False, True])
@pytest.mark.parametrize("V", [1, 3])
def test_matches_reference(gv, online, logit, stable, loo, V):
    kind = signal_kind(logit, stable)
    seed = hash((gv, online, logit, stable, loo, V)) % 2**32
    tgt, shd, mem, idx, excl = make_problem(seed, V=V, kind=kind, loo=loo)
    for mu_estimator in ("mean", "median"):
        kw = dict(online=online, global_variance=gv, mu_estimator=mu_estimator)
        fast = lira(tgt, shd, mem, idx, excl if loo else None, **kw)
        ref = lira_reference(tgt, shd, mem, idx, excl, **kw)
        assert fast.shape == ref.shape and np.isfinite(fast).all()
        assert fast.min() >= 0 and fast.max() <= 1
        np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-9)
        if not online:
            kw["offline_map"] = "squash"
            np.testing.assert_allclose(
                lira(tgt, shd, mem, idx, excl, chunk_targets=2, **kw),
                lira_reference(tgt, shd, mem, idx, excl, **kw),
                rtol=0,
                atol=1e-9,
            )


@pytest.mark.parametrize("min_shadows", [1, 3])
def test_min_shadows_matches_reference(min_shadows):
    tgt, shd, mem, idx, excl = make_problem(7, V=2, loo=True)
    for online, gv in itertools.product([False, True], repeat=2):
        kw = dict(online=online, global_variance=gv, min_shadows=min_shadows)
        np.testing.assert_allclose(
            lira(tgt, shd, mem, idx, excl, **kw), lira_reference(tgt, shd, mem, idx, excl, **kw), rtol=0, atol=1e-9
        )


@pytest.mark.parametrize("online", [False, True])
@pytest.mark.parametrize("mu_estimator", ["mean", "median"])
def test_leave_one_out_equals_deleting_the_shadow(online, mu_estimator):
    tgt, shd, mem, idx, _ = make_problem(3, S=9, V=2, sparse=False)
    for gv in (False, True):
        kw = dict(online=online, global_variance=gv, mu_estimator=mu_estimator)
        excl = np.array([0, 4, 8, -1, 4])
        fast = lira(tgt, shd, mem, idx, excl, **kw)
        for t, e in enumerate(excl):
            keep = np.arange(9) != e
            alone = lira(tgt[t : t + 1], shd[keep], mem[keep], idx[t : t + 1], **kw)
            np.testing.assert_allclose(fast[t : t + 1], alone, rtol=0, atol=1e-12)


def test_pool_index_equals_explicit_gather():
    tgt, shd, mem, idx, _ = make_problem(11, V=3, sparse=False)
    for online in (False, True):
        pooled = lira(tgt, shd, mem, idx, online=online)
        for t in range(tgt.shape[0]):
            alone = lira(tgt[t : t + 1], shd[:, idx[t]], mem[:, idx[t]], online=online)
            np.testing.assert_allclose(pooled[t], alone[0], rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- #
# degenerate inputs
# --------------------------------------------------------------------------- #
def test_fallbacks_are_finite():
    # point 0: no IN at all; point 1: a single OUT; point 2: zero spread (saturated)
    shd = np.array([[0.2, 0.5, 1.0], [0.4, 0.9, 1.0], [0.3, 0.8, 1.0]])[:, :, None]
    mem = np.array([[False, False, True], [False, True, True], [False, True, True]])
    tgt = np.array([[0.9, 0.95, 1.0], [0.1, 0.2, 0.999]])[:, :, None]
    for online, gv, mu in itertools.product([False, True], [False, True], ["mean", "median"]):
        sc = lira(tgt, shd, mem, online=online, global_variance=gv, mu_estimator=mu)
        assert np.isfinite(sc).all() and sc.min() >= 0 and sc.max() <= 1
        ref = lira_reference(
            tgt, shd, mem, np.tile(np.arange(3), (2, 1)), [-1, -1], online=online, global_variance=gv, mu_estimator=mu
        )
        np.testing.assert_allclose(sc, ref, rtol=0, atol=1e-9)
    # no IN shadow anywhere: online has no evidence -> 0.5 everywhere
    sc = lira(tgt, shd, np.zeros_like(mem), online=True)
    np.testing.assert_allclose(sc, 0.5, atol=1e-12)


def test_no_out_shadow_raises():
    shd = np.ones((2, 2, 1))
    mem = np.array([[True, True], [False, True]])
    with pytest.raises(ValueError, match="no OUT shadow"):
        lira(np.ones((1, 2, 1)), shd, mem, exclude=np.array([1]))
    lira(np.ones((1, 2, 1)), shd, mem)  # fine with shadow 1 kept


def test_online_top_scores_do_not_tie():
    # tiny spreads -> enormous llrs; the map must keep their order
    shd = np.array([[0.0], [1e-3], [1.0], [1.0 + 1e-3]])[:, :, None]
    mem = np.array([[False], [False], [True], [True]])
    tgt = np.linspace(0.9, 1.0, 50).reshape(50, 1, 1)
    sc = lira(tgt, shd, mem, target_index=np.zeros((50, 1), int), online=True)[:, 0]
    assert np.all(np.diff(sc) > 0)


@pytest.mark.parametrize(
    "bad",
    [
        dict(target_signal=np.zeros((2, 3))),
        dict(shadow_signal=np.zeros((4, 5, 2))),
        dict(shadow_in=np.zeros((4, 6), bool)),
        dict(shadow_in=np.full((4, 5), 0.5)),
        dict(target_index=np.array([[0, 1, 9], [0, 1, 2]])),
        dict(target_index=np.zeros((2, 3), float)),
        dict(exclude=np.array([0, 4])),
        dict(exclude=np.array([0])),
        dict(target_signal=np.full((2, 3, 1), np.nan)),
        dict(mu_estimator="mode"),
        dict(min_shadows=0),
        dict(sigma_floor=0.0),
        dict(offline_map="sf"),
    ],
)
def test_bad_inputs_raise(bad):
    kw = dict(
        target_signal=np.zeros((2, 3, 1)),
        shadow_signal=np.arange(20.0).reshape(4, 5, 1),
        shadow_in=np.arange(20).reshape(4, 5) % 2 == 0,
        target_index=np.array([[0, 1, 2], [2, 3, 4]]),
    )
    kw.update(bad)
    with pytest.raises(ValueError):
        lira(**kw)


def test_no_index_requires_whole_pool():
    with pytest.raises(ValueError, match="whole pool"):
        lira(np.zeros((1, 3, 1)), np.zeros((2, 4, 1)), np.zeros((2, 4), bool))
