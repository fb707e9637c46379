"""Released programs reproduced as they ran: the two top MICO solutions and the LiRA reference's offline test.

- Runner-up (DevPranjal/mico-first-principles, ``run_lira_mia.py``): LiRA after Carlini et al.
  (2022) with the runner-up's own data handling, including the index bug that makes its IN/OUT
  split unrelated to true membership (see :func:`challenges.splits.runner_up_train_positions`
  and ``docs/as_submitted.md``).  :func:`runner_up_signal`, :func:`runner_up_lira`.
- Winner (tianjian10/MICO, ``src2/main.py`` and ``get_dataset.py``): per-point difficulty
  calibration with the 100 train models, one choice of signal and formula per scenario.
  :func:`winner_signal`, :func:`mico_winner`, :data:`WINNER_CONFIG`.
- LiRA reference (tensorflow/privacy ``research/mi_lira_2021``, ``plot.py``
  ``generate_ours_offline``): its offline test is two-sided, unlike the paper's.
  :func:`reference_offline`.

Our corrected attacks live in :mod:`attacks.lira` and :mod:`attacks.baselines`; these functions
exist to reproduce the submissions (and to measure what their quirks cost), not to be improved.

Pure array maths: no I/O, no global state.  Each departure from the released code is named in
the docstring where it happens; they all concern inputs on which the original stopped with an
error or wrote NaN.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.special import expit, logsumexp, softmax
from scipy.stats import norm

from .baselines import minmax
from .checks import check_exclude, check_membership, pool_index
from .lira import squash
from .stats import SIGMA_FLOOR, point_moments

# Constants as the released code writes them: both the runner-up and the LiRA reference add 1e-30
# to every sigma; the runner-up adds 1e-45 inside the stable logit's logs (as the reference's
# score.py does) and ``10e-30``, that is 1e-29, to 1 - p in its naive logit.
SIGMA_EPS = 1e-30
STABLE_LOG_EPS = 1e-45
NAIVE_LOGIT_EPS = 10e-30


# --------------------------------------------------------------------------- #
# shared input checks
# --------------------------------------------------------------------------- #
def _signal(a, name: str, ndim: int, dtype) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} must be non-empty, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.number) or a.dtype == bool:
        raise ValueError(f"{name} must be numeric, got dtype {a.dtype}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return a.astype(dtype, copy=False)


def _inputs(target_signal, shadow_signal, shadow_in, target_index, exclude, ndim, dtype):
    tgt = _signal(target_signal, "target_signal", ndim, dtype)
    shd = _signal(shadow_signal, "shadow_signal", ndim, dtype)
    if ndim == 3 and tgt.shape[2] != shd.shape[2]:
        raise ValueError(f"view count differs: target_signal has {tgt.shape[2]}, shadow_signal {shd.shape[2]}")
    (T, K), (S, P) = tgt.shape[:2], shd.shape[:2]
    member = check_membership(shadow_in, (S, P))
    return tgt, shd, member, pool_index(target_index, T, K, P), check_exclude(exclude, T, S)


# --------------------------------------------------------------------------- #
# runner-up: signals
# --------------------------------------------------------------------------- #
def _true_class(z: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Index of the class whose softmax probability is sigmoid(phi).

    The cache keeps phi = z_y - logsumexp_{j != y} z_j but not y; softmax_y = sigmoid(phi)
    identifies y.  Two classes can only be confused if their probabilities agree to float32
    rounding, and then either choice gives the same signal to that rounding.
    """
    z64 = z.astype(np.float64)
    log_p = z64 - logsumexp(z64, axis=-1, keepdims=True)
    log_py = -np.logaddexp(0.0, -np.asarray(phi, dtype=np.float64))
    return np.argmin(np.abs(log_p - log_py[..., None]), axis=-1)


