"""Per-point statistics of the shadow models' signals, with leave-one-out downdates.

Shared by the attacks: for every pool point, the count, mean and ddof=0 variance of the IN and
the OUT shadows' signals, where each query may leave one shadow out (the target itself, when it
is a shadow) without another pass over the shadows; and the one fallback for a point with too few
IN or OUT shadows (:func:`mean_gap`, :func:`fill_by_gap`).
"""

from __future__ import annotations

import numpy as np

# Smallest standard deviation used in any Gaussian.  A spread of exactly zero
# happens when every shadow gives the same float32 value (e.g. p == 1.0 for all
# IN models): the Gaussian is then degenerate and its pdf / cdf undefined.  The
# signals come from float32 model outputs (relative resolution 6e-8), so spreads
# below 1e-6 are not resolvable from rounding anyway.  The runner-up added 1e-30
# instead; a floor this small turns rounding noise of the mean into z-scores of
# 1e14 and makes results depend on summation order.
SIGMA_FLOOR = 1e-6


def group_sums(x, member, avail=None) -> dict:
    """Per-pool-point sums of the IN and OUT shadow signals, for :func:`query_moments`.

    x: (S, P) float64 shadow signal; member: (S, P) bool; avail: optional
    (S,) bool, the shadows that exist at all (default all).  The sums are of
    deviations d = x - c from each group's full mean c (as in attacks.lira),
    so that a leave-one-out downdate of the sum of squares stays free of
    cancellation.  O(S*P), done once and queried many times.
    """
    S = x.shape[0]
    if avail is None:
        avail = np.ones(S, dtype=bool)
    rows = np.flatnonzero(avail)
    xa = x[rows]
    ma = member[rows]
    pos = np.full(S + 1, -1, dtype=np.intp)  # shadow index -> row in xa; pos[-1] = -1 for "none"
    pos[rows] = np.arange(rows.size)
    mf = ma.astype(np.float64)
    n_in = ma.sum(axis=0)
    n_out = rows.size - n_in
    sum_in = (xa * mf).sum(axis=0)
    sum_out = xa.sum(axis=0) - sum_in
    c_in = sum_in / np.maximum(n_in, 1)
    c_out = sum_out / np.maximum(n_out, 1)
    d = xa - np.where(ma, c_in, c_out)
    d_in = d * mf
    d_out = d - d_in
    return {
        "pos": pos,
        "d": d,
        "member": ma,
        True: (n_in, c_in, d_in.sum(axis=0), (d_in * d).sum(axis=0)),
        False: (n_out, c_out, d_out.sum(axis=0), (d_out * d).sum(axis=0)),
    }


def query_moments(gs, idx, excl) -> dict:
    """Count, mean and ddof=0 variance of the IN and OUT signals at pool points, leave-one-out.

    gs: from :func:`group_sums`; idx: int array of any shape Q (pool
    indices); excl: int array broadcastable to Q, the shadow to leave out of
    each entry's statistics, -1 for none (a shadow outside ``avail`` leaves
    nothing to remove).  Returns {True: (n, mean, var), False: (n, mean,
    var)} (True = IN), each of shape Q; mean = var = 0 where n == 0.

    Leave-one-out by downdating: the excluded shadow's term is subtracted
    from the per-point sums, O(|Q|), never a per-entry pass over shadows.
    """
    idx = np.asarray(idx)
    excl = np.broadcast_to(np.asarray(excl), idx.shape)
    e = gs["pos"][excl]  # -1: nothing to downdate
    has = e >= 0
    er = np.where(has, e, 0)
    d, ma = gs["d"], gs["member"]
    d_e = np.where(has, d[er, idx], 0.0)
    in_e = ma[er, idx] & has
    out_e = ~ma[er, idx] & has
    out = {}
    for g in (True, False):
        n, c, a1, a2 = gs[g]
        hit = in_e if g else out_e
        n = n[idx] - hit
        a1 = a1[idx] - np.where(hit, d_e, 0.0)
        a2 = a2[idx] - np.where(hit, d_e * d_e, 0.0)
        safe = np.maximum(n, 1)
        m1 = a1 / safe
        mean = np.where(n > 0, c[idx] + m1, 0.0)
        var = np.where(n > 0, np.maximum(a2 / safe - m1 * m1, 0.0), 0.0)
        out[g] = (n, mean, var)
    return out


def point_moments(x, member, idx, excl, avail=None) -> dict:
    """:func:`query_moments` of :func:`group_sums` in one call."""
    return query_moments(group_sums(x, member, avail), idx, excl)


def mean_gap(mu_in, mu_out, both, axis=-1, default=0.0):
    """Mean of ``mu_in - mu_out`` over the entries where ``both`` groups have statistics.

    Along ``axis`` (keeping it, for broadcasting), or over everything with ``axis=None`` (a float);
    ``default`` where no entry has both.
    """
    diff = np.where(both, mu_in - mu_out, 0.0)
    if axis is None:
        nb = int(np.sum(both))
        return float(diff.sum() / nb) if nb else float(default)
    nb = np.sum(both, axis=axis, keepdims=True)
    return np.where(nb > 0, diff.sum(axis=axis, keepdims=True) / np.maximum(nb, 1), default)


def fill_by_gap(mu_in, mu_out, ok_in, ok_out, gap):
    """The fallback for a point with too few IN or OUT shadows: shift the other group's location by
    the IN-OUT ``gap`` (from :func:`mean_gap`). Returns (mu_in, mu_out), filled where not ok."""
    return np.where(ok_in, mu_in, mu_out + gap), np.where(ok_out, mu_out, mu_in - gap)
