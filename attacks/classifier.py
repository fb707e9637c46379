"""Shokri-style attack model: a classifier trained on shadow models' outputs.

Reference: R. Shokri, M. Stronati, C. Song, V. Shmatikov, "Membership
Inference Attacks Against Machine Learning Models", IEEE S&P 2017: train
shadow models whose membership is known, then train a binary "attack model"
on their outputs (IN vs OUT) and apply it to the target's outputs.  The paper
uses one attack model per class on the full prediction vector; like most
later work (e.g. Salem et al., NDSS 2019, "ML-Leaks") we use one model on
the *sorted* prediction vector (top-k probabilities), which is
class-agnostic, plus the true-class signals the cache already holds.

Features of one (model, point) pair; "bar" = mean over the query views:

- with logits (C classes): the softmax vector of each view sorted in
  decreasing order, first k = min(top_k, C) entries, averaged over views
  (k features); then phi_bar and Mentr_bar (2 features);
- without logits: phi_v and Mentr_v of every view (2V features).
- with V >= 2 views (neighbourhood views, ``save_preds.py --neighbours``, or
  cifar10's flips and shifts), the neighbourhood's shape: with view 0 the
  point itself, nb = mean_{v>=1} phi_v - phi_0 (how much the signal moves
  off the point; MERLIN-style) and the spread (ddof=0) of phi_1..phi_{V-1}
  (2 features).  Without logits the classifier also sees every view's phi
  and Mentr itself; with logits it sees only their means over the views.
- calibration features (``calibration=True``, default), in the spirit of
  per-point difficulty calibration (Watson et al., ICLR 2022) and LiRA: with
  mu_in, mu_out, sd_out the IN/OUT means and OUT spread (ddof=0) of phi_bar
  over the shadows at that point,
      phi_bar - mu_out,  phi_bar - mu_in,  (phi_bar - mu_out) / sd_out,
      Mentr_bar - mu_out(Mentr_bar)                           (4 features),
  and with V >= 2 also nb - mu_out(nb) (1 feature).
  A raw phi mixes "the model trained on x" with "x is easy"; these
  differences remove most of the per-point difficulty, which a classifier
  cannot learn from shadow rows of other points.  They cost O(S*P) sums.

Leave-one-out, honestly.  A shadow that is itself a target must be unseen by
the classifier that scores it, and must not enter the statistics of the
calibration features either.  Shadows are split at random into ``n_folds``
folds; the classifier of fold f is trained on, and computes its calibration
statistics from, only the shadows outside fold f (the "available" set A),
and scores the targets whose ``exclude`` lies in fold f.  That is exactly the
situation of an attacker who has the shadows A and meets an unseen target.
Targets with ``exclude == -1`` (dev/final models) use a classifier trained on
all shadows.  Within A, a training row (shadow s, point p) takes its
calibration statistics from A \\ {s} (its own signal would otherwise sit in
its own group mean, shrinking the IN-OUT gap seen in training).  Cost of the
honesty: the leave-one-out targets see 1 - 1/n_folds of the shadows, so
their scores slightly understate what all shadows give.

Pure array maths plus scikit-learn: no I/O, no global state.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import clone
from sklearn.ensemble import ExtraTreesClassifier

from .checks import check_array, check_exclude, check_index, check_membership
from .stats import SIGMA_FLOOR, fill_by_gap, group_sums, mean_gap, query_moments


def default_estimator(seed=0, n_jobs: int = 2) -> ExtraTreesClassifier:
    """The default attack model.

    100 extremely randomised trees with leaves of at least 50 rows: MIA
    labels are noisy (a member and a non-member often look alike), so deep
    leaves only memorise noise; 50-row leaves also train ~2x faster than
    fully grown trees.  Measured on 2 (shared) cores: ~2 s to fit 100,000
    rows x 6 features, ~5 s for 16 features; ``classifier_attack``'s
    default of 50,000 rows halves that.
    """
    return ExtraTreesClassifier(
        n_estimators=100, min_samples_leaf=50, max_features="sqrt", n_jobs=n_jobs, random_state=seed
    )


def _softmax_topk(logits, k: int) -> np.ndarray:
    """(N, V, C) logits -> (N, k): per view the softmax sorted descending, first k, mean over views."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)
    top = -np.partition(-p, k - 1, axis=-1)[..., :k] if k < p.shape[-1] else p
    top = -np.sort(-top, axis=-1)
    return top.mean(axis=1)


