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
  (TPR at 10% FPR).

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
