"""Training order: the IN side of per-point calibration shifted to "IN as a first-trained member".

MICO trains a non-private model on ``member ++ training``, unshuffled: its m challenge members are
the first records of every epoch, the filler follows. A target's members are therefore "IN as a
member". A shadow that is a MICO train model holds a pool point as one of its own challenge
members (trained first, as a target holds its members: ``shadow_first``), as filler, or not at
all; a pool point is the challenge member of about one model (its own), so the IN group that
per-point calibration averages over (online LiRA's IN Gaussian, online RMIA's mean IN probability,
the calibrated attack's mu_in) is nearly all filler: "IN as filler". The train models' own members
measure the difference, pooled over points, with nothing but the cached signals (no model query).

For one signal ``x`` (S, P) (one query view, or the view mean where the attack averages views)
and each target t with ``exclude[t]`` (its own shadow row, -1 for none):

    (O1) z_kp = (x_kp - mu_in(p)) / sd_in(p)  for every first entry (k, p): shadow k holds point p
         as one of its first members, k != exclude[t]. mu_in, sd_in (ddof 0, floored at
         SIGMA_FLOOR): the point's IN shadows without k and without exclude[t] (the same mixed IN
         group the attacks calibrate with), entries with fewer than MIN_IN of them skipped.
    (O2) delta_t = median of z_kp over those entries: one pooled shift, in units of the per-point IN
         standard deviation (a point is first for about one shadow, so no per-point estimate
         exists). The median, not the mean: a saturated point (every IN shadow at p = 1.0) has its
         sd at the floor and an arbitrary z. No entry left (too few shadows, as in a fold of a
         handful of train models): delta_t = 0, no evidence and no shift, as LiRA's own fallbacks.
    (O3) shift[t, j] = delta_t * sd_in(p_j) for target t's own challenge point p_j: the additive
         shift of the IN location the attack uses for that point (its sd is left as it is), with
         sd_in over the point's IN shadows without exclude[t]; a point with fewer than MIN_IN IN
         shadows takes the mean sd_in of the target's other points (0 if none has one).

The target's own row never enters its estimate: with ``exclude[t] = t`` neither its signals, nor its
membership, nor its first entries are read. Designed shadows (production/design.py) train their
pool points first too, but as a block of thousands, not a first batch of m: they are never first
entries (``ScenarioData.shadow_first`` is False for them), only IN or OUT shadows as usual. In
MICO's DP runs batches are Poisson-sampled, so being a member says nothing about order there; the
estimate measures the shift rather than assuming it (near 0 there, if order is all it captures).
"""

from __future__ import annotations

import numpy as np

from .checks import check_exclude, check_membership
from .stats import SIGMA_FLOOR, group_sums, point_moments

FLAG = "--order-shift"
MIN_IN = 2  # IN shadows a point needs (besides those left out) for a per-point IN sd


def require(shadow_first, shape) -> np.ndarray:
    """``shadow_first`` checked as a bool (S, P) array with a first entry; ValueError naming the flag
    where the scenario has none (no train model with known membership among the shadows: nothing to
    measure the shift on, ever, so the option is refused rather than left doing nothing)."""
    if shadow_first is None or not np.asarray(shadow_first).any():
        raise ValueError(
            f"{FLAG}: no shadow holds a challenge point as one of its own (first-trained) members; it needs "
            "train models with known membership as shadows (designed shadows never count): drop the flag"
        )
    return check_membership(shadow_first, shape)


def deltas(x, shadow_in, shadow_first, exclude) -> np.ndarray:
    """(T,) delta_t of (O1)-(O2): the pooled shift of a first-trained member over the IN shadows'
    per-point mean, in per-point IN standard deviations, each target leaving out ``exclude[t]``."""
    x = np.asarray(x, dtype=np.float64)
    member = check_membership(shadow_in, x.shape)
    first = require(shadow_first, x.shape)
    if (first & ~member).any():
        raise ValueError("shadow_first marks points the shadow does not hold (not in shadow_in)")
    excl = check_exclude(exclude, len(np.atleast_1d(exclude)), x.shape[0])
    ks, ps = np.nonzero(first)
    cols, col = np.unique(ps, return_inverse=True)  # only the points that are first somewhere
    xc = x[:, cols]
    gs = group_sums(xc, member[:, cols])  # once; each (entry, target) pair downdates two shadows
    found = {}
    for e in np.unique(excl).tolist():
        keep = ks != e
        k, c = ks[keep], col[keep]
        n, mean, var = _in_moments(gs, c, (k, e))
        ok = n >= MIN_IN
        z = (xc[k[ok], c[ok]] - mean[ok]) / np.maximum(np.sqrt(var[ok]), SIGMA_FLOOR)
        found[e] = float(np.median(z)) if z.size else 0.0  # no evidence: no shift
    return np.array([found[e] for e in excl.tolist()], dtype=np.float64)


def _in_moments(gs, idx, drops):
    """Count, mean and ddof=0 variance of the IN signals at pool points ``idx`` (attacks.stats'
    :func:`group_sums`), leaving out each shadow of ``drops``: distinct shadow indices (arrays
    broadcastable to ``idx``, -1 for none), each downdated as :func:`query_moments` does one."""
    n, c, a1, a2 = (a[idx] for a in gs[True])
    for drop in drops:
        e = gs["pos"][np.broadcast_to(drop, idx.shape)]
        has = e >= 0
        er = np.where(has, e, 0)
        hit = gs["member"][er, idx] & has
        d = np.where(hit, gs["d"][er, idx], 0.0)
        n, a1, a2 = n - hit, a1 - d, a2 - d * d
    safe = np.maximum(n, 1)
    m1 = a1 / safe
    return n, np.where(n > 0, c + m1, 0.0), np.where(n > 0, np.maximum(a2 / safe - m1 * m1, 0.0), 0.0)


def in_shift(x, shadow_in, shadow_first, target_index, exclude) -> np.ndarray:
    """(T, K) additive shift (O3) of the IN location at target t's challenge points
    ``target_index[t]`` (pool indices), in the units of ``x`` (S, P)."""
    x = np.asarray(x, dtype=np.float64)
    member = check_membership(shadow_in, x.shape)
    idx = np.asarray(target_index)
    excl = check_exclude(exclude, idx.shape[0], x.shape[0])
    delta = deltas(x, member, shadow_first, excl)
    n, _, var = point_moments(x, member, idx, excl[:, None])[True]
    ok = n >= MIN_IN
    sd = np.sqrt(var)
    n_ok = ok.sum(axis=1, keepdims=True)
    typical = np.where(n_ok > 0, np.where(ok, sd, 0.0).sum(axis=1, keepdims=True) / np.maximum(n_ok, 1), 0.0)
    return delta[:, None] * np.where(ok, sd, typical)