class _Calibrator:
    """Per-point IN/OUT statistics of phi_bar and Mentr_bar over an available shadow set A.

    Global fallbacks (over all pool points, statistics of A without
    leave-one-out): gap = mean(mu_in - mu_out) over points with both groups
    (0 if none), a missing mu_in is mu_out + gap and a missing mu_out is
    mu_in - gap; sd_out of a point with fewer than 2 OUT shadows is the root
    mean OUT variance over the points with >= 2 (1 if none); every sd is
    floored at SIGMA_FLOOR.
    """

    def __init__(self, phib, mentrb, member, avail, nb=None):
        P = phib.shape[1]
        allp = np.arange(P)
        self.sums, self.glob = {}, {}
        signals = (("phi", phib), ("mentr", mentrb)) + ((("nb", nb),) if nb is not None else ())
        for name, x in signals:
            gs = group_sums(x, member, avail)
            mom = query_moments(gs, allp, -1)
            (n_in, m_in, _), (n_out, m_out, v_out) = mom[True], mom[False]
            gap = mean_gap(m_in, m_out, (n_in > 0) & (n_out > 0), axis=None)
            ok = n_out >= 2
            sd = float(np.sqrt(v_out[ok].mean())) if ok.any() else 1.0
            self.sums[name] = gs
            self.glob[name] = (gap, sd)

    def _stats(self, name, pts, excl):
        mom = query_moments(self.sums[name], pts, excl)
        (n_in, m_in, _), (n_out, m_out, v_out) = mom[True], mom[False]
        gap, sd_pool = self.glob[name]
        mu_in, mu_out = fill_by_gap(m_in, m_out, n_in > 0, n_out > 0, gap)
        sd = np.maximum(np.where(n_out >= 2, np.sqrt(v_out), sd_pool), SIGMA_FLOOR)
        return mu_in, mu_out, sd

    def features(self, pts, excl, phib, mentrb, nb=None) -> np.ndarray:
        """(N, 4) calibration features of rows at pool points ``pts`` (N,), leaving out shadow excl
        (N,); (N, 5) with the neighbourhood signal ``nb`` (N,) (the calibrator's own given too)."""
        mu_in, mu_out, sd = self._stats("phi", pts, excl)
        _, me_out, _ = self._stats("mentr", pts, excl)
        cols = [phib - mu_out, phib - mu_in, (phib - mu_out) / sd, mentrb - me_out]
        if "nb" in self.sums:
            cols.append(nb - self._stats("nb", pts, excl)[1])
        return np.stack(cols, axis=1)


def neighbourhood(phi) -> np.ndarray | None:
    """(..., 2): mean_{v>=1} phi_v - phi_0 and the spread (ddof=0) of phi_1..phi_{V-1}, of phi
    (..., V); None with one view."""
    if phi.shape[-1] < 2:
        return None
    rest = phi[..., 1:]
    return np.stack([rest.mean(axis=-1, dtype=np.float64) - phi[..., 0], rest.std(axis=-1, dtype=np.float64)], axis=-1)


def _features(phi, mentr, logits, calib, top_k: int) -> np.ndarray:
    """Feature matrix (N, F) float32 of N rows: phi, mentr (N, V); logits (N, V, C) or None."""
    cols = []
    nb = neighbourhood(phi)
    if nb is not None:
        cols.append(nb)
    if logits is not None:
        k = min(top_k, logits.shape[-1])
        cols.append(_softmax_topk(logits, k))
        cols.append(phi.mean(axis=1, keepdims=True))
        cols.append(mentr.mean(axis=1, keepdims=True))
    else:
        cols.extend([phi, mentr])
    if calib is not None:
        cols.append(calib)
    return np.concatenate([np.asarray(c, dtype=np.float64) for c in cols], axis=1).astype(np.float32)


