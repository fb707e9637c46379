"""MICO scoring, with the competition's exact semantics.

Mirrors the official scoring program (microsoft/MICO,
src/mico-competition/scoring/score.py):

- one ROC curve over all challenge points of a scenario pooled across target
  models (a single global threshold, not one per model), from
  ``sklearn.metrics.roc_curve`` with its default ``drop_intermediate=True``;
- TPR at FPR t = max(tpr[fpr < t]), strictly below t;
- AUC = ``roc_auc_score``; MIA = max(tpr - fpr);
  accuracy = max(1 - (fpr + 1 - tpr) / 2) (balanced accuracy);
- the ranking metric is the mean over the scenarios of TPR_FPR_1000
  (TPR at 10% FPR);
- each phase on its own: MICO ranked the dev and the final models apart (two
  leaderboards), and the winner as submitted min-max scales each phase apart,
  so one ROC over dev + final pooled would put two scalings under one
  threshold. Where both are scored, :func:`phase_mean` gives each phase's
  metrics and their mean, with bootstrap standard errors that resample target
  models within each phase.

Note the consequence of the strict ``<``: roc_curve's first point is always
(fpr, tpr) = (0, 0) (threshold +inf), so a score whose top group of tied
predictions already contains non-members at FPR >= t gets TPR 0 at t, e.g.
constant predictions give TPR 0 at every threshold.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

FPR_THRESHOLDS = (0.001, 0.01, 0.05, 0.1, 0.15, 0.2)
# same expression as MICO's score.py, so the keys match exactly
TPR_KEYS = tuple(f"TPR_FPR_{int(1e4 * t)}" for t in FPR_THRESHOLDS)
RANKING_KEY = "TPR_FPR_1000"
METRIC_KEYS = TPR_KEYS + ("AUC", "MIA", "accuracy")
# What a person reads (tables, reports); files (scores.json/csv) keep MICO's keys above.
METRIC_LABELS = {
    **{k: f"TPR@{100 * t:g}%FPR" for k, t in zip(TPR_KEYS, FPR_THRESHOLDS)},
    "AUC": "AUC",
    "MIA": "MIA",
    "accuracy": "accuracy",
}


# A score's bootstrap standard error, as the files keep it: "TPR_FPR_1000 SE"
SE_SUFFIX = " SE"
SE_FPRS = {"TPR_FPR_10": 0.001, "TPR_FPR_100": 0.01, "TPR_FPR_1000": 0.1}


def _validate(solutions, predictions):
    sol = np.asarray(solutions)
    pred = np.asarray(predictions)
    if sol.shape != pred.shape:
        raise ValueError(f"solutions and predictions differ in shape: {sol.shape} vs {pred.shape}")
    sol = sol.ravel()
    pred = pred.ravel()
    if sol.size == 0:
        raise ValueError("no challenge points to score")
    if sol.dtype != bool and not np.issubdtype(sol.dtype, np.number):
        raise ValueError(f"solutions must be numeric 0/1 labels, got dtype {sol.dtype}")
    if not np.isin(sol, (0, 1)).all():
        raise ValueError("solutions must contain only 0 (non-member) and 1 (member)")
    if sol.min() == sol.max():
        raise ValueError("solutions must contain both members (1) and non-members (0)")
    if pred.dtype == bool or not np.issubdtype(pred.dtype, np.number):
        raise ValueError(f"predictions must be real numbers in [0, 1], got dtype {pred.dtype}")
    pred = pred.astype(np.float64)
    if not np.isfinite(pred).all():
        raise ValueError(f"predictions contain {int((~np.isfinite(pred)).sum())} NaN/infinite values")
    if pred.min() < 0 or pred.max() > 1:
        raise ValueError(f"predictions must lie in [0, 1], got range [{pred.min()}, {pred.max()}]")
    return sol.astype(np.int64), pred


def score(solutions, predictions) -> dict:
    """MICO metrics of one scenario.

    solutions: 0/1 membership labels of every challenge point (all target
    models of the scenario concatenated); predictions: membership scores in
    [0, 1], same shape.  Raises ValueError on malformed input.

    Returns a dict with TPR_FPR_10, TPR_FPR_100, TPR_FPR_500, TPR_FPR_1000,
    TPR_FPR_1500, TPR_FPR_2000, AUC, MIA, accuracy (python floats) and the ROC
    curve itself as 'fpr', 'tpr' arrays (for plotting).
    """
    sol, pred = _validate(solutions, predictions)
    fpr, tpr, _ = roc_curve(sol, pred)
    scores = {}
    for key, t in zip(TPR_KEYS, FPR_THRESHOLDS):
        scores[key] = float(np.max(tpr[fpr < t]))  # never empty: fpr[0] == 0
    scores["AUC"] = float(roc_auc_score(sol, pred))
    scores["MIA"] = float(np.max(tpr - fpr))
    scores["accuracy"] = float(np.max(1 - (fpr + (1 - tpr)) / 2))
    scores["fpr"] = fpr
    scores["tpr"] = tpr
    return scores


def ranking_metric(scores_by_scenario: dict) -> float:
    """The leaderboard metric: mean TPR_FPR_1000 over the scenarios."""
    if not scores_by_scenario:
        raise ValueError("no scenarios to rank")
    return float(np.mean([s[RANKING_KEY] for s in scores_by_scenario.values()]))


def _weighted_tpr_at(order_truth, order_model, ends, counts, fpr: float) -> np.ndarray:
    """TPR at ``fpr`` (strictly below, as :func:`score`) of the pooled ROC with each point weighted
    by its model's count in each resample. order_*: (N,) the points in decreasing score order;
    ends: (G,) last position of each group of tied scores; counts: (B, M) -> (B,)."""
    w = counts[:, order_model].astype(np.float64)  # (B, N)
    tp = np.cumsum(w * order_truth, axis=1)[:, ends]
    fp = np.cumsum(w * (1 - order_truth), axis=1)[:, ends]
    tpr = tp / tp[:, -1:]
    fpr_ = fp / fp[:, -1:]
    return np.where(fpr_ < fpr, tpr, 0.0).max(axis=1)  # 0: roc_curve's first point (0, 0)


def _tpr_replicates(sol, pred, model, counts, fpr: float, chunk: int) -> np.ndarray:
    """(B,) pooled TPR at ``fpr`` of the points (sol, pred, model: (N,)) under each resample's counts."""
    order = np.argsort(-pred, kind="stable")
    p = pred[order]
    ends = np.flatnonzero(np.r_[p[1:] != p[:-1], True])
    return np.concatenate(
        [
            _weighted_tpr_at(sol[order], model[order], ends, counts[b : b + chunk], fpr)
            for b in range(0, len(counts), chunk)
        ]
    )


