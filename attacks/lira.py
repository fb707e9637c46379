"""LiRA: the Likelihood Ratio Attack of Carlini et al. (2022), vectorised.

Reference: N. Carlini, S. Chien, M. Nasr, S. Song, A. Terzis, F. Tramer,
"Membership Inference Attacks From First Principles", IEEE S&P 2022
(arXiv:2112.03570), Sec. IV and Algorithm 1.  Some conventions follow the
authors' reference code (tensorflow/privacy, research/mi_lira_2021): ddof=0
standard deviations, a pooled "fixed" variance, per-view statistics averaged
over views, the median as an optional location.  The tests do not: the
offline test here is the paper's one-sided Phi((s - mu_out) / sigma_out)
(L1), while the reference's plot.py ranks by -log N(s; median_out, std_out),
a two-sided test with a log-std term; that one is
:func:`attacks.submitted.reference_offline` (``offline_test='reference'``).
The online test (L2) is the paper's and the reference's, except that the
reference's fixed variance takes both sigmas from the IN pool.  Other
departures are stated where they occur.

Pure array maths: no I/O, no global state.

Notation (one challenge point x of one target model f, one query view v):

    s        the target's signal on x (see :func:`signal_from_phi`)
    IN/OUT   the shadow models whose training set did / did not contain x
    mu_out, sigma_out, mu_in, sigma_in
             location / spread of the shadows' signals on x, per hypothesis

Equations implemented (numbered here, as the paper's are not quoted):

    (L1) offline, one-sided test (paper, Algorithm 1, offline variant):
             z_v = (s_v - mu_out_v) / sigma_out_v,
             score = Phi(z)            Phi = standard normal CDF
         A larger signal than the OUT models produce means "member", so the
         score is the CDF itself, not 1 - CDF.  With one view this is exactly
         ``scipy.stats.norm.cdf(s, mu_out, sigma_out)``, the MICO runner-up's
         formula.
    (L2) online likelihood ratio (paper, Sec. IV, Algorithm 1):
             llr_v = log N(s_v; mu_in_v, sigma_in_v^2) - log N(s_v; mu_out_v, sigma_out_v^2)
    (L3) several views: the paper models the views as independent Gaussians
         (diagonal covariance), so the joint log likelihood ratio is the sum
         of (L2) over views; we use the mean (same order, view-count free
         scale), as the reference code does.  Offline, the per-view one-sided
         z-scores are combined with Stouffer's rule Z = sum_v z_v / sqrt(V),
         which is N(0, 1) under the OUT hypothesis when views are independent
         and reduces to (L1) bit for bit when V == 1.
         A "geometric" combination (geometric mean of the per-view likelihood
         ratios) is exp(mean_v llr_v): a monotone function of the mean, so it
         ranks points identically and is deliberately not offered.

Scores are only ever used through their ranking (MICO scores ROC curves), so
every map to [0, 1] here is a fixed strictly monotone function; the scores are
not calibrated probabilities.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit, ndtr

from .checks import check_signals
from .order import in_shift
from .stats import SIGMA_FLOOR, fill_by_gap, mean_gap, point_moments

SIGNAL_KINDS = ("prob", "logit", "stable_logit")
MU_ESTIMATORS = ("mean", "median")
OFFLINE_MAPS = ("cdf", "squash")

# Clip for the naive logit log(p / (1 - p)) of a float32 probability.  2**-24 is
# the gap between 1.0 and the largest float32 below it: float32 cannot express
# 1 - p any finer near p = 1, so clipping there only merges p == 1.0 (the
# saturated, formally infinite logit) with its neighbour, bounding the naive
# logit to +16.64 from above.  It must be well above float64 epsilon (2.2e-16),
# otherwise 1 - eps rounds back to 1.0 and the logit is infinite again.  At the
# low end float32 resolves p down to its smallest normal number, as the
# runner-up's pipeline did, so only p == 0 (phi below about -87) is clipped.
LOGIT_EPS = 2.0**-24
LOGIT_LOW = float(np.finfo(np.float32).tiny)


# --------------------------------------------------------------------------- #
# signals
# --------------------------------------------------------------------------- #
def signal_kind(logit_scaling: bool = False, stable_logit_scaling: bool = False) -> str:
    """Map the runner-up's two flags to a ``kind`` for :func:`signal_from_phi`.

    ``--stable_logit_scaling`` wins over ``--logit_scaling`` when both are set:
    it is the same transform (the logit of p_y) computed without saturation.
    """
    if stable_logit_scaling:
        return "stable_logit"
    if logit_scaling:
        return "logit"
    return "prob"


def signal_from_phi(phi, kind: str = "prob") -> np.ndarray:
    """Turn cached phi = z_y - logsumexp_{j != y} z_j into an attack signal.

    phi: array of any shape (typically (n_models, n_points, n_views)),
    float32 from the cache.  Since p_y = softmax(z)_y = sigmoid(phi) exactly:

    - ``'prob'`` (runner-up default): p = sigmoid(phi), evaluated in float32
      as the original float32 softmax pipeline saw it (p == 1.0 once
      phi > ~16.6), then widened to float64.
    - ``'logit'`` (runner-up ``--logit_scaling``, paper's logit scaling
      phi(p) = log(p / (1 - p))): computed the naive way from that float32
      p, as the runner-up did, after clipping p to [LOGIT_LOW, 1 - LOGIT_EPS]
      in float64 so it stays finite.  Saturated points all collapse onto the
      upper bound +16.64; that loss is why stable logit scaling exists.
    - ``'stable_logit'`` (``--stable_logit_scaling``, the paper's numerically
      stable form log p_y - log sum_{j != y} p_j): phi itself.

    Returns float64, same shape as ``phi``.
    """
    phi = np.asarray(phi)
    if kind == "stable_logit":
        return phi.astype(np.float64)
    if kind not in SIGNAL_KINDS:
        raise ValueError(f"unknown signal kind {kind!r}: choose one of {', '.join(SIGNAL_KINDS)}")
    p32 = expit(phi.astype(np.float32))  # float32 in, float32 out
    p = p32.astype(np.float64)
    if kind == "prob":
        return p
    p = np.clip(p, LOGIT_LOW, 1.0 - LOGIT_EPS)
    return np.log(p / (1.0 - p))


def squash(x) -> np.ndarray:
    """Strictly increasing map R -> (0, 1) that does not saturate in float64.

    squash(x) = 1/2 + 1/2 * y / (1 + |y|),  y = asinh(x).

    Why not the logistic expit(x): it rounds to exactly 1.0 for x > ~37, so
    every strongly-member point would tie at the top of the ranking, which is
    precisely where TPR at low FPR is decided (llr values of 1e3 and beyond
    are common with small sigmas).  asinh compresses any finite float64 to
    |y| <= 710 while staying strictly monotone, and the algebraic sigmoid then
    leaves 1 - squash(x) >= 7e-4, far from the float64 resolution of 1.1e-16.
    squash(0) = 1/2 and squash(-x) = 1 - squash(x).
    """
    y = np.arcsinh(np.asarray(x, dtype=np.float64))
    return 0.5 + 0.5 * y / (1.0 + np.abs(y))


# --------------------------------------------------------------------------- #
# input checks
# --------------------------------------------------------------------------- #


# --------------------------------------------------------------------------- #
# per-point statistics with leave-one-out downdates
# --------------------------------------------------------------------------- #
def _loo_medians(x, member, idx, excl, chunk):
    """Per-(target, point) median of each group, leaving out ``excl``.

    Medians have no downdate formula, so the shadows' signals are gathered
    per target in chunks of ``chunk`` targets: (chunk, K, S) arrays, with the
    other group and the excluded shadow set to +inf so that they sort last;
    the median of the first n sorted values is read off by index
    (mean of the two middle values for even n, like np.median).
    Returns {True: med_in, False: med_out}, (T, K); 0 where a group is empty.
    """
    T, K = idx.shape
    S = x.shape[0]
    xt = np.ascontiguousarray(x.T)  # (P, S): sort along contiguous memory
    mt = np.ascontiguousarray(member.T)
    sid = np.arange(S)
    res = {True: np.empty((T, K)), False: np.empty((T, K))}
    for t0 in range(0, T, chunk):
        sl = slice(t0, t0 + chunk)
        vals = xt[idx[sl]]  # (c, K, S)
        mem = mt[idx[sl]]
        keep = (sid != excl[sl, None])[:, None, :]  # (c, 1, S)
        for g, sel in ((True, mem & keep), (False, ~mem & keep)):
            v = np.where(sel, vals, np.inf)
            v.sort(axis=-1)
            n = sel.sum(axis=-1)
            lo = np.take_along_axis(v, np.maximum(n - 1, 0)[..., None] // 2, axis=-1)[..., 0]
            hi = np.take_along_axis(v, (n // 2)[..., None], axis=-1)[..., 0]
            res[g][sl] = np.where(n > 0, 0.5 * (lo + hi), 0.0)
    return res


def _pooled(n, mean, var):
    """Pool per-point groups into one sample per target (law of total variance).

    The pooled std is that of all the signals together, around their grand
    mean, as ``np.std`` of the concatenated values in the reference code's
    fixed variance: it includes the spread *between* the points' means.
    Returns N (T,), mean (T,), std (T,); 0 where N == 0.
    """
    N = n.sum(axis=1)
    safe = np.maximum(N, 1.0)
    M = (n * mean).sum(axis=1) / safe
    v = (n * (var + (mean - M[:, None]) ** 2)).sum(axis=1) / safe
    return N, M, np.sqrt(v)


def _view_statistic(s, mom, med, *, online, global_variance, min_shadows, sigma_floor, in_shift=None):
    """One view: offline z-score (L1) or online llr (L2), (T, K), with fallbacks.

    Fallbacks when a point has fewer than ``min_shadows`` shadows in a group
    (after leave-one-out); "pooled" = all of the target's challenge points
    together, one value per target:

    - too few OUT: mu_out = pooled OUT mean, sigma_out = pooled OUT std;
    - too few IN:  mu_in = mu_out + gap, sigma_in = pooled IN std, where gap is
      the mean of (mu_in - mu_out) over the target's points that have enough
      of both; if there are none, gap = pooled IN mean - pooled OUT mean; with
      no IN signal on any of the target's points, gap = 0 and
      sigma_in = sigma_out, so llr = 0 ("no evidence", score 1/2);
    - no OUT signal on any of the target's points: ValueError (nothing to test
      against).

    ``in_shift`` (T, K), online only: added to mu_in after the fallbacks (attacks.order).
    """
    n_out, mean_out, var_out = mom[False]
    N_out, M_out, sd_pool_out = _pooled(n_out, mean_out, var_out)
    if np.any(N_out == 0):
        bad = np.flatnonzero(N_out == 0)
        raise ValueError(
            f"target(s) {bad[:10].tolist()} have no OUT shadow signal on any of "
            "their challenge points (after leave-one-out): LiRA needs OUT shadows"
        )
    mu_out_pt = mean_out if med is None else med[False]
    ok_out = n_out >= min_shadows
    mu_out = np.where(ok_out, mu_out_pt, M_out[:, None])
    if global_variance:
        sd_out = np.broadcast_to(sd_pool_out[:, None], s.shape)
    else:
        sd_out = np.where(ok_out, np.sqrt(var_out), sd_pool_out[:, None])
    sd_out = np.maximum(sd_out, sigma_floor)
    z_out = (s - mu_out) / sd_out
    if not online:
        return z_out

    n_in, mean_in, var_in = mom[True]
    N_in, M_in, sd_pool_in = _pooled(n_in, mean_in, var_in)
    mu_in_pt = mean_in if med is None else med[True]
    ok_in = n_in >= min_shadows
    gap_pool = np.where(N_in > 0, M_in - M_out, 0.0)
    gap = mean_gap(mu_in_pt, mu_out_pt, ok_in & ok_out, axis=1, default=gap_pool[:, None])
    mu_in, _ = fill_by_gap(mu_in_pt, mu_out, ok_in, True, gap)
    if in_shift is not None:
        mu_in = mu_in + in_shift
    # no IN signal at all: IN model = OUT model, so llr = 0 (no evidence either way)
    sd_in_fb = np.where(N_in[:, None] > 0, sd_pool_in[:, None], sd_out)
    if global_variance:
        sd_in = sd_in_fb
    else:
        sd_in = np.where(ok_in, np.sqrt(var_in), sd_in_fb)
    sd_in = np.maximum(sd_in, sigma_floor)
    z_in = (s - mu_in) / sd_in
    # log N(s; mu_in, sd_in) - log N(s; mu_out, sd_out); the 2*pi terms cancel
    return np.log(sd_out) - np.log(sd_in) + 0.5 * (z_out * z_out - z_in * z_in)


# --------------------------------------------------------------------------- #
# the attack
# --------------------------------------------------------------------------- #
def lira(
    target_signal,
    shadow_signal,
    shadow_in,
    target_index=None,
    exclude=None,
    *,
    online: bool = False,
    global_variance: bool = False,
    mu_estimator: str = "mean",
    min_shadows: int = 2,
    sigma_floor: float = SIGMA_FLOOR,
    offline_map: str = "cdf",
    chunk_targets: int = 16,
    shadow_first=None,
) -> np.ndarray:
    """LiRA membership scores in [0, 1] (higher = more likely a member).

    Parameters
    ----------
    target_signal : (T, K, V) float
        Each target model's signal on its own K challenge points, V views.
    shadow_signal : (S, P, V) float
        Every shadow model's signal on a pool of P points (given once, shared
        by all targets).
    shadow_in : (S, P) bool
        True where the pool point was in that shadow's training set.
    target_index : (T, K) int, optional
        Pool index of each target's challenge points: target t's point k is
        pool point ``target_index[t, k]``.  None: K == P and every target is
        scored on the whole pool in pool order.
    exclude : (T,) int, optional
        Leave-one-out: shadow index to drop from target t's statistics (the
        target *is* that shadow), -1 for none.  Dropped everywhere, including
        the pooled global variance and the fallbacks.
    online : bool
        False: offline one-sided test (L1), only OUT shadows are used.
        True: likelihood ratio of IN vs OUT Gaussians (L2).
    global_variance : bool
        Replace the per-point sigma by one sigma per (target, view, group):
        the std of all the group's shadow signals pooled over the target's K
        challenge points (reference code's ``fix_variance``, runner-up's
        ``--global_variance``).  mu stays per point.  Note: the reference's
        online branch takes both sigmas from the IN pool; we use each group's
        own pool.
    mu_estimator : {'mean', 'median'}
        Per-point location.  The runner-up used the mean, the reference code
        the median.  Sigma is always the ddof=0 standard deviation about the
        mean (``np.std`` default, as in both references).
    min_shadows : int >= 1
        A point needs at least this many shadows in a group (after
        leave-one-out) for per-point statistics of that group; otherwise the
        fallbacks of :func:`_view_statistic` apply (pooled estimates, and for
        IN: the OUT location shifted by the target's average IN-OUT gap).
    sigma_floor : float > 0
        Every sigma is at least this (see SIGMA_FLOOR).
    offline_map : {'cdf', 'squash'}
        Offline only.  'cdf': Phi(Z), exactly the runner-up's norm.cdf for
        one view; it rounds to 1.0 for Z > ~8.3, creating ties at the top of
        the ranking.  'squash': squash(Z), the same ranking without ties.
    chunk_targets : int
        Targets per chunk in the median gather (memory ~ chunk*K*S*8 bytes).
    shadow_first : (S, P) bool, optional
        Online only: True where the shadow held the point as one of its own
        first-trained challenge members.  Given, each view's mu_in is shifted
        to "IN as a member" by the pooled shift those entries measure
        (attacks.order, (O1)-(O3)); ValueError where there is none.

    Returns
    -------
    (T, K) float64 in [0, 1].  Offline: Phi(Z) (or squash(Z)) with Stouffer's
    Z = sum_v z_v / sqrt(V) (L1, L3).  Online: squash(mean_v llr_v) (L2, L3).
    Always finite.

    Cost: O(S*P*V) for the sums, O(T*K*V) for the downdates; the median adds
    a sort of T*K*S values per view.
    """
    tgt, shd, member, idx, excl = check_signals(target_signal, shadow_signal, shadow_in, target_index, exclude)
    if mu_estimator not in MU_ESTIMATORS:
        raise ValueError(f"mu_estimator must be one of {MU_ESTIMATORS}, got {mu_estimator!r}")
    if offline_map not in OFFLINE_MAPS:
        raise ValueError(f"offline_map must be one of {OFFLINE_MAPS}, got {offline_map!r}")
    if isinstance(min_shadows, bool) or int(min_shadows) != min_shadows or min_shadows < 1:
        raise ValueError(f"min_shadows must be an integer >= 1, got {min_shadows!r}")
    if not (np.isfinite(sigma_floor) and sigma_floor > 0):
        raise ValueError(f"sigma_floor must be a positive number, got {sigma_floor!r}")
    chunk_targets = max(int(chunk_targets), 1)
    if shadow_first is not None and not online:
        raise ValueError("shadow_first (the training-order shift) applies to online LiRA only")

    T, K, V = tgt.shape
    total = np.zeros((T, K))
    for v in range(V):  # views are independent; loop keeps memory at one (S, P) slice
        x = shd[:, :, v].astype(np.float64)
        mom = point_moments(x, member, idx, excl[:, None])
        med = _loo_medians(x, member, idx, excl, chunk_targets) if mu_estimator == "median" else None
        shift = None if shadow_first is None else in_shift(x, member, shadow_first, idx, excl)
        total += _view_statistic(
            tgt[:, :, v].astype(np.float64),
            mom,
            med,
            online=online,
            global_variance=global_variance,
            min_shadows=min_shadows,
            sigma_floor=sigma_floor,
            in_shift=shift,
        )
    if online:
        return squash(total / V)
    z = total / np.sqrt(V)  # Stouffer; V == 1 leaves z untouched
    return ndtr(z) if offline_map == "cdf" else squash(z)