def _check_inputs(
    target_phi,
    target_mentr,
    shadow_phi,
    shadow_mentr,
    shadow_in,
    target_index,
    exclude,
    target_logits,
    shadow_logits,
    n_folds,
    max_train,
    top_k,
):
    """Validated arrays: (tphi, tmen, sphi, smen, member, idx, excl, tlog, slog)."""
    tphi = check_array(target_phi, "target_phi", 3)
    tmen = check_array(target_mentr, "target_mentr", 3)
    sphi = check_array(shadow_phi, "shadow_phi", 3)
    smen = check_array(shadow_mentr, "shadow_mentr", 3)
    T, K, V = tphi.shape
    S, P, Vs = sphi.shape
    if tmen.shape != tphi.shape or smen.shape != sphi.shape or Vs != V:
        raise ValueError(
            f"shape mismatch: target_phi {tphi.shape}, target_mentr {tmen.shape}, "
            f"shadow_phi {sphi.shape}, shadow_mentr {smen.shape}"
        )
    member = check_membership(shadow_in, (S, P))
    idx = check_index(target_index, T, K, P)
    excl = check_exclude(exclude, T, S)
    if (target_logits is None) != (shadow_logits is None):
        raise ValueError("give both target_logits and shadow_logits, or neither")
    tlog = slog = None
    if target_logits is not None:
        tlog = check_array(target_logits, "target_logits", 4)
        slog = np.asarray(shadow_logits)  # may be a memmap: checked per gathered block
        if (
            slog.ndim != 4
            or slog.shape[:3] != (S, P, V)
            or tlog.shape[:3] != (T, K, V)
            or tlog.shape[3] != slog.shape[3]
            or slog.shape[3] < 1
        ):
            raise ValueError(
                f"logits must be (T, K, V, C) and (S, P, V, C) matching the signals; got {tlog.shape} and {slog.shape}"
            )
    if isinstance(n_folds, bool) or int(n_folds) != n_folds or n_folds < 2:
        raise ValueError(f"n_folds must be an integer >= 2, got {n_folds!r}")
    if isinstance(max_train, bool) or int(max_train) != max_train or max_train < 2:
        raise ValueError(f"max_train must be an integer >= 2, got {max_train!r}")
    if int(top_k) < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k!r}")
    if (excl >= 0).any() and S < 2:
        raise ValueError("leave-one-out targets need at least 2 shadows")
    return tphi, tmen, sphi, smen, member, idx, excl, tlog, slog


def _build(phi, mentr, logits, pts, ex, cal, top_k: int, chunk_rows: int) -> np.ndarray:
    """Features of N rows, in blocks of ``chunk_rows``.

    phi, mentr: (N, V); logits: None or (array, i0, i1) with row r's logits at ``array[i0[r], i1[r]]``
    (only those rows are read); pts, ex: (N,) pool point and shadow to leave out of the calibration
    statistics; cal: a :class:`_Calibrator` or None.
    """
    out = []
    for r0 in range(0, phi.shape[0], chunk_rows):
        sl = slice(r0, r0 + chunk_rows)
        lg = cf = None
        if logits is not None:
            arr, i0, i1 = logits
            lg = check_array(arr[i0[sl], i1[sl]], "logits", 3)
        if cal is not None:
            nb = neighbourhood(phi[sl])
            cf = cal.features(
                pts[sl],
                ex[sl],
                phi[sl].mean(axis=1, dtype=np.float64),
                mentr[sl].mean(axis=1, dtype=np.float64),
                None if nb is None else nb[:, 0],
            )
        out.append(_features(phi[sl], mentr[sl], lg, cf, top_k))
    return np.concatenate(out, axis=0)


def _fit_predict(X, y, Xt, estimator, seed) -> np.ndarray:
    """P(IN) for the rows Xt from a classifier fitted on (X, y); a constant with one class only."""
    if np.unique(y).size < 2:  # one class only: no information
        return np.full(Xt.shape[0], float(y[0]))
    clf = clone(estimator) if estimator is not None else default_estimator(seed)
    clf.fit(X, y)
    return clf.predict_proba(Xt)[:, list(clf.classes_).index(True)]