def runner_up_signal(
    phi, logits=None, *, logit_scaling: bool = False, stable_logit_scaling: bool = False
) -> np.ndarray:
    """The runner-up's per-point signal, from our cache, as its run_lira_mia.py computed it.

    Parameters
    ----------
    phi : (...) float32
        Cached ``z_y - logsumexp_{j != y} z_j`` (one query view, e.g. ``phi[..., 0]``).
    logits : (..., C) float32, optional
        Cached logits of the same points (``save_preds.py --save-logits``).  With them the
        original's arithmetic is replayed step by step; the true class is recovered from phi.
    logit_scaling, stable_logit_scaling : bool
        The runner-up's flags; ``stable_logit_scaling`` wins when both are set (its if/elif).

    The original, for logits z (float32, straight from the model) and label y:

    (U1) no flag: ``p = scipy.special.softmax(z)[y]``, float32 throughout.
    (U2) ``--logit_scaling``: ``log(p / (1 - p + 10e-30))`` of that float32 p.  Under NumPy 1.x,
         which the original ran on, ``1 - p`` with a NumPy float32 scalar promotes to float64, so
         this is float64 arithmetic (NumPy >= 2 would stay in float32); p == 1.0 gives
         log(1e29) = 66.77.
    (U3) ``--stable_logit_scaling``: ``e = float64(exp(z - max z))`` (exp in float32),
         ``q = e / sum(e)``, ``log(q_y + 1e-45) - log(sum(q) - q_y + 1e-45)``.  ``sum(q) - q_y``
         cancels: the value is phi to ~1e-7 up to phi ~ 22, then drifts (1e-5 at phi ~ 27, 0.03
         at 33), and from phi ~ 36.7, where ``sum(q) - q_y`` rounds to 0, it is the constant
         log(1 + 1e-45) - log(1e-45) = 103.6.

    Tolerance.  With ``logits`` the result equals the original's bit for bit given the same
    logits (our cache's logits come from another batch size, which may move the last bit).  From
    ``phi`` alone: (U1) is ``expit`` of float32 phi in float32, within a few float32 ulps (about
    1e-7) of the softmax; (U2) follows from it; (U3) is phi in float64, and 103.6 where
    sigmoid(phi) rounds to 1 in float64 (phi > 36.7): the original's value except for its
    rounding drift at 22 < phi < 36.7.  How far a score moves with its signal depends on the OUT
    spread: see docs/as_submitted.md.

    Returns float32 (U1) or float64 (U2, U3), shape of phi.  Call it per model to bound memory
    when logits are given (it works on (..., C) float64 temporaries).
    """
    phi = np.asarray(phi)
    if logits is None:
        if stable_logit_scaling:
            phi = phi.astype(np.float64)
            # where q_y rounds to 1, the original's value is log(1 + 1e-45) - log(0 + 1e-45) = -log(1e-45)
            return np.where(expit(phi) == 1.0, -np.log(STABLE_LOG_EPS), phi)
        p = expit(phi.astype(np.float32))  # float32 in, float32 out
    else:
        z = np.asarray(logits, dtype=np.float32)
        if z.shape[:-1] != phi.shape:
            raise ValueError(f"logits shape {z.shape} does not match phi shape {phi.shape} + (C,)")
        y = _true_class(z, phi)[..., None]
        if stable_logit_scaling:
            e = np.exp(z - z.max(axis=-1, keepdims=True)).astype(np.float64)
            q = e / e.sum(axis=-1, keepdims=True)
            q_y = np.take_along_axis(q, y, axis=-1)[..., 0]
            q_wrong = q.sum(axis=-1) - q_y  # the original's cancellation, kept on purpose
            return np.log(q_y + STABLE_LOG_EPS) - np.log(q_wrong + STABLE_LOG_EPS)
        p = np.take_along_axis(softmax(z, axis=-1), y, axis=-1)[..., 0]
    if logit_scaling:
        p = p.astype(np.float64)
        return np.log(p / (1.0 - p + NAIVE_LOGIT_EPS))
    return p


# --------------------------------------------------------------------------- #
# runner-up: statistics, replayed in the original's order and precision
# --------------------------------------------------------------------------- #
def _packed(x, group, idx, excl):
    """Each (target, point)'s group signals in shadow order, packed to the left.

    x: (S, P); group: (S, P) bool; idx: (T, K); excl: (T,).  Returns vals (T, K, S), whose
    first n[t, k] entries along the last axis are the list the original built with
    ``[... for m in models if cp (not) in train_set]``, and n (T, K).
    """
    S = x.shape[0]
    keep = group.T[idx] & (np.arange(S) != excl[:, None, None])
    order = np.argsort(~keep, axis=-1, kind="stable")
    return np.take_along_axis(x.T[idx], order, axis=-1), keep.sum(axis=-1)


