"""Baseline membership-inference attacks: global thresholds and per-point calibration.

References:

- LOSS / confidence thresholds: S. Yeom, I. Giacomelli, M. Fredrikson, S. Jha,
  "Privacy Risk in Machine Learning: Analyzing the Connection to Overfitting"
  (CSF 2018); the MICO starting kit's baseline attack is this global threshold.
- Modified prediction entropy: L. Song, P. Mittal, "Systematic Evaluation of
  Privacy Risks of Machine Learning Models" (USENIX Security 2021), eq. (6):
      Mentr(f(x), y) = -(1 - p_y) log p_y - sum_{j != y} p_j log(1 - p_j),
  which is 0 for a confident correct prediction and grows both with
  uncertainty and with confident mistakes; members have lower Mentr.  It is
  precomputed per (model, point, view) by :mod:`models.query`.
- Per-point difficulty calibration: L. Watson, C. Guo, G. Cormode,
  A. Sablayrolles, "On the Importance of Difficulty Calibration in Membership
  Inference Attacks" (ICLR 2022): subtract from the target's signal what
  reference (shadow) models produce on the same point; the MICO winners used
  this form of calibration with the competition's 100 shadow models per
  scenario.

Pure array maths: no I/O, no global state.  Every attack returns (T, K)
float64 scores in [0, 1], higher = more likely a member.

Signal conventions (from the cached ``phi = z_y - logsumexp_{j != y} z_j``):

    p_y  = sigmoid(phi)                      (:func:`prob_from_phi`)
    loss = -log p_y = softplus(-phi)         (:func:`loss_from_phi`)

Scaling: every score here is ONE affine min-max map of a raw statistic over
all the targets of a call (:func:`minmax`).  An affine map with positive slope
keeps the pooled ranking, which is all MICO's ROC-based scoring looks at, so
the caller should pass every model of a scenario (all phases) in one call:
then scores of different models stay comparable, as MICO's single global
threshold requires.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from .checks import check_array, check_exclude, check_index, check_membership
from .order import in_shift
from .stats import SIGMA_FLOOR, fill_by_gap, mean_gap, point_moments

CALIBRATION_MODES = ("in", "mid", "z")


# --------------------------------------------------------------------------- #
# signals and scaling
# --------------------------------------------------------------------------- #
def prob_from_phi(phi) -> np.ndarray:
    """True-class probability p_y = sigmoid(phi), float64, same shape.

    Evaluated in float64 so that p only saturates at phi > ~36.7 (float32
    saturates at ~16.6)."""
    return expit(np.asarray(phi, dtype=np.float64))


def loss_from_phi(phi) -> np.ndarray:
    """Cross-entropy loss -log p_y = softplus(-phi) = log(1 + exp(-phi)), float64.

    ``np.logaddexp(0, -phi)`` is exact for large |phi| (no overflow, and
    ~exp(-phi) rather than 0 for confident correct predictions)."""
    return np.logaddexp(0.0, -np.asarray(phi, dtype=np.float64))


def minmax(x) -> np.ndarray:
    """Affine map of ``x`` onto [0, 1]: (x - min) / (max - min), float64.

    One map for the whole array (not per row).  A constant array (or one with
    a single element) maps to 0.5 everywhere.  Raises ValueError on NaN/inf or
    an empty array.  The halved form avoids overflow of max - min for values
    near the float64 limit.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        raise ValueError("minmax of an empty array")
    if not np.isfinite(x).all():
        raise ValueError("minmax input contains NaN or infinite values")
    lo, hi = x.min(), x.max()
    if not hi > lo:
        return np.full(x.shape, 0.5)
    half = 0.5 * hi - 0.5 * lo
    out = (0.5 * x - 0.5 * lo) / half
    return np.clip(out, 0.0, 1.0)


def _view_mean(a, name: str) -> np.ndarray:
    """Validate a (models, points, views) array and average it over views -> float64 (models, points)."""
    return check_array(a, name, 3).mean(axis=-1, dtype=np.float64)


# --------------------------------------------------------------------------- #
# uncalibrated global-threshold attacks
# --------------------------------------------------------------------------- #
def loss_attack(target_loss) -> np.ndarray:
    """LOSS attack (Yeom et al. 2018), the MICO starting kit's baseline.

    target_loss: (T, K, V) each target's loss on its challenge points.
    Score = minmax(-mean_v loss) over ALL T*K values at once: one global
    threshold, lower loss = member.  Returns (T, K) float64 in [0, 1].
    """
    return minmax(-_view_mean(target_loss, "target_loss"))


def confidence_attack(target_conf) -> np.ndarray:
    """Confidence attack: score = minmax(mean_v p_y), one global scaling.

    target_conf: (T, K, V) true-class probabilities (or any confidence,
    higher = member).  Returns (T, K) float64 in [0, 1].
    """
    return minmax(_view_mean(target_conf, "target_conf"))