def classifier_attack(
    target_phi,
    target_mentr,
    shadow_phi,
    shadow_mentr,
    shadow_in,
    target_index,
    exclude=None,
    *,
    target_logits=None,
    shadow_logits=None,
    n_folds: int = 4,
    max_train: int = 50_000,
    calibration: bool = True,
    top_k: int = 10,
    estimator=None,
    seed: int = 0,
    chunk_rows: int = 20_000,
) -> np.ndarray:
    """Attack-model membership scores in [0, 1] (higher = more likely a member).

    Parameters
    ----------
    target_phi, target_mentr : (T, K, V) float
        Each target's phi and Mentr on its own K challenge points.
    shadow_phi, shadow_mentr : (S, P, V) float
        Every shadow's phi and Mentr on the whole pool.
    shadow_in : (S, P) bool
        Shadow membership: the classifier's labels.
    target_index : (T, K) int
        Pool index of each target's challenge points.
    exclude : (T,) int, optional
        The shadow row that is target t itself (-1 for none); such targets
        are scored out-of-fold (module docstring).
    target_logits : (T, K, V, C) float, optional
    shadow_logits : (S, P, V, C) float, optional
        Both or neither.  With them the features are the top-k sorted softmax
        (+ phi_bar, Mentr_bar); without, phi and Mentr per view.  Only the
        sampled rows are read, so a memory-mapped array works.
    n_folds : int >= 2
        Folds over the shadows for the leave-one-out targets (capped at S).
    max_train : int
        Training rows per classifier, sampled uniformly (with ``seed``) from
        (available shadow, pool point) pairs.
    calibration : bool
        Add the 4 per-point calibration features (module docstring).
    top_k : int
        Sorted-softmax features with logits.
    estimator : scikit-learn classifier, optional
        Cloned (unfitted) for every classifier trained; default
        :func:`default_estimator`.  Needs ``predict_proba``.
    seed : int
        Fold assignment, row sampling and the default estimator's seed.
    chunk_rows : int
        Rows per block when building features (bounds memory with logits).

    Returns
    -------
    (T, K) float64 in [0, 1]: predict_proba of the IN class.  At most
    n_folds + 1 classifiers are trained: one per fold holding a
    leave-one-out target, one on all shadows if any target has exclude -1.
    """
    tphi, tmen, sphi, smen, member, idx, excl, tlog, slog = _check_inputs(
        target_phi,
        target_mentr,
        shadow_phi,
        shadow_mentr,
        shadow_in,
        target_index,
        exclude,
        target_logits,
        shadow_logits,
        n_folds,
        max_train,
        top_k,
    )
    T, K, V = tphi.shape
    S, P, _ = sphi.shape
    top_k, chunk_rows = int(top_k), max(int(chunk_rows), 1)

    rng = np.random.default_rng(seed)
    n_f = min(int(n_folds), S)
    fold = np.empty(S, dtype=np.intp)
    fold[rng.permutation(S)] = np.arange(S) % n_f
    phib = sphi.mean(axis=2, dtype=np.float64)
    mentrb = smen.mean(axis=2, dtype=np.float64)
    nb_shadow = None if V < 2 else sphi[..., 1:].mean(axis=2, dtype=np.float64) - sphi[..., 0]  # (S, P)

    scores = np.full((T, K), np.nan)
    groups = [(-1, excl < 0)] + [(f, (excl >= 0) & (fold[np.maximum(excl, 0)] == f)) for f in range(n_f)]
    for f, which in groups:
        if not which.any():
            continue
        avail = np.ones(S, dtype=bool) if f < 0 else fold != f
        a_rows = np.flatnonzero(avail)
        total = a_rows.size * P
        flat = np.arange(total) if total <= max_train else rng.choice(total, size=int(max_train), replace=False)
        flat.sort()  # row-major reads of the shadow arrays
        s_idx, p_idx = a_rows[flat // P], flat % P
        cal = _Calibrator(phib, mentrb, member, avail, nb_shadow) if calibration else None
        X = _build(
            sphi[s_idx, p_idx],
            smen[s_idx, p_idx],
            None if slog is None else (slog, s_idx, p_idx),
            p_idx,
            s_idx,
            cal,
            top_k,
            chunk_rows,
        )

        tt = np.flatnonzero(which)
        t_pts = idx[tt].ravel()
        t_logits = None if tlog is None else (tlog, np.repeat(tt, K), np.tile(np.arange(K), tt.size))
        # the targets of a fold are outside A, dev/final targets are not shadows: nothing to leave out
        Xt = _build(
            tphi[tt].reshape(-1, V),
            tmen[tt].reshape(-1, V),
            t_logits,
            t_pts,
            np.full(t_pts.size, -1),
            cal,
            top_k,
            chunk_rows,
        )
        scores[tt] = _fit_predict(X, member[s_idx, p_idx], Xt, estimator, seed).reshape(tt.size, K)
    return np.clip(scores, 0.0, 1.0)
