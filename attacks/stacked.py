"""A stacked attack: one logistic regression over the per-point scores of several attacks.

Each base attack (LiRA offline/online, RMIA, calibrated loss and confidence under each formula,
entropy, ...) gives every (target, challenge point) a score in [0, 1]. The features of a pair are
those scores through a clipped logit (S1), standardised over the training rows (S2); the model is
a logistic regression (S3) fitted on the train models, whose membership is known:

    (S1)  x_a = logit(clip(s_a, EPS, 1 - EPS))        one feature per base attack a
    (S2)  z_a = (x_a - mean_a) / sd_a                  mean, sd over the fit's rows
    (S3)  P(IN | z) = sigmoid(w . z + b)               L2-penalised, C = 1

The logit undoes the saturation of LiRA's Phi(z) and of RMIA's scores near 0 and 1, so the model
weighs log-ratios rather than probabilities (the same idea as LiRA's scaled logit).

A combiner matched to the metric (objective ``'low-fpr'``). Log-loss weighs every point alike, but
MICO's metric reads only the top of the ranking: TPR at 10% FPR or below. With ``'low-fpr'`` the
fit is repeated (S4) with every fit row whose score is above the non-members' (1 - FOCUS_FPR)
quantile weighted FOCUS_WEIGHT times, members and non-members alike, so the boundary is drawn where
the metric's threshold lies (a reweighted surrogate of the partial AUC below FOCUS_FPR):

    (S4)  w_i = FOCUS_WEIGHT if P(IN | z_i) >= q_{1 - FOCUS_FPR}(P(IN | z_j), j non-member) else 1

Out of fold, with the target left out of everything. As in attacks.classifier, the shadows are
split into ``n_folds`` folds; a target that is itself a shadow (``exclude >= 0``) is scored by a
model fitted on the folds without it, and every base attack that builds its features, for the fit
and for the target, sees only those folds' shadows (attacks.folds.held_out): the target's
membership enters neither its own features (it is not a shadow there) nor the features or labels
of the fit. Dev/final targets (``exclude == -1``) use a model fitted on every train model, the
fit's rows scored leave-one-out. The fit's rows are each base attack's leave-one-out scores; the
target's are scored with all the fold's shadows, one more than a fit row sees.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression

from .checks import check_exclude
from .folds import held_out, split_rows

EPS = 1e-6  # (S1): logit of 1e-6 is -13.8; scores of exactly 0 or 1 (min-max ends) stay finite
OBJECTIVES = ("logloss", "low-fpr")
FOCUS_FPR = 0.2  # (S4): the region weighted, twice the ranking FPR so the 10% threshold sits inside it
FOCUS_WEIGHT = 4.0
FOCUS_ROUNDS = 2


def features(scores) -> np.ndarray:
    """(N, A) features (S1) from A base attacks' scores, given as (A, N) or a list of A (N,) arrays."""
    s = np.clip(np.asarray(scores, dtype=np.float64), EPS, 1 - EPS)
    return np.log(s / (1 - s)).T


def fit_predict(x_fit, y_fit, x_new, C: float = 1.0, objective: str = "logloss") -> np.ndarray:
    """P(IN) (S2, S3) for the rows ``x_new`` (M, A) from a model fitted on ``x_fit`` (N, A), ``y_fit``
    (N,); ``objective='low-fpr'`` refits with the top of the ranking weighted (S4)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown stacking objective {objective!r}: choose one of {', '.join(OBJECTIVES)}")
    y = np.asarray(y_fit).astype(bool)
    if y.size == 0 or y.all() or not y.any():
        raise ValueError("the stacked attack needs train models with both members and non-members")
    mean = x_fit.mean(axis=0)
    sd = x_fit.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)  # a constant feature carries nothing; keep it finite
    z_fit, weight = (x_fit - mean) / sd, np.ones(len(y))
    model = LogisticRegression(C=C, max_iter=1000)
    for _ in range(1 + (FOCUS_ROUNDS if objective == "low-fpr" else 0)):
        model.fit(z_fit, y, sample_weight=weight)
        p = model.predict_proba(z_fit)[:, 1]
        weight = np.where(p >= np.quantile(p[~y], 1 - FOCUS_FPR), FOCUS_WEIGHT, 1.0)
    return model.predict_proba((x_new - mean) / sd)[:, 1]


def _fit_rows(data) -> np.ndarray:
    """Train models that are shadows with known membership on all their challenge points."""
    train = data.phase_rows("train")
    train = train[train < len(data.shadow_in)]
    return train[(data.solutions[train] >= 0).all(axis=1)]


def _fit_and_score(data, base, targets, C, objective) -> np.ndarray:
    """(len(targets), 2m) scores of the rows ``targets`` (none of them a shadow of ``data``, or
    scored with every shadow), from a model fitted on ``data``'s train models leave-one-out."""
    fit = _fit_rows(data)
    if fit.size == 0:
        raise ValueError("the stacked attack needs train models with known membership as shadows")
    rows = np.concatenate([fit, targets])
    exclude = np.concatenate([fit, np.full(len(targets), -1)])
    per_attack = []  # each (len(rows), 2m)
    for label, attack in base.items():
        try:
            per_attack.append(attack(data, rows, exclude))
        except ValueError as e:
            raise ValueError(
                f"stacked: base attack {label} cannot run with {len(data.shadow_in)} shadows "
                f"(a fold's fit sees 1 - 1/n_folds of them): {e}"
            ) from None
    x = features([s.ravel() for s in per_attack])
    n_fit = fit.size * per_attack[0].shape[1]
    p = fit_predict(x[:n_fit], data.solutions[fit].ravel(), x[n_fit:], C, objective)
    return p.reshape(len(targets), -1)


def stacked_attack(
    data, rows, exclude, base, *, n_folds: int = 4, seed: int = 0, C: float = 1.0, objective: str = "logloss"
) -> np.ndarray:
    """Stacked membership scores (T, 2m) in [0, 1] of the model rows ``rows`` of ``data``.

    ``base``: {label: attack}, each ``attack(data, rows, exclude) -> (T, 2m)`` scores in [0, 1]
    (attacks.suite's interface); ``exclude`` (T,): the shadow row each target must leave out, -1
    for none. Targets that are shadows are scored out of fold (module docstring): at most
    ``n_folds`` + 1 models are fitted, and each base attack runs once per fit.
    """
    rows = np.asarray(rows, dtype=np.int64)
    n_shadows = len(data.shadow_in)
    exclude = check_exclude(exclude, len(rows), n_shadows)
    if isinstance(n_folds, bool) or int(n_folds) != n_folds or n_folds < 2:
        raise ValueError(f"n_folds must be an integer >= 2, got {n_folds!r}")
    if not base:
        raise ValueError("the stacked attack needs at least one base attack")
    out = np.full((len(rows), data.challenge.shape[1]), np.nan)
    whole = exclude < 0
    if whole.any():
        out[whole] = _fit_and_score(data, base, rows[whole], C, objective)
    for fold in split_rows(np.arange(n_shadows), min(int(n_folds), n_shadows), seed):
        which = np.isin(exclude, fold)
        if which.any():  # the fold's shadows are held out: its targets are no one's shadow
            sub, new_row = held_out(data, fold)
            out[which] = _fit_and_score(sub, base, new_row[rows[which]], C, objective)
    return out