def entropy_attack(
    target_mentr, shadow_mentr=None, shadow_in=None, target_index=None, exclude=None, *, mode=None
) -> np.ndarray:
    """Modified-prediction-entropy attack (Song & Mittal 2021).

    target_mentr: (T, K, V) Mentr of each target on its challenge points
    (lower = member).

    - ``mode=None`` (default): the paper's global-threshold attack,
      score = minmax(-mean_v Mentr) over all targets at once.  (The paper
      also fits one threshold per class; MICO scores one global threshold
      over all points, so a single ranking is what counts here.)
    - ``mode in CALIBRATION_MODES``: per-point calibrated, exactly
      ``calibrated(-target_mentr, -shadow_mentr, shadow_in, target_index,
      exclude, mode=mode)``; needs the shadow arguments.

    Returns (T, K) float64 in [0, 1].
    """
    if mode is None:
        return minmax(-_view_mean(target_mentr, "target_mentr"))
    if shadow_mentr is None or shadow_in is None or target_index is None:
        raise ValueError("calibrated entropy_attack needs shadow_mentr, shadow_in and target_index")
    return calibrated(
        -np.asarray(target_mentr, dtype=np.float64),
        -np.asarray(shadow_mentr, dtype=np.float64),
        shadow_in,
        target_index,
        exclude,
        mode=mode,
    )


# --------------------------------------------------------------------------- #
# per-point calibrated attack
# --------------------------------------------------------------------------- #
def calibrated(
    target_signal, shadow_signal, shadow_in, target_index, exclude=None, *, mode: str = "mid", shadow_first=None
) -> np.ndarray:
    """Per-point difficulty calibration (Watson et al. 2022; MICO winners' form).

    Parameters
    ----------
    target_signal : (T, K, V) float
        Each target's signal on its own K challenge points, higher = more
        member-like (e.g. -loss, p_y, phi, -Mentr).
    shadow_signal : (S, P, V) float
        Every shadow's signal on the whole pool (same signal).
    shadow_in : (S, P) bool
        Shadow membership.
    target_index : (T, K) int
        Pool index of each target's challenge points.
    exclude : (T,) int, optional
        Shadow row to leave out of target t's statistics (the target is that
        shadow), -1 for none.
    mode : {'in', 'mid', 'z'}
        With s the target's view-averaged signal and the statistics over the
        (non-excluded) shadows of that point, of the view-averaged signal:

        - 'in':  s - mu_in                       (distance to the IN centre)
        - 'mid': s - (mu_in + mu_out) / 2        (midpoint threshold)
        - 'z':   (s - mu_all) / sigma_all        (standardised against all
          shadows, IN and OUT; sigma ddof=0, floored at SIGMA_FLOOR)

    Views are averaged first (targets and shadows alike): one statistic per
    (model, point).

    Fallbacks ('in'/'mid'), per target over its K challenge points: a point
    with no IN shadow uses mu_in = mu_out + gap, one with no OUT shadow
    mu_out = mu_in - gap, where gap is the mean of mu_in - mu_out over the
    target's points that have both (0 if none).  'z' needs just one shadow.
    ValueError if a target has no shadow at all left after leave-one-out.

    ``shadow_first`` ((S, P) bool, 'in' and 'mid' only): True where the
    shadow held the point as one of its own first-trained challenge members;
    given, mu_in is shifted to "IN as a member" by the pooled shift those
    entries measure on the view-averaged signal (attacks.order).

    Returns (T, K) float64 in [0, 1]: ONE min-max of the calibrated statistic
    over all targets of the call, so scores of different models stay
    comparable (pass all models of a scenario together).
    """
    if mode not in CALIBRATION_MODES:
        raise ValueError(f"mode must be one of {CALIBRATION_MODES}, got {mode!r}")
    s = _view_mean(target_signal, "target_signal")
    x = _view_mean(shadow_signal, "shadow_signal")
    T, K = s.shape
    S, P = x.shape
    if np.asarray(target_signal).shape[-1] != np.asarray(shadow_signal).shape[-1]:
        raise ValueError("target_signal and shadow_signal have different view counts")
    member = check_membership(shadow_in, (S, P))
    idx = check_index(target_index, T, K, P)
    excl = check_exclude(exclude, T, S)
    if S - 1 < 1 and (excl >= 0).any():
        raise ValueError("leave-one-out with a single shadow leaves no shadow statistics")
    if shadow_first is not None and mode == "z":
        raise ValueError("shadow_first (the training-order shift) needs an IN side: mode 'in' or 'mid', not 'z'")

    mom = point_moments(x, member, idx, excl[:, None])
    if mode == "z":
        n_in, m_in, v_in = mom[True]
        n_out, m_out, v_out = mom[False]
        n = n_in + n_out
        mu = (n_in * m_in + n_out * m_out) / np.maximum(n, 1)
        var = (n_in * (v_in + (m_in - mu) ** 2) + n_out * (v_out + (m_out - mu) ** 2)) / np.maximum(n, 1)
        stat = (s - mu) / np.maximum(np.sqrt(var), SIGMA_FLOOR)
    else:
        (n_in, m_in, _), (n_out, m_out, _) = mom[True], mom[False]
        gap = mean_gap(m_in, m_out, (n_in > 0) & (n_out > 0), axis=1)
        mu_in, mu_out = fill_by_gap(m_in, m_out, n_in > 0, n_out > 0, gap)
        if shadow_first is not None:
            mu_in = mu_in + in_shift(x, member, shadow_first, idx, excl)
        stat = s - (mu_in if mode == "in" else 0.5 * (mu_in + mu_out))
    return minmax(stat)
