"""RMIA: the Relative Membership Inference Attack of Zarifzadeh et al. (2024), vectorised.

Reference: S. Zarifzadeh, P. Liu, J. Shokri, R. Shokri, "Low-Cost High-Power
Membership Inference Attacks", ICML 2024 (arXiv:2312.03262), Sec. 3 and
Algorithm 1.  Conventions follow the authors' code in
privacytrustlab/ml_privacy_meter (``research/2023_rmia/main.py``, the paper's
experiments, and ``modules/mia/attacks/rmia.py``, the maintained tool); where
we deviate the docstring says so and why.

Pure array maths: no I/O, no global state.

Notation (one target model theta, one challenge point x, population points z):

    p(x)       = Pr(y_x | x, theta): the target's true-class probability
    Pr(x)      = the same probability averaged over reference models, i.e.
                 its marginal over training sets that do / do not contain x
    LR(x)      = p(x) / Pr(x)

Equations implemented (numbered here):

    (R1) pairwise likelihood ratio (paper eq. 3 / 4):
             LR(x, z) = LR(x) / LR(z)
    (R2) score (paper eq. 5): the fraction of population points z that x
         dominates by a factor gamma,
             score(x) = |{z : LR(x, z) > gamma}| / |Z|
         evaluated as LR(x) > gamma * LR(z) (the same test for LR(z) > 0,
         and free of 0/0 when a probability underflows to 0).
    (R3) online Pr(x) (paper Sec. 3, reference models half IN, half OUT):
             Pr(x) = (mean_IN p(x) + mean_OUT p(x)) / 2
         The paper's online experiments use equal numbers of IN and OUT
         models per point (the research code takes num_ref_models // 2 of
         each); in MICO a pool point is IN for ~50-80% of the shadows, so a
         plain mean over all shadows would lean towards IN.  The balanced
         mean is the default; ``online_weighting='all'`` gives the plain mean
         over all shadows.  (With 'all' and gamma = 1, adding the target's
         own p to every Pr changes no comparison: p_x / (A_x + p_x) >
         p_z / (A_z + p_z) iff p_x / A_x > p_z / A_z, A = the other shadows'
         sum; so there leave-one-out only matters for gamma != 1.)
    (R4) offline Pr(x) (paper Sec. 3, "offline"; only OUT models):
             Pr(x) = (1 + a) / 2 * mean_OUT p(x) + (1 - a) / 2
         i.e. it assumes mean_IN p(x) = a * mean_OUT p(x) + (1 - a), so that
         (R4) equals (R3).  ``a`` is tuned per dataset by the authors
         (0.3 default in the tool, 0.33 in the paper's CIFAR-10 configs,
         tuned over 0, 0.1, ..., 1 by AUC on a reference model); ``rmia``
         is cheap enough to be called once per candidate value.
    (R5) several query views (augmentations).  The paper's code computes the
         test of (R2) per view and takes a majority vote over the views for
         each pair (x, z), then the fraction of z won (``views='vote'``,
         default).  A vote tie (even V) counts as a loss, like the reference
         code's ``torch.mode`` on booleans, which returns the smaller value.
         ``views='mean'`` instead averages the probabilities over the views
         first, then runs the single-view attack on that average: O(1) in V
         after the averaging and often about as strong.

Population.  The paper draws z from population data no model trained on.  In
MICO every pool point (the union of all models' challenge points) may be a
training point of the target (outside its own challenge set, MICO trains each
model on most of the dataset), and no other data carries shadow statistics.
So Z for target t is a uniform random sample, without replacement, of
``n_population`` pool points that are not among t's own challenge points (all
of them if fewer).  Members among the z lower every score of a target alike
(the ranking within one target is that of LR(x) whatever Z is; the Z only
calibrate across targets).  To keep targets comparable, all targets share one
random order of the pool: each target takes the first ``n_population`` points
of that order that are not its own, so the populations overlap almost fully.

Pr(z) uses exactly the same formula and the same shadows as Pr(x): the OUT
shadows of z offline (R4), IN and OUT online (R3).  This follows the
research code, where the reference signals of population points are their
OUT models like any other point's; the maintained tool instead treats
population data as OUT for all reference models, true there because its
population is never trained on, but not in MICO's pool.

Not implemented: the research code's trimmed mean of the reference
probabilities (``proportiontocut``; a per-target trimmed mean has no cheap
leave-one-out downdate) and its soft-margin/Taylor softmax variants (the
cache holds p_y = sigmoid(phi) only).

Leave-one-out: a target that is itself a shadow (``exclude``) is removed from
every statistic of that target, for x and z alike, by subtracting its term
from the per-point sums.

Fallbacks: a point with no OUT shadow (after leave-one-out) uses
Pr = mean_IN p (offline, and online); online, a point with no IN shadow uses
the offline formula (R4).  Pr is floored at PR_FLOOR so that LR stays finite.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from .checks import check_array, check_exclude, check_index, check_membership
from .order import in_shift

VIEW_MODES = ("vote", "mean")
ONLINE_WEIGHTINGS = ("balanced", "all")

# Pr(x) is an average of probabilities; it is 0 only if every reference model
# gives exactly p = 0 (float underflow).  Flooring it keeps p / Pr finite.
PR_FLOOR = 1e-300


def population(target_index, n_pool: int, n_population: int, seed=0) -> np.ndarray:
    """(T, n) pool indices of each target's population points Z.

    One random permutation of the pool (from ``seed``: int, None or a
    numpy Generator); target t takes the first n entries of it that are not
    in ``target_index[t]``, with n = min(n_population, smallest number of
    non-own points over the targets).  ValueError if n would be 0.
    """
    idx = np.asarray(target_index)
    T = idx.shape[0]
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n_pool)
    rank = np.empty(n_pool, dtype=np.intp)
    rank[perm] = np.arange(n_pool)
    own = np.zeros((T, n_pool), dtype=bool)
    own[np.arange(T)[:, None], rank[idx]] = True  # own points, in permuted order
    keep = ~own
    avail = keep.sum(axis=1)
    n = int(min(n_population, avail.min())) if T else 0
    if n < 1:
        raise ValueError("no population points: every pool point is one of a target's own challenge points")
    keep &= np.cumsum(keep, axis=1, dtype=np.int32) <= n
    return perm[np.nonzero(keep)[1]].reshape(T, n)


def _pr(sums, a: float, online: bool, weighting: str) -> np.ndarray:
    """Pr from per-entry (n_in, s_in, n_out, s_out), (R3)/(R4) with the fallbacks."""
    n_in, s_in, n_out, s_out = sums
    m_in = s_in / np.maximum(n_in, 1)
    m_out = s_out / np.maximum(n_out, 1)
    off = 0.5 * (1.0 + a) * m_out + 0.5 * (1.0 - a)
    if not online:
        pr = np.where(n_out > 0, off, m_in)
    elif weighting == "all":
        pr = (s_in + s_out) / np.maximum(n_in + n_out, 1)
    else:
        pr = np.where(n_out > 0, np.where(n_in > 0, 0.5 * (m_in + m_out), off), m_in)
    return np.maximum(pr, PR_FLOOR)


def _shadow_sums(x, member):
    """Per pool point: (n_in, s_in, n_out, s_out) over all shadows.  x: (S, P) float64."""
    n_in = member.sum(axis=0)
    s_in = np.where(member, x, 0.0).sum(axis=0)
    return n_in, s_in, x.shape[0] - n_in, x.sum(axis=0) - s_in


def _loo_sums(sums, x, member, pts, excl):
    """(n_in, s_in, n_out, s_out) at pool points ``pts`` (T, M), target t leaving out shadow excl[t].

    sums: from :func:`_shadow_sums` (formed once per pool point); the
    excluded shadow's term is subtracted per target (leave-one-out
    downdate).  Probabilities lie in [0, 1] and there are at most a few
    hundred shadows, so the plain subtraction loses nothing that matters
    (relative error ~1e-14)."""
    n_in, s_in, n_out, s_out = (a[pts] for a in sums)
    has = (excl >= 0)[:, None]
    e = np.maximum(excl, 0)[:, None]
    xe = np.where(has, x[e, pts], 0.0)
    ie = member[e, pts] & has
    oe = ~member[e, pts] & has
    return (n_in - ie, s_in - np.where(ie, xe, 0.0), n_out - oe, s_out - np.where(oe, xe, 0.0))


def _shift_in(sums, shift):
    """(n_in, s_in, n_out, s_out) with the IN mean raised by ``shift`` (attacks.order), kept a
    probability: s_in / n_in stays in [0, 1]."""
    n_in, s_in, n_out, s_out = sums
    return n_in, np.clip(s_in + n_in * shift, 0.0, n_in), n_out, s_out


def _fraction_below(lr_x, thr_z):
    """For each row t: fraction of thr_z[t, :] strictly below lr_x[t, k].  (T, K) float64.

    One stable argsort per row of the concatenation [lr_x | thr_z]: the x
    entries come first, so a z equal to an x sorts after it and is not
    counted.  The number of z before an x is its sorted position minus the
    number of x before it."""
    T, K = lr_x.shape
    n = thr_z.shape[1]
    allv = np.concatenate([lr_x, thr_z], axis=1)
    order = np.argsort(allv, axis=1, kind="stable")
    is_x = order < K
    n_x_before = np.cumsum(is_x, axis=1) - is_x
    pos = np.broadcast_to(np.arange(K + n), order.shape)
    below = np.empty((T, K), dtype=np.float64)
    rows = np.broadcast_to(np.arange(T)[:, None], order.shape)
    below[rows[is_x], order[is_x]] = (pos - n_x_before)[is_x]
    return below / n


def _check_inputs(target_prob, shadow_prob, shadow_in, target_index, exclude, from_phi: bool):
    """Validated (target, shadow, membership, target_index, exclude) arrays."""
    # Only the entries read (own and population points) must be finite: a dev/final target's
    # cache holds no others (save_preds.py), and they arrive as NaN.
    tgt = check_array(target_prob, "target_prob", 3, floating=True, unit_interval=not from_phi, finite=False)
    shd = check_array(shadow_prob, "shadow_prob", 3, floating=True, unit_interval=not from_phi)
    T, P, V = tgt.shape
    S = shd.shape[0]
    if shd.shape[1:] != (P, V):
        raise ValueError(f"shadow_prob must have shape (S, {P}, {V}) like target_prob, got {shd.shape}")
    member = check_membership(shadow_in, (S, P))
    idx = np.asarray(target_index)
    if idx.ndim != 2 or idx.shape[0] != T:
        raise ValueError(f"target_index must have shape ({T}, K), got {idx.shape}")
    return tgt, shd, member, check_index(idx, T, idx.shape[1], P), check_exclude(exclude, T, S)


def _check_options(a, gamma, n_population, views, online_weighting) -> None:
    if not (0.0 <= a <= 1.0):
        raise ValueError(f"a must lie in [0, 1], got {a!r}")
    if not (np.isfinite(gamma) and gamma > 0):
        raise ValueError(f"gamma must be a positive number, got {gamma!r}")
    if isinstance(n_population, bool) or int(n_population) != n_population or n_population < 1:
        raise ValueError(f"n_population must be an integer >= 1, got {n_population!r}")
    if views not in VIEW_MODES:
        raise ValueError(f"views must be one of {VIEW_MODES}, got {views!r}")
    if online_weighting not in ONLINE_WEIGHTINGS:
        raise ValueError(f"online_weighting must be one of {ONLINE_WEIGHTINGS}, got {online_weighting!r}")


def rmia(
    target_prob,
    shadow_prob,
    shadow_in,
    target_index,
    exclude=None,
    *,
    a: float = 0.3,
    gamma: float = 1.0,
    n_population: int = 5000,
    online: bool = False,
    online_weighting: str = "balanced",
    views: str = "vote",
    seed=0,
    chunk: int = 8,
    from_phi: bool = False,
    shadow_first=None,
) -> np.ndarray:
    """RMIA membership scores in [0, 1] (higher = more likely a member).

    Parameters
    ----------
    target_prob : (T, P, V) float
        Each target model's true-class probability p on the pool, V query
        views; only its own and population points are read (others may be
        NaN).  float32 is fine
        (only the entries used are widened).
    shadow_prob : (S, P, V) float
        Every shadow's probability on the pool.
    shadow_in : (S, P) bool
        True where the pool point was in that shadow's training set.
    target_index : (T, K) int
        Pool index of each target's challenge points (challenge order).
    exclude : (T,) int, optional
        Leave-one-out: the shadow row that is target t itself, -1 for none.
        Dropped from all of target t's statistics (x and z).
    a : float in [0, 1]
        Offline coefficient of (R4); also the online fallback for a point
        without IN shadows.
    gamma : float > 0
        Threshold of (R2).  The tool's default is 1; the paper's CIFAR-10
        configs use 2.
    n_population : int >= 1
        Population points per target (all non-own pool points if fewer).
    online : bool
        False: offline Pr (R4) from OUT shadows.  True: (R3).
    online_weighting : {'balanced', 'all'}
        Online Pr: mean of the IN and OUT means (paper's balanced reference
        set, default) or plain mean over all shadows.
    views : {'vote', 'mean'}
        (R5): per-view test with majority vote (paper's code), or average the
        probabilities over views first.  Identical when V == 1.
    seed : int, None or numpy Generator
        Population sampling (see :func:`population`).
    chunk : int
        Targets per block in the vote (memory ~ chunk * K * n bytes, twice).
    from_phi : bool
        The inputs are phi (= logit of p), not p: p = sigmoid(phi) is taken
        in float64 on the entries used (saturates at phi ~ 36.7 instead of
        float32's ~ 16.6).
    shadow_first : (S, P) bool, optional
        Online only: True where the shadow held the point as one of its own
        first-trained challenge members.  Given, mean_IN p(x) of a target's
        own points (not the population's) is raised to "IN as a member" by
        the pooled shift those entries measure, in each channel's
        probabilities (attacks.order), and kept in [0, 1].

    Returns
    -------
    (T, K) float64 in [0, 1]: the fraction (R2) of target t's population
    points that x dominates (with V > 1 and views='vote', in a majority of
    views).  Values are multiples of 1/n.

    Cost: O(S*P) per view for the sums, O(T*(K+n) log(K+n)) for one view or
    'mean', O(T*K*n*V) comparisons for 'vote' with V > 1.
    """
    from_phi = bool(from_phi)
    tgt, shd, member, idx, excl = _check_inputs(target_prob, shadow_prob, shadow_in, target_index, exclude, from_phi)
    _check_options(a, gamma, n_population, views, online_weighting)
    if shadow_first is not None and not online:
        raise ValueError("shadow_first (the training-order shift) applies to online RMIA only")
    if shd.shape[0] - (excl >= 0).any() < 1:
        raise ValueError("no shadow left after leave-one-out")
    T, P, V = tgt.shape
    Z = population(idx, P, int(n_population), seed)  # (T, n)
    rows = np.arange(T)[:, None]
    if not (np.isfinite(tgt[rows, idx]).all() and np.isfinite(tgt[rows, Z]).all()):
        raise ValueError("target_prob contains NaN or infinite values at a target's own or population points")

    def prob(arr):
        arr = np.asarray(arr, dtype=np.float64)
        return expit(arr) if from_phi else arr

    def ratios(x_sh, px, pz):
        """LR(x) (T, K) and gamma * LR(z) (T, n) for one channel (view or view mean)."""
        sums = _shadow_sums(x_sh, member)
        own = _loo_sums(sums, x_sh, member, idx, excl)
        if shadow_first is not None:
            own = _shift_in(own, in_shift(x_sh, member, shadow_first, idx, excl))
        lr_x = px / _pr(own, a, online, online_weighting)
        lr_z = pz / _pr(_loo_sums(sums, x_sh, member, Z, excl), a, online, online_weighting)
        return lr_x, gamma * lr_z

    if V == 1 or views == "mean":
        x_sh = np.zeros((shd.shape[0], P))
        for v in range(V):
            x_sh += prob(shd[:, :, v])
        if V > 1:
            x_sh /= V
        px, pz = prob(tgt[rows, idx]).mean(axis=-1), prob(tgt[rows, Z]).mean(axis=-1)
        return _fraction_below(*ratios(x_sh, px, pz))
    # majority vote over views (R5): per-view ratios, then count wins per (x, z) pair
    per_view = [ratios(prob(shd[:, :, v]), prob(tgt[rows, idx, v]), prob(tgt[rows, Z, v])) for v in range(V)]
    return _majority(np.stack([r[0] for r in per_view]), np.stack([r[1] for r in per_view]), max(int(chunk), 1))


def _majority(lr_x, thr_z, chunk: int) -> np.ndarray:
    """(T, K) fraction of z that x beats in a strict majority of views (a tie is a loss).

    lr_x: (V, T, K) LR(x) per view; thr_z: (V, T, n) gamma * LR(z) per view; ``chunk`` targets per
    block (memory ~ chunk * K * n bytes)."""
    V, T, K = lr_x.shape
    need = V // 2 + 1
    out = np.empty((T, K))
    for t0 in range(0, T, chunk):
        sl = slice(t0, t0 + chunk)
        wins = np.zeros((min(chunk, T - t0), K, thr_z.shape[2]), dtype=np.uint8)
        for v in range(V):
            wins += lr_x[v, sl, :, None] > thr_z[v, sl, None, :]
        out[sl] = (wins >= need).mean(axis=-1)
    return out