def _draw_counts(strata, n_boot: int, seed) -> np.ndarray:
    """(n_boot, M) times each model is drawn: with replacement, each stratum keeping its size."""
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_boot, len(strata)), dtype=np.int64)
    for g in np.unique(strata):
        members = np.flatnonzero(strata == g)
        draws = members[rng.integers(0, len(members), size=(n_boot, len(members)))]
        np.add.at(counts, (np.arange(n_boot)[:, None], draws), 1)
    return counts


def bootstrap_tpr(
    truth,
    scores: dict,
    *,
    fpr: float = 0.1,
    n_boot: int = 1000,
    seed: int = 0,
    strata=None,
    by_stratum=(),
    chunk: int = 100,
) -> dict:
    """Paired bootstrap over target models of the pooled TPR at ``fpr``: {label: (n_boot,) replicates}.

    truth: (M, K) 0/1 membership of M target models' K challenge points; scores: {label: (M, K)}
    each attack's scores of the same points. Every replicate draws M target models with
    replacement (the unit MICO's pooled metric averages over is the model, whose points share its
    training run) and scores every attack on that same draw, so the replicates of two attacks
    pair: the standard error of their difference is ``np.std(reps[a] - reps[b], ddof=1)``
    (:func:`paired_se`). A drawn model counts as often as it is drawn (weights in one pooled ROC,
    no copies). Values equal :func:`score`'s TPR except where sklearn's drop_intermediate removes
    a collinear point below ``fpr``, which needs evenly spaced runs of tied scores.

    strata: optional (M,) group of each model; each replicate then draws within every group,
    keeping its size. by_stratum: labels whose score is the mean over the groups of each group's
    own pooled TPR (as attacks.auto's honest estimate scores its halves), not one pooled TPR.
    """
    truth = np.asarray(truth)
    if truth.ndim != 2 or truth.shape[0] < 2:
        raise ValueError(f"truth must be (models, points) with at least 2 models, got shape {truth.shape}")
    if isinstance(n_boot, bool) or int(n_boot) != n_boot or n_boot < 2:
        raise ValueError(f"n_boot must be an integer >= 2, got {n_boot!r}")
    M, K = truth.shape
    strata = np.zeros(M, dtype=np.int64) if strata is None else np.asarray(strata)
    if strata.shape != (M,):
        raise ValueError(f"strata must give one group per model, shape {(M,)}, got {strata.shape}")
    sol, _ = _validate(truth, np.zeros(truth.shape))
    # every MICO model holds members and non-members, so every resample has both classes
    if (sol.reshape(M, K).min(axis=1) == sol.reshape(M, K).max(axis=1)).any():
        raise ValueError("every target model must hold both members and non-members")
    counts = _draw_counts(strata, int(n_boot), seed)
    model = np.repeat(np.arange(M), K)
    groups = [np.repeat(strata == g, K) for g in np.unique(strata)] if by_stratum else []
    out = {}
    for label, s in scores.items():
        _, pred = _validate(truth, s)
        if label in by_stratum:
            parts = [_tpr_replicates(sol[g], pred[g], model[g], counts, fpr, chunk) for g in groups]
            out[label] = np.mean(parts, axis=0)
        else:
            out[label] = _tpr_replicates(sol, pred, model, counts, fpr, chunk)
    return out


