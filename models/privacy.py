"""Privacy accounting for MICO's DP-SGD recipes: the PRV accountant's epsilon and the noise
multiplier that meets a target epsilon.

MICO used Microsoft's ``prv_accountant`` (``find_noise_multiplier``, eps_error 0.1); we use
Opacus' built-in PRV accountant (the same method) with an epsilon tolerance of 0.01.

Opacus is imported here, on first use (:func:`opacus`), and nowhere at import time: only DP
training needs it, so non-private training, caching and every attack run without it (a GPU image
may lack it, docs/gpu.md).
"""

from __future__ import annotations

import functools
import importlib
import math
import warnings

import numpy as np

_PRV_EPS_TOLERANCE = 0.01  # noise multiplier search: final epsilon in [target - tol, target]
OPACUS_FIX = (
    "pip install 'opacus>=1.5', or without network: pip install --no-index --find-links .whl opacus "
    "with the wheels of 'make gpu-wheels' (docs/gpu.md)"
)


class OpacusMissing(ImportError):
    """DP training was asked for where opacus cannot be imported (the message says how to fix it)."""


def opacus(module: str = "opacus"):
    """Opacus' ``module`` (e.g. ``opacus.accountants``), imported on first use; without Opacus an
    :class:`OpacusMissing` whose one-line message names the package and the fix."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        why = " ".join(str(e).split())
        message = f"DP training needs the package opacus, not importable here ({why}): {OPACUS_FIX}"
        raise OpacusMissing(message) from None


def _quiet_prv_epsilon(accountant, delta: float) -> float:
    """``accountant.get_epsilon(delta)`` without its numerical warnings (RDP order range, log(0)
    when the sample rate is 1)."""
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        warnings.simplefilter("ignore")
        return float(accountant.get_epsilon(delta=delta))


@functools.lru_cache(maxsize=1024)
def prv_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon (PRV upper bound) of ``steps`` DP-SGD steps at one noise level and sample rate."""
    acc = opacus("opacus.accountants").create_accountant(mechanism="prv")
    acc.history = [(noise_multiplier, sample_rate, steps)]
    return _quiet_prv_epsilon(acc, delta)


@functools.lru_cache(maxsize=64)
def find_noise_multiplier(
    target_epsilon: float, target_delta: float, sample_rate: float, steps: int, tolerance: float = _PRV_EPS_TOLERANCE
) -> float:
    """Smallest-ish noise multiplier whose PRV epsilon (upper bound) is in [target - tol, target].

    Same criterion as Opacus' ``get_noise_multiplier(accountant="prv")``, but the search stays
    near the answer: Opacus bisects from [0, 20] and evaluates the PRV accountant at tiny noise
    levels, which is slow (about 14 s for purchase100's 8,790 steps; this takes about 2 s).
    Results are cached per process.
    """
    if not (target_epsilon > 0 and 0 < target_delta < 1 and 0 < sample_rate <= 1 and steps >= 1):
        raise ValueError("find_noise_multiplier: need epsilon > 0, 0 < delta < 1, 0 < sample_rate <= 1, steps >= 1")

    def eps_of(sigma: float) -> float:
        return prv_epsilon(sigma, sample_rate, steps, target_delta)

    # Keep a bracket eps(lo) > target >= eps(hi) and refine it by (Illinois) regula falsi on
    # log(eps) - log(target) as a function of log(sigma), where eps is close to a power law.
    # Evaluations at small sigma (large epsilon) are the slow ones, so the bracket grows gently.
    lo, e_lo, hi, e_hi = _bracket(eps_of, target_epsilon, tolerance, steps)
    if lo is None:
        return hi
    return _refine(eps_of, target_epsilon, tolerance, lo, e_lo, hi, e_hi)


def _bracket(eps_of, target: float, tolerance: float, steps: int):
    """(lo, eps(lo), hi, eps(hi)) with eps(lo) > target >= eps(hi), starting from sigma = 1;
    lo is None when hi already meets the tolerance."""
    sigma = 1.0
    e = eps_of(sigma)
    if e > target:
        lo, e_lo = sigma, e
        while e > target:
            sigma *= 1.5
            if sigma > 1e6:
                raise ValueError(f"privacy budget epsilon={target} is too low for {steps} steps")
            e = eps_of(sigma)
            if e > target:
                lo, e_lo = sigma, e
        return lo, e_lo, sigma, e
    hi, e_hi = sigma, e
    while target - e_hi > tolerance:
        sigma /= 1.25
        if sigma < 1e-3:
            raise ValueError(f"cannot find a noise multiplier for epsilon={target}")
        e = eps_of(sigma)
        if e > target:
            return sigma, e, hi, e_hi
        hi, e_hi = sigma, e
    return None, None, hi, e_hi


def _refine(eps_of, target: float, tolerance: float, lo: float, e_lo: float, hi: float, e_hi: float) -> float:
    """Illinois regula falsi in (log sigma, log eps - log target) until eps(hi) is within tolerance."""
    log_t = math.log(target)
    f_lo = math.log(e_lo) - log_t
    f_hi = math.log(max(e_hi, 1e-300)) - log_t
    side = 0
    for _ in range(100):
        if target - e_hi <= tolerance:
            return hi
        x_lo, x_hi = math.log(lo), math.log(hi)
        x = 0.5 * (x_lo + x_hi)
        if f_lo > f_hi and math.isfinite(f_lo) and math.isfinite(f_hi):
            x = x_hi - f_hi * (x_hi - x_lo) / (f_hi - f_lo)
        if not (x_lo < x < x_hi):
            x = 0.5 * (x_lo + x_hi)
        sigma = math.exp(x)
        e = eps_of(sigma)
        f = math.log(max(e, 1e-300)) - log_t
        if e <= target:
            hi, e_hi, f_hi = sigma, e, f
            if side == 1:
                f_lo /= 2  # Illinois step: avoid one endpoint getting stuck
            side = 1
        else:
            lo, f_lo = sigma, f
            if side == -1:
                f_hi /= 2
            side = -1
        if hi / lo - 1 < 1e-9:
            break
    return hi
