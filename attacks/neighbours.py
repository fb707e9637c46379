"""The neighbourhood attack: one multivariate Gaussian likelihood ratio over a point's query views.

A model's signal on a point is taken on V query views at once: view 0 the point itself (``orig``),
then its neighbourhood views (``save_preds.py --neighbours K``: purchase100 records with a few
purchase bits flipped, cifar10 images with pixel noise) and, on cifar10, the flips and shifts of
``--augment``. A member may sit in a sharper basin than a non-member, its signal dropping more
from the point to its neighbours, which one signal's per-point calibration cannot see. The views of
one model are strongly correlated (about 0.95 between a purchase100 record and a copy with 4 bits
flipped), so LiRA's rule of independent views (attacks.lira, L3) counts one piece of evidence V
times; this attack models the correlation.

Signal: s_v = phi on view v (the stable logit, LiRA's ``stable_logit_scaling``). Per point x and
hypothesis g in {IN, OUT}:

    (N1) s ~ N(mu_g(x), Sigma_g*)
    (N2) online:  mu_g,v(x) = mu_g,0(x) + c_v(x) + o_g,v

  mu_g,0(x): the per-point mean of view 0 over the group's shadows, LiRA's location, with its
  fallbacks (a point with fewer than ``min_shadows`` shadows in a group takes the target's pooled
  OUT mean, or the OUT location shifted by the mean IN-OUT gap); c_v(x) = m_v(x) - m_0(x), the
  point's own view effect (how its flip, shift or neighbour moves the signal), from every shadow of
  both groups; o_g,v, the group's further shift on view v (members' neighbours dropping more),
  pooled: the mean over the points of mu_g,v(x) - mu_g,0(x) - c_v(x), each point weighted by its
  count n_g(x). Why not a free per-point mean per view and group: the views are so correlated that
  Sigma^{-1} weighs differences between views far more than their common direction, and per-point
  differences of means from a handful of shadows are mostly noise there; on the demo challenge
  (16 train models, 4 neighbours) free means lost about 0.03 TPR@10%FPR in purchase100_inf and
  0.05 in purchase100_hi against (N2).
  Offline (OUT shadows only) mu_out,v(x) is every view's own per-point OUT mean, the target's
  pooled OUT mean of the view where a point has fewer than ``min_shadows`` OUT shadows.

    (N3) Sigma_g = sum_x W_g(x) / sum_x (n_g(x) - 1)        pooled within-point covariance

  W_g(x) the scatter matrix of the group's signal vectors about their per-point, per-view means,
  n_g(x) their count; then shrunk toward its diagonal: with D = diag(Sigma_g)^{1/2} and R = D^{-1}
  Sigma_g D^{-1}, Sigma_g* = D ((1 - lam) R + lam I) D, lam the oracle approximating shrinkage of
  Chen, Wiesel, Eldar and Hero (2010, "Shrinkage algorithms for MMSE covariance estimation",
  eq. 23; the Gaussian refinement of Ledoit and Wolf's) with n = sum_x (n_g(x) - 1) degrees of
  freedom. ``shrinkage`` fixes lam instead (1: independent views). Without a point holding two IN
  shadows, Sigma_IN = Sigma_OUT. One covariance for every point, as LiRA's global variance is one
  per target: per-point sigmas per view, estimated apart, put noise into the very differences
  between views that the correlation magnifies (on the demo: 0.83 against 0.97 TPR@10%FPR).

The tests, with z = D_out^{-1} (s - mu_out):

    (N4) offline: z ~ N(0, R_out*) under OUT, and the best linear test of a shift of every view
         the same way is the generalised least squares combination
             Z = 1' R_out*^{-1} z / sqrt(1' R_out*^{-1} 1),   N(0, 1) under OUT;
         score Phi(Z) (Stouffer's Z of attacks.lira, L3, where R* = I).
    (N5) online: llr = log N(s; mu_in, Sigma_in*) - log N(s; mu_out, Sigma_out*);
         score squash(llr / V) (attacks.lira.squash). With lam = 1 the log ratio is the sum of
         independent per-view Gaussians' (a product of densities), as in LiRA (L3).

Leave-one-out. A target that is shadow e (``exclude``) is left out of everything its score uses:
the per-point counts and means (its signal removed: (n m - x_e) / (n - 1)), the view effects and
offsets, and Sigma_g, whose scatter is downdated at every point of e's group,
W' = W - n / (n - 1) d d' (d: e's deviation from the group's mean there), in O(P V^2) per
left-out shadow: the same as from the shadows without e. So neither its signals nor its
membership enter its own score.

Pure array maths: no I/O, no global state.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr

from .checks import check_signals
from .lira import squash
from .stats import SIGMA_FLOOR, fill_by_gap, mean_gap


class GroupSums:
    """Per-point count, mean vector and scatter matrix of one group's (IN, OUT or every) signal
    vectors, and the same with one shadow left out.

    x: (S, P, V) shadow signals (float32 from the cache is fine: read in float64 chunks of
    ``chunk_points`` points); in_group: (S, P) bool, the group's shadows at each point.
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

    def left_out(self, e: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """(n (P,), mean (P, V), pooled scatter sum_x W(x) (V, V), its degrees of freedom
        sum_x max(n(x) - 1, 0)) without shadow ``e`` (-1: with every shadow)."""
        n, mean = self.n, self.mean
        total = self.scatter.sum(axis=0)
        if e >= 0:
            at = np.flatnonzero(self.in_group[e])
            if at.size:
                n, mean = n.copy(), mean.copy()
                xe = self.x[e, at].astype(np.float64)
                d = xe - mean[at]
                na = n[at]
                factor = np.where(na > 1, na / np.maximum(na - 1, 1), 0.0)
                total = total - np.einsum("a,av,aw->vw", factor, d, d)
                n[at] = na - 1
                mean[at] = np.where(
                    (na > 1)[:, None], (na[:, None] * mean[at] - xe) / np.maximum(na - 1, 1)[:, None], 0.0
                )
        return n, mean, total, float(np.maximum(n - 1, 0).sum())


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


def shrunk_covariance(scatter, dof: float, shrinkage: float | None = None, sigma_floor: float = SIGMA_FLOOR):
    """(Sigma* (V, V) of (N3), lam): the pooled covariance ``scatter / dof`` with its correlation
    shrunk toward the identity by ``shrinkage`` (None: OAS); each sigma at least ``sigma_floor``."""
    V = scatter.shape[0]
    cov = scatter / max(dof, 1.0)
    sd = np.maximum(np.sqrt(np.maximum(np.diag(cov), 0.0)), sigma_floor)
    R = cov / np.outer(sd, sd)
    np.fill_diagonal(R, 1.0)
    lam = oas_shrinkage(R, dof) if shrinkage is None else float(shrinkage)
    return np.outer(sd, sd) * ((1 - lam) * R + lam * np.eye(V)), lam


class Model:
    """The shadows' statistics with shadow ``e`` left out (-1: none): per group (OUT; online also
    IN) the per-point counts ``n`` and means ``mean``, the covariance ``cov`` (N3) and its
    shrinkage ``lam``; online also the view effects ``effect`` and the offsets ``offset`` (N2)."""

    def __init__(self, sums: dict, e: int, online: bool, shrinkage, sigma_floor: float):
        self.n, self.mean, self.cov, self.lam, self.offset = {}, {}, {}, {}, {}
        if online:
            every = sums[None].left_out(e)[1]
            self.effect = every - every[:, :1]  # c_v(x), (P, V)
        for g in (False, True) if online else (False,):
            n, mean, scatter, dof = sums[g].left_out(e)
            self.n[g], self.mean[g] = n, mean
            if online:  # each point weighted by the shadows behind its means
                rel = mean - mean[:, :1] - self.effect
                self.offset[g] = n @ rel / n.sum() if n.sum() > 0 else np.zeros(mean.shape[1])
            if dof > 0 or not g:
                self.cov[g], self.lam[g] = shrunk_covariance(scatter, dof, shrinkage, sigma_floor)
            else:  # no point with two IN shadows: the IN spread is the OUT spread
                self.cov[g], self.lam[g] = self.cov[False], self.lam[False]


def _pooled_mean(n, mean) -> tuple[np.ndarray, np.ndarray]:
    """(count, mean) of a group's view-0 signals over each target's points (T',), as attacks.lira's
    pooled fallback; mean 0 where the count is 0."""
    N = n.sum(axis=1)
    return N, (n * mean).sum(axis=1) / np.maximum(N, 1.0)


def _locations(model: Model, idx, min_shadows: int, online: bool) -> dict:
    """{group: mu_g (T', K, V)} at the targets' points ``idx`` (T', K): online (N2), view 0 with
    LiRA's fallbacks (attacks.lira, ``_view_statistic``); offline every view's OUT mean (N4), the
    target's pooled OUT mean of the view where a point has fewer than ``min_shadows``."""
    n_out, mean_out = model.n[False][idx], model.mean[False][idx, 0]
    N_out, M_out = _pooled_mean(n_out, mean_out)
    if np.any(N_out == 0):
        raise ValueError(
            "a target has no OUT shadow on any of its challenge points (after leave-one-out): "
            "the neighbourhood attack needs OUT shadows"
        )
    ok_out = n_out >= min_shadows
    if not online:  # OUT shadows only: every view's own per-point OUT mean (N4)
        means = model.mean[False][idx]  # (T', K, V)
        pooled = ((n_out[..., None] * means).sum(axis=1) / N_out[:, None])[:, None, :]  # (T', 1, V)
        return {False: np.where(ok_out[..., None], means, pooled)}
    mu0 = {False: np.where(ok_out, mean_out, M_out[:, None])}
    n_in, mean_in = model.n[True][idx], model.mean[True][idx, 0]
    N_in, M_in = _pooled_mean(n_in, mean_in)
    ok_in = n_in >= min_shadows
    gap_pool = np.where(N_in > 0, M_in - M_out, 0.0)
    gap = mean_gap(mean_in, mean_out, ok_in & ok_out, axis=1, default=gap_pool[:, None])
    mu0[True], _ = fill_by_gap(mean_in, mu0[False], ok_in, True, gap)
    effect = model.effect[idx]  # (T', K, V)
    return {g: m[..., None] + effect + model.offset[g] for g, m in mu0.items()}


def _logpdf(s, mu, cov) -> np.ndarray:
    """log N(s; mu, cov) for s, mu (..., V), one cov (V, V)."""
    d = s - mu
    sol = np.linalg.solve(cov, d.reshape(-1, d.shape[-1]).T).T.reshape(d.shape)
    V = d.shape[-1]
    return -0.5 * (np.einsum("...v,...v->...", d, sol) + np.linalg.slogdet(cov)[1] + V * np.log(2 * np.pi))


def _check(target_signal, shadow_signal, shadow_in, target_index, exclude, min_shadows, shrinkage):
    checked = check_signals(target_signal, shadow_signal, shadow_in, target_index, exclude)
    if isinstance(min_shadows, bool) or int(min_shadows) != min_shadows or min_shadows < 1:
        raise ValueError(f"min_shadows must be an integer >= 1, got {min_shadows!r}")
    if shrinkage is not None and not 0 <= shrinkage <= 1:
        raise ValueError(f"shrinkage must be None (OAS) or a number in [0, 1], got {shrinkage!r}")
    return checked


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
    :func:`attacks.lira.lira`. ``shrinkage``: None for OAS (N3), or a fixed intensity in [0, 1].

    Cost: O(S*P*V^2) once for the scatter matrices, O(P*V^2) per distinct left-out shadow and
    O(T*K*V^2) for the tests.
    """
    tgt, shd, member, idx, excl = _check(
        target_signal, shadow_signal, shadow_in, target_index, exclude, min_shadows, shrinkage
    )
    T, K, V = tgt.shape
    groups = {False: ~member}
    if online:
        groups |= {True: member, None: np.ones_like(member)}
    sums = {g: GroupSums(shd, m) for g, m in groups.items()}
    total = np.empty((T, K))
    for e in np.unique(excl).tolist():
        t = excl == e
        model = Model(sums, e, online, shrinkage, sigma_floor)
        mu = _locations(model, idx[t], min_shadows, online)
        s = tgt[t].astype(np.float64)
        if online:
            total[t] = _logpdf(s, mu[True], model.cov[True]) - _logpdf(s, mu[False], model.cov[False])
            continue
        sd = np.sqrt(np.diag(model.cov[False]))
        w = np.linalg.solve(model.cov[False] / np.outer(sd, sd), np.ones(V))
        total[t] = ((s - mu[False]) / sd) @ w / np.sqrt(w.sum())
    return squash(total / V) if online else ndtr(total)