def mean_over_groups(truth, scores, groups) -> dict:
    """:func:`score`'s metrics averaged over groups of models, each group scored on its own pooled
    ROC (truth, scores: (M, K); groups: (M,)); 'fpr'/'tpr' the groups' ROC curves averaged
    vertically on a grid of 1001 FPRs, for plotting."""
    truth, scores, groups = np.asarray(truth), np.asarray(scores), np.asarray(groups)
    parts = [score(truth[groups == g], scores[groups == g]) for g in np.unique(groups)]
    out = {k: float(np.mean([m[k] for m in parts])) for k in METRIC_KEYS}
    grid = np.linspace(0.0, 1.0, 1001)
    # the TPR of each curve at every grid FPR: its highest point with fpr <= the grid value
    curves = [m["tpr"][np.searchsorted(m["fpr"], grid, side="right") - 1] for m in parts]
    out["fpr"], out["tpr"] = grid, np.mean(curves, axis=0)
    return out


def phase_replicates(truth, scores: dict, phases, *, fpr: float = 0.1, n_boot: int = 1000, seed: int = 0) -> dict:
    """Paired bootstrap replicates {label: (n_boot,)} of the mean over phases of each phase's own
    pooled TPR at ``fpr`` (MICO scored dev and final apart): target models resampled within each
    phase, the same draws for every label. truth, scores[label]: (M, K); phases: (M,)."""
    return bootstrap_tpr(truth, scores, fpr=fpr, n_boot=n_boot, seed=seed, strata=phases, by_stratum=tuple(scores))


def phase_mean(truth, scores, phases, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """MICO's metrics of each phase of target models on its own pooled ROC, then their mean
    (:func:`mean_over_groups`), with ``"<key> SE"``: the bootstrap standard error of the mean TPR at
    0.1%, 1% and 10% FPR, target models resampled within each phase (:func:`phase_replicates`)."""
    out = mean_over_groups(truth, scores, phases)
    for key, fpr in SE_FPRS.items():
        reps = phase_replicates(truth, {"x": scores}, phases, fpr=fpr, n_boot=n_boot, seed=seed)["x"]
        out[key + SE_SUFFIX] = paired_se(reps)
    return out


def paired_se(reps_a, reps_b=None) -> float:
    """Bootstrap standard error of an attack's score (``reps_b`` None) or of the difference a - b."""
    d = np.asarray(reps_a, dtype=np.float64) - (0.0 if reps_b is None else np.asarray(reps_b, dtype=np.float64))
    return float(np.std(d, ddof=1))
