"""The neighbourhood attack: one multivariate Gaussian likelihood ratio over a point's query views.

A model's signal on a point is taken on V query views at once: view 0 the point itself (``orig``),
then its neighbourhood views (``save_preds.py --neighbours K``: purchase100 records with a few
purchase bits flipped, cifar10 images with pixel noise) and, on cifar10, the flips and shifts of
``--augment``. A member tends to sit in a sharper basin than a non-member: its signal drops more
from the point to its neighbours, which a per-point calibration of one signal cannot see. The
views of one model are strongly correlated, so LiRA's rule of independent views (attacks.lira, L3)
counts the same evidence V times; this attack models the correlation.

Signal: s_v = phi on view v (the stable logit, LiRA's ``stable_logit_scaling``). Per point x and
hypothesis g in {IN, OUT}:

    (N1) s = (s_0 .. s_{V-1}) ~ N(mu_g(x), Sigma_g(x)),   Sigma_g(x) = D_g(x) R_g D_g(x)

  mu_g(x) and D_g(x) = diag(sigma_g,v(x)): per-point, per-view mean and ddof=0 std of the shadows'
  signals in group g, exactly LiRA's per-point statistics with its fallbacks (attacks.lira,
  ``_view_statistic``: a point with fewer than ``min_shadows`` shadows in a group takes the
  target's pooled values, IN shifted from OUT by the mean IN-OUT gap); R_g one correlation matrix
  per group for every point:

    (N2) R_g = sum_x n_g(x) C_g(x) / sum_x n_g(x)        over the pool points with n_g(x) >= 2,

  C_g(x) the sample correlation matrix of group g's signal vectors at x (a view with no spread at
  x has the identity's row and column there). A weighted mean of correlation matrices: symmetric,
  positive semi-definite, unit diagonal. Per-point scales with a pooled correlation keep LiRA's
  per-point calibration and estimate only V(V-1)/2 numbers from every (shadow, point) pair.

    (N3) R_g* = (1 - lam) R_g + lam I                       shrinkage toward the diagonal

  lam by the oracle approximating shrinkage of Chen, Wiesel, Eldar and Hero (2010, "Shrinkage
  algorithms for MMSE covariance estimation", eq. 23), the Gaussian refinement of Ledoit and Wolf's,
  with n = sum_x (n_g(x) - 1) residual degrees of freedom: a closed form in tr(R), tr(R^2), n and
  V, so it is left out exactly along with R (below). Few shadows or points shrink toward the
  identity, i.e. toward LiRA's independent views; ``shrinkage`` fixes lam instead.

The tests, with z_g = D_g^{-1} (s - mu_g) the per-view z-scores:

    (N4) offline (OUT shadows only): z_out ~ N(0, R_out) under OUT. The best linear test of a shift
         of every view in the same direction is the generalised least squares combination
             Z = 1' R_out^{-1} z_out / sqrt(1' R_out^{-1} 1),   N(0, 1) under OUT;
         score Phi(Z). With R = I it is LiRA's Stouffer Z (L3), and LiRA's one-view test (L1).
    (N5) online: llr = log N(s; mu_in, Sigma_in) - log N(s; mu_out, Sigma_out)
             = sum_v log(sigma_out,v / sigma_in,v) + (logdet R_out - logdet R_in) / 2
               + (z_out' R_out^{-1} z_out - z_in' R_in^{-1} z_in) / 2;
         score squash(llr / V). With R = I it is LiRA online's score (L2, L3): the product of
         independent per-view Gaussians, whose log ratio LiRA averages over views.

Leave-one-out. A target that is shadow e (``exclude``) is left out of everything its score
uses: the per-point moments (attacks.stats downdates) and R_g, whose per-point scatter matrices
are downdated at every point, W' = W - n / (n - 1) d d' (d: e's deviation from the group mean),
before the correlations are re-formed: the same R as from the shadows without e, in O(P V^2) per
left-out shadow. So neither its signals nor its membership enter its own score.

Pure array maths: no I/O, no global state.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr

from .checks import check_array, check_exclude, check_membership, pool_index
from .lira import _pooled, squash
from .stats import SIGMA_FLOOR, fill_by_gap, mean_gap, point_moments


class GroupScatter:
    """Per-point count, mean vector and scatter matrix of one group's (IN or OUT) signal vectors,
    and the pooled correlation (N2) with any one shadow left out.

    x: (S, P, V) shadow signals (float32 from the cache is fine: read in float64 chunks of
    ``chunk_points`` points); in_group: (S, P) bool, the shadows of the group at each point.
    """

    def __init__(self, x, in_group, chunk_points: int = 1024):
        S, P, V = x.shape
        self.x, self.in_group = x, in_group
        self.n = in_group.sum(axis=0).astype(np.float64)  # (P,)
        self.mean = np.zeros((P, V))
        self.scatter = np.zeros((P, V, V))
        chunk = max(int(chunk_points), 1)
        for p0 in range(0, P, chunk):
            sl = slice(p0, p0 + chunk)
            w = in_group[:, sl].astype(np.float64)  # (S, c)
            xs = x[:, sl].astype(np.float64)  # (S, c, V)
            mean = np.einsum("sc,scv->cv", w, xs) / np.maximum(self.n[sl], 1.0)[:, None]
            d = (xs - mean).transpose(1, 0, 2)  # (c, S, V)
            self.mean[sl] = mean
            self.scatter[sl] = (d * w.T[:, :, None]).transpose(0, 2, 1) @ d
        self.weight, self.total, self.dof = self._sums(self.n, self.scatter)

    @staticmethod
    def _correlations(n, scatter):
        """n * C(x) for each point (n >= 2), else 0: (P, V, V)."""
        V = scatter.shape[-1]
        var = np.einsum("pvv->pv", scatter) / np.maximum(n, 1.0)[:, None]
        spread = var > SIGMA_FLOOR**2
        sd = np.where(spread, np.sqrt(np.where(spread, var, 1.0)), 1.0) * np.sqrt(np.maximum(n, 1.0))[:, None]
        corr = scatter / (sd[:, :, None] * sd[:, None, :])
        both = spread[:, :, None] & spread[:, None, :]
        corr = np.where(both, corr, np.eye(V))
        return np.where((n >= 2)[:, None, None], n[:, None, None] * corr, 0.0)

    def _sums(self, n, scatter):
        """(sum of n C over points with n >= 2, sum of those n, sum of their n - 1)."""
        ok = n >= 2
        return self._correlations(n, scatter).sum(axis=0), n[ok].sum(), (n[ok] - 1).sum()

    def correlation(self, exclude: int = -1) -> tuple[np.ndarray, float]:
        """(R (V, V) from (N2), residual degrees of freedom) with shadow ``exclude`` left out (-1: none)."""
        weight, total, dof = self.weight, self.total, self.dof
        if exclude >= 0:
            at = np.flatnonzero(self.in_group[exclude])
            if at.size:
                n = self.n[at]
                d = self.x[exclude, at].astype(np.float64) - self.mean[at]  # (A, V)
                factor = np.where(n > 1, n / np.maximum(n - 1, 1), 0.0)
                new_scatter = self.scatter[at] - factor[:, None, None] * d[:, :, None] * d[:, None, :]
                new_scatter = np.where((n > 1)[:, None, None], new_scatter, 0.0)
                old = self._sums(n, self.scatter[at])
                new = self._sums(n - 1, new_scatter)
                weight, total, dof = weight - old[0] + new[0], total - old[1] + new[1], dof - old[2] + new[2]
        V = weight.shape[0]
        if total <= 0:  # no point with two shadows of the group: nothing to correlate
            return np.eye(V), 0.0
        R = weight / total
        return (R + R.T) / 2, float(dof)


def oas_shrinkage(R, dof: float) -> float:
    """The oracle approximating shrinkage intensity (N3) of a V x V matrix estimated with ``dof``
    degrees of freedom (Chen et al. 2010, eq. 23), toward tr(R)/V times the identity; 1 where the
    matrix is already a multiple of the identity or there is nothing to estimate it from."""
    V = R.shape[0]
    tr, tr2 = np.trace(R), float(np.sum(R * R))
    den = (dof + 1 - 2 / V) * (tr2 - tr * tr / V)
    if V < 2 or dof <= 0 or den <= 0:
        return 1.0
    return float(min(1.0, ((1 - 2 / V) * tr2 + tr * tr) / den))


def shrunk(R, dof: float, shrinkage: float | None = None) -> tuple[np.ndarray, float]:
    """(R* of (N3), the intensity used): ``shrinkage`` None for OAS, or a fixed number in [0, 1]."""
    lam = oas_shrinkage(R, dof) if shrinkage is None else float(shrinkage)
    V = R.shape[0]
    return (1 - lam) * R + lam * (np.trace(R) / V) * np.eye(V), lam


def _per_view(s, mom, min_shadows, sigma_floor, online):
    """Per-view z-scores and sigmas of one view, with LiRA's fallbacks (attacks.lira,
    ``_view_statistic``, per-point sigma and mean): (z_out, sd_out, z_in, sd_in), each (T, K);
    the IN ones None offline."""
    n_out, mean_out, var_out = mom[False]
    N_out, M_out, sd_pool_out = _pooled(n_out, mean_out, var_out)
    if np.any(N_out == 0):
        bad = np.flatnonzero(N_out == 0)
        raise ValueError(
            f"target(s) {bad[:10].tolist()} have no OUT shadow signal on any of "
            "their challenge points (after leave-one-out): the neighbourhood attack needs OUT shadows"
        )
    ok_out = n_out >= min_shadows
    mu_out = np.where(ok_out, mean_out, M_out[:, None])
    sd_out = np.maximum(np.where(ok_out, np.sqrt(var_out), sd_pool_out[:, None]), sigma_floor)
    z_out = (s - mu_out) / sd_out
    if not online:
        return z_out, sd_out, None, None
    n_in, mean_in, var_in = mom[True]
    N_in, M_in, sd_pool_in = _pooled(n_in, mean_in, var_in)
    ok_in = n_in >= min_shadows
    gap_pool = np.where(N_in > 0, M_in - M_out, 0.0)
    gap = mean_gap(mean_in, mean_out, ok_in & ok_out, axis=1, default=gap_pool[:, None])
    mu_in, _ = fill_by_gap(mean_in, mu_out, ok_in, True, gap)
    sd_in_fb = np.where(N_in[:, None] > 0, sd_pool_in[:, None], sd_out)
    sd_in = np.maximum(np.where(ok_in, np.sqrt(var_in), sd_in_fb), sigma_floor)
    return z_out, sd_out, (s - mu_in) / sd_in, sd_in


def _check(target_signal, shadow_signal, shadow_in, target_index, exclude, min_shadows, shrinkage):
    tgt = check_array(target_signal, "target_signal", 3)
    shd = check_array(shadow_signal, "shadow_signal", 3)
    T, K, V = tgt.shape
    S, P, Vs = shd.shape
    if Vs != V:
        raise ValueError(f"view count differs: target_signal has {V}, shadow_signal has {Vs}")
    member = check_membership(shadow_in, (S, P))
    if isinstance(min_shadows, bool) or int(min_shadows) != min_shadows or min_shadows < 1:
        raise ValueError(f"min_shadows must be an integer >= 1, got {min_shadows!r}")
    if shrinkage is not None and not 0 <= shrinkage <= 1:
        raise ValueError(f"shrinkage must be None (OAS) or a number in [0, 1], got {shrinkage!r}")
    return tgt, shd, member, pool_index(target_index, T, K, P), check_exclude(exclude, T, S)


def correlations(shadow_signal, shadow_in, exclude, *, online: bool, shrinkage=None) -> dict:
    """{left-out shadow e: {group: (R_g* (V, V), lam)}} for each distinct value of ``exclude``
    (N2, N3); the groups are OUT (False) and, online, IN (True)."""
    x = np.asarray(shadow_signal)
    member = np.asarray(shadow_in, dtype=bool)
    groups = (False, True) if online else (False,)
    scatter = {g: GroupScatter(x, member if g else ~member) for g in groups}
    out = {}
    for e in np.unique(exclude).tolist():
        out[e] = {g: shrunk(*scatter[g].correlation(e), shrinkage) for g in groups}
    return out


def neighbourhood_lira(
    target_signal,
    shadow_signal,
    shadow_in,
    target_index=None,
    exclude=None,
    *,
    online: bool = False,
    min_shadows: int = 2,
    shrinkage: float | None = None,
    sigma_floor: float = SIGMA_FLOOR,
) -> np.ndarray:
    """Membership scores (T, K) in [0, 1] of the multivariate test (N4 offline, N5 online).

    target_signal (T, K, V): each target's signal on its own K challenge points, every view;
    shadow_signal (S, P, V), shadow_in (S, P), target_index (T, K) and exclude (T,) as in
    :func:`attacks.lira.lira`. ``shrinkage``: None for OAS (N3), or a fixed intensity in [0, 1]
    (1: independent views, LiRA's rule). One view: LiRA with the stable logit signal, per-point
    sigma and the mean, online or offline, exactly.

    Cost: LiRA's O(S*P*V) sums and O(T*K*V) downdates, plus O(S*P*V^2) once for the scatter
    matrices and O(P*V^2) per distinct left-out shadow.
    """
    tgt, shd, member, idx, excl = _check(
        target_signal, shadow_signal, shadow_in, target_index, exclude, min_shadows, shrinkage
    )
    T, K, V = tgt.shape
    parts = []
    for v in range(V):
        mom = point_moments(shd[:, :, v].astype(np.float64), member, idx, excl[:, None])
        parts.append(_per_view(tgt[:, :, v].astype(np.float64), mom, min_shadows, sigma_floor, online))
    z_out = np.stack([p[0] for p in parts], axis=-1)  # (T, K, V)
    corr = correlations(shd, member, excl, online=online, shrinkage=shrinkage)
    total = np.empty((T, K))
    if not online:
        for e, by_group in corr.items():
            t = excl == e
            w = np.linalg.solve(by_group[False][0], np.ones(V))
            total[t] = z_out[t] @ w / np.sqrt(w.sum())
        return ndtr(total)
    z_in = np.stack([p[2] for p in parts], axis=-1)
    logsd = sum(np.log(p[1]) - np.log(p[3]) for p in parts)  # (T, K)
    for e, by_group in corr.items():
        t = excl == e
        (r_out, _), (r_in, _) = by_group[False], by_group[True]
        logdet = np.linalg.slogdet(r_out)[1] - np.linalg.slogdet(r_in)[1]
        total[t] = logsd[t] + 0.5 * logdet + 0.5 * (_quadratic(z_out[t], r_out) - _quadratic(z_in[t], r_in))
    return squash(total / V)


def _quadratic(z, R) -> np.ndarray:
    """z' R^{-1} z for every vector of z (..., V)."""
    return np.einsum("...v,...v->...", z, np.linalg.solve(R, z.reshape(-1, z.shape[-1]).T).T.reshape(z.shape))