def _moments(vals, n):
    """``np.mean`` and ``np.std`` (ddof=0) of each list, in the lists' own dtype; NaN for an empty list.

    Rows of equal length are reduced together: numpy reduces each contiguous row with the same
    pairwise summation as a 1-D array, so the results equal the original's per-point calls bit
    for bit.  That matters in float32: the mean enters (s - mu) / sigma, and sigma can be tiny.
    """
    mean = np.full(n.shape, np.nan, dtype=vals.dtype)
    std = mean.copy()
    for c in np.unique(n[n > 0]):
        at = n == c
        rows = np.ascontiguousarray(vals[at][:, :c])
        mean[at] = rows.mean(axis=1)
        std[at] = rows.std(axis=1)
    return mean, std


def _pooled_std(vals, n):
    """--global_variance: per target, ``np.std`` of all its points' lists concatenated in order.

    That is the std about the grand mean, so it includes the spread between the points' means.
    Returns (T, 1); NaN where the target has no such signal at all.
    """
    T, _, S = vals.shape
    first = np.arange(S) < n[..., None]
    out = np.full((T, 1), np.nan, dtype=vals.dtype)
    for t in range(T):
        pool = vals[t][first[t]]  # row-major: point after point, shadows in order within each
        if pool.size:
            out[t, 0] = pool.std()
    return out


def _sigma(sd):
    """``std + 1e-30`` as NumPy 1.x evaluated it: a float32 std plus a Python float gives float64."""
    return np.asarray(sd, dtype=np.float64) + SIGMA_EPS


def _carried(s, fresh):
    """--online_attack --global_variance: the original's stale ``score_in``.

    It assigns ``score_in`` (the target's own signal) only at points with at least one IN
    shadow, yet appends it at every point, so a point without IN shadows repeats the value of
    the last point before it (in processing order) that had some.  s, fresh: (T, K).  A point
    with no such predecessor in this call uses its own signal (the original carried the value
    over from the previous scenario or phase, or stopped with a NameError on its very first one).
    """
    flat = s.ravel()
    last = np.maximum.accumulate(np.where(fresh.ravel(), np.arange(flat.size), -1))
    return np.where(last >= 0, flat[np.maximum(last, 0)], flat).reshape(s.shape)


def _ratio_to_unit(r):
    """Strictly increasing map of a pdf ratio in [0, inf] onto [0, 1]; NaN (0/0) -> 1/2.

    squash(log r) inside, 0 for r == 0, 1 for r == inf.  0/0 happens when both pdfs underflow
    (the signal far from both Gaussians); 1/2 is the value of r == 1, "no evidence".
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.log(r)
    out = np.full(y.shape, 0.5)
    finite = np.isfinite(y)
    out[finite] = squash(y[finite])
    out[y == -np.inf] = 0.0
    out[y == np.inf] = 1.0
    return out


def runner_up_lira(
    target_signal,
    shadow_signal,
    shadow_in,
    target_index,
    exclude=None,
    *,
    online_attack: bool = False,
    global_variance: bool = False,
    logit_scaling: bool = False,
    stable_logit_scaling: bool = False,
) -> np.ndarray:
    """The MICO runner-up's LiRA scores, as its run_lira_mia.py computed them, mapped into [0, 1].

    Parameters
    ----------
    target_signal : (T, K)
        Each target's :func:`runner_up_signal` on its K challenge points, in challenge order.
        Targets in the original's processing order (dev, final, train; ids ascending) make the
        carried signal of (U6) identical; nothing else depends on the order.
    shadow_signal : (S, P)
        Every shadow's :func:`runner_up_signal` on the pool of P points.
    shadow_in : (S, P) bool
        The membership the original *used*: :func:`challenges.splits.runner_up_membership`
        reproduces its index bug; pass the true membership to see its attack without the bug.
    target_index : (T, K) int
        Pool index of each target's challenge points.
    exclude : (T,) int, optional
        Shadow to leave out of target t's statistics, -1 for none.  The original never did: in
        its train phase a target that is quirky-OUT on a point counts itself among that point's
        OUT shadows.  None (default) reproduces that.
    online_attack, global_variance, logit_scaling, stable_logit_scaling : bool
        The original's four flags.  Online together with either scaling flag raises ValueError,
        as the original refused it (with NotImplementedError).

    For one point with target signal s, the lists OUT / IN of the shadows' signals (shadow
    order), mu = np.mean and sd = np.std (ddof=0) of a list:

    (U4) offline: ``norm.cdf(s, mu(OUT), sd(OUT) + 1e-30)``.
    (U5) online: ``norm.pdf(s, mu(IN), sd(IN) + 1e-30) / norm.pdf(s, mu(OUT), sd(OUT) + 1e-30)``;
         a point with no IN shadow uses mu(OUT), sd(OUT) for IN (ratio 1).
    (U6) --global_variance: sd(OUT) (and sd(IN) online) replaced by one np.std per target over
         all of its points' OUT (IN) lists concatenated; mu stays per point.  Online, the IN
         signal is the stale ``score_in`` of :func:`_carried`.

    Precision as in the original: float32 lists and float32 mean/std without a scaling flag,
    float64 with one; ``scipy.stats.norm`` then subtracts in the inputs' precision and divides
    in float64.  (Under NumPy 1.x the --global_variance division itself ran in float32, one
    rounding of z that moves no score by more than 1e-7.)

    Departures, all where the original produced no valid prediction:

    - (U5) wrote the raw ratio, in [0, inf] or NaN, which MICO's scorer rejects; we map it by
      :func:`_ratio_to_unit` (strictly increasing, so the original's ranking is kept).
    - A point with no OUT shadow: the original stopped with a ValueError (softmax, or np.max with
      stable scaling, of an empty array); its statistics are NaN here.  Every NaN becomes 1/2.

    Returns (T, K) float64 in [0, 1].
    """
    if online_attack and (logit_scaling or stable_logit_scaling):
        raise ValueError(
            "the runner-up's program has no online attack with logit scaling (it raised "
            "NotImplementedError): drop online_attack or the scaling flag"
        )
    dtype = np.float64 if (logit_scaling or stable_logit_scaling) else np.float32
    tgt, shd, member, idx, excl = _inputs(target_signal, shadow_signal, shadow_in, target_index, exclude, 2, dtype)
    out_vals, n_out = _packed(shd, ~member, idx, excl)
    mu_out, sd_out = _moments(out_vals, n_out)
    if global_variance:
        sd_out = _pooled_std(out_vals, n_out)
    with np.errstate(all="ignore"):  # NaN where the original had NaN; resolved below
        if not online_attack:
            score = norm.cdf(tgt, mu_out, _sigma(sd_out))
            return np.where(np.isnan(score), 0.5, score)
        in_vals, n_in = _packed(shd, member, idx, excl)
        mu_in, sd_in = _moments(in_vals, n_in)
        mu_in = np.where(n_in > 0, mu_in, mu_out)
        if global_variance:
            sd_in = _pooled_std(in_vals, n_in)
            s_in = _carried(tgt, n_in > 0)
        else:
            sd_in = np.where(n_in > 0, sd_in, sd_out)
            s_in = tgt
        ratio = norm.pdf(s_in, mu_in, _sigma(sd_in)) / norm.pdf(tgt, mu_out, _sigma(sd_out))
    return _ratio_to_unit(ratio)


# --------------------------------------------------------------------------- #
# winner
# --------------------------------------------------------------------------- #
WINNER_METRICS = ("loss", "confidence")  # the original's --metric_idx 0, 1
WINNER_FORMULAS = ("mid", "in", "z")  # the original's --formula_idx 0, 1, 2


@dataclass(frozen=True)
class WinnerChoice:
    """One scenario's configuration in the winner's submission."""

    metric: str  # 'loss' (minus the cross-entropy) or 'confidence' (softmax probability p_y)
    formula: str  # 'mid', 'in' or 'z', see mico_winner


# From src2/README.md, "merge results": which output folder each scenario was copied from.
WINNER_CONFIG = {
    ("cifar10", "inf"): WinnerChoice("loss", "in"),
    ("cifar10", "hi"): WinnerChoice("confidence", "in"),
    ("cifar10", "lo"): WinnerChoice("confidence", "in"),
    ("purchase100", "inf"): WinnerChoice("confidence", "mid"),
    ("purchase100", "hi"): WinnerChoice("loss", "z"),
    ("purchase100", "lo"): WinnerChoice("loss", "z"),
}


def winner_signal(phi, metric: str) -> np.ndarray:
    """The winner's per-point signal from cached phi, float32, shape of phi.

    - ``'loss'``: ``-F.cross_entropy`` = log p_y = -softplus(-phi).
    - ``'confidence'``: ``softmax(z)[y]`` = p_y = sigmoid(phi).

    Evaluated in float64 from the float32 phi and rounded to float32: within a few float32 ulps
    of torch's float32 ops on the logits (the original's precision).
    """
    phi = np.asarray(phi, dtype=np.float64)
    if metric == "loss":
        with np.errstate(invalid="ignore"):  # NaN marks a point the cache holds none of: NaN stays NaN
            return (-np.logaddexp(0.0, -phi)).astype(np.float32)
    if metric == "confidence":
        return expit(phi).astype(np.float32)
    raise ValueError(f"metric must be one of {WINNER_METRICS}, got {metric!r}")


def mico_winner(
    target_signal, shadow_signal, shadow_in, target_index, exclude=None, *, formula: str, phase=None
) -> np.ndarray:
    """The MICO winner's per-point calibrated scores (src2/main.py ``get_hardness_pred``).

    Parameters
    ----------
    target_signal : (T, K)
        Each target's :func:`winner_signal` on its challenge points.
    shadow_signal : (S, P)
        The train models' :func:`winner_signal` on the pool.
    shadow_in : (S, P) bool
        True membership (the winner mapped positions to dataset indices correctly).
    target_index : (T, K) int
        Pool index of each target's challenge points.
    exclude : (T,) int, optional
        The original drops the target itself from both groups in the train phase: pass each
        train target's own shadow row, -1 for dev and final targets.
    formula : {'mid', 'in', 'z'}
        With IN / OUT the (non-excluded) shadows' signals on the point, ALL = IN ++ OUT, means in
        torch float32 (we use float64) and ``std`` torch's default, unbiased (ddof=1):

        (W1) 'mid' (formula_idx 0):  s - (mean(IN) + mean(OUT)) / 2
        (W2) 'in'  (formula_idx 1):  s - mean(IN)
        (W3) 'z'   (formula_idx 2):  (s - mean(ALL)) / std(ALL)

        A point with fewer than two OUT signals uses its IN signals as OUT (the original's rule),
        so ALL is then the IN signals twice.
    phase : (T,) array, optional
        Group label per target (e.g. 'train', 'dev', 'final').  The original min-max scales each
        (scenario, phase) separately: (x - min) / (max - min) over all of that phase's models.
        None: one group.  Call once per scenario.

    Departures, only where the original computed NaN or infinity (which its min-max then spread
    to every model of the phase):

    - no IN signal on a point ('mid' and 'in'; for 'z' only with fewer than two OUT as well):
      the OUT signals stand in for the IN ones, the mirror image of its own rule for OUT;
    - std(ALL) == 0: floored at SIGMA_FLOOR;
    - a constant phase maps to 1/2 (:func:`attacks.baselines.minmax`);
    - a point with no shadow signal at all: ValueError.

    Returns (T, K) float64 in [0, 1].
    """
    if formula not in WINNER_FORMULAS:
        raise ValueError(f"formula must be one of {WINNER_FORMULAS}, got {formula!r}")
    s, x, member, idx, excl = _inputs(target_signal, shadow_signal, shadow_in, target_index, exclude, 2, np.float64)
    T = s.shape[0]
    if phase is not None:
        phase = np.asarray(phase)
        if phase.shape != (T,):
            raise ValueError(f"phase must have shape {(T,)}, got {phase.shape}")
    mom = point_moments(x, member, idx, excl[:, None])
    n_in, m_in, v_in = mom[True]
    n_out, m_out, v_out = mom[False]
    if np.any(n_in + n_out == 0):
        raise ValueError("a target point has no shadow signal at all (after leaving the target out)")
    swap = (n_in == 0) if formula != "z" else (n_in == 0) & (n_out <= 1)
    n_in, m_in, v_in = (np.where(swap, o, i) for i, o in ((n_in, n_out), (m_in, m_out), (v_in, v_out)))
    few = n_out <= 1
    n_o, m_o, v_o = (np.where(few, i, o) for i, o in ((n_in, n_out), (m_in, m_out), (v_in, v_out)))
    if formula == "in":
        stat = s - m_in
    elif formula == "mid":
        stat = s - 0.5 * (m_in + m_o)
    else:
        n = n_in + n_o
        mu = (n_in * m_in + n_o * m_o) / n
        var = (n_in * (v_in + (m_in - mu) ** 2) + n_o * (v_o + (m_o - mu) ** 2)) / (n - 1)
        stat = (s - mu) / np.maximum(np.sqrt(var), SIGMA_FLOOR)
    if phase is None:
        return minmax(stat)
    out = np.empty(stat.shape)
    for g in np.unique(phase):
        rows = phase == g
        out[rows] = minmax(stat[rows])
    return out


# --------------------------------------------------------------------------- #
# LiRA reference, offline
# --------------------------------------------------------------------------- #
def reference_offline(
    target_signal,
    shadow_signal,
    shadow_in,
    target_index=None,
    exclude=None,
    *,
    fix_variance: bool = False,
    equal_counts: bool = False,
    no_out: float | None = None,
) -> np.ndarray:
    """The offline test of the LiRA authors' code (``plot.py``, ``generate_ours_offline``), in [0, 1].

    (F1)  score = -mean_v log N(s_v; median(OUT_v), (std(OUT_v) + 1e-30)^2)
               = mean_v [log(std_v + 1e-30) + z_v^2 / 2] + const,   z_v = (s_v - median_v) / (std_v + 1e-30)

    The reference stores mean_v log N and ranks by its negative (``roc_curve(x, -score)``):
    a two-sided test, since a signal far *below* the OUT median scores as high as one far above,
    and points whose OUT spread is wide score higher through the log-std term.  The paper's
    offline test (and :func:`attacks.lira.lira`) is one-sided, Phi((s - mu_out) / sigma_out).

    Parameters
    ----------
    target_signal : (T, K, V); shadow_signal : (S, P, V); shadow_in : (S, P) bool
        As in :func:`attacks.lira.lira`.
    target_index : (T, K) int, optional
        Pool index of each target's points; None: K == P, every target on the whole pool.
    exclude : (T,) int, optional
        Shadow to leave out of target t's statistics (the reference attacks held-out models, so
        it has no such case), -1 for none.
    fix_variance : bool
        One std over every OUT signal of every pool point and view (``np.std(dat_out)``) instead
        of per point and view.
    equal_counts : bool
        Keep only the first n OUT shadows of every point (shadow order), n the smallest OUT count
        over the pool, as the reference does to stack them into one array.  Harmless with its 256
        shadows trained on random halves; with MICO's ~17 OUT shadows per cifar10 point it would
        keep a handful.  Off by default.

    Statistics: median (np.median, mean of the two middle values) and ddof=0 std of the OUT
    signals.  Returns squash(score) (:func:`attacks.lira.squash`), (T, K) float64 in [0, 1].
    ValueError if a target point has no OUT shadow (the reference would compute NaN), unless
    ``no_out`` is given: such points then score ``no_out`` (1/2: no evidence either way).
    Cost: O(S * K * V) per target, plus O(S * P * V) per distinct ``exclude`` value when
    ``fix_variance`` or ``equal_counts`` needs the whole pool.
    """
    tgt, shd, member, idx, excl = _inputs(target_signal, shadow_signal, shadow_in, target_index, exclude, 3, np.float64)
    S = shd.shape[0]
    whole_pool = {}

    def pool_out(e):
        """OUT mask over the whole pool without shadow e, truncated if asked, and its pooled std."""
        if e not in whole_pool:
            keep = ~member & (np.arange(S) != e)[:, None]
            if equal_counts:
                keep &= np.cumsum(keep, axis=0) <= keep.sum(axis=0).min()
            whole_pool[e] = (keep, shd[keep].std() if fix_variance else None)
        return whole_pool[e]

    score = np.empty(idx.shape)
    missing = np.zeros(idx.shape, dtype=bool)
    for t in range(len(tgt)):
        if equal_counts or fix_variance:
            keep, pooled = pool_out(excl[t])
            keep = keep[:, idx[t]]
        else:
            keep, pooled = ~member[:, idx[t]] & (np.arange(S) != excl[t])[:, None], None
        missing[t] = ~keep.any(axis=0)
        if missing[t].any() and no_out is None:
            raise ValueError(
                f"target {t} has a point with no OUT shadow (after leaving one out and "
                "equal_counts): the reference's OUT Gaussian is undefined there"
            )
        vals = np.where(keep[:, :, None], shd[:, idx[t]], np.nan)  # (S, K, V)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: the points without OUT
            med = np.nanmedian(vals, axis=0)
            sd = pooled if fix_variance else np.nanstd(vals, axis=0)
            score[t] = -norm.logpdf(tgt[t], med, sd + SIGMA_EPS).mean(axis=-1)
    out = squash(np.nan_to_num(score))
    out[missing] = no_out if no_out is not None else 0.5
    return out
