"""Input checks shared by the attacks: signal arrays, membership matrix, target indices, leave-one-out rows."""

from __future__ import annotations

import numpy as np


def check_array(
    a, name: str, ndim: int, *, floating: bool = False, unit_interval: bool = False, finite: bool = True
) -> np.ndarray:
    """``a`` as an array, checked: ``ndim`` dimensions, non-empty, real numbers (floats if
    ``floating``), all finite (if ``finite``: else the caller checks the entries it reads), and
    within [0, 1] if ``unit_interval``. Raises ValueError naming ``name``."""
    a = np.asarray(a)
    if a.ndim != ndim:
        raise ValueError(
            f"{name} must be {ndim}-D (models, points, views{', classes' if ndim == 4 else ''}), got shape {a.shape}"
        )
    if a.size == 0:
        raise ValueError(f"{name} must be non-empty, got shape {a.shape}")
    kind = np.floating if floating else np.number
    if a.dtype == bool or not np.issubdtype(a.dtype, kind):
        raise ValueError(f"{name} must be {'a float' if floating else 'a numeric'} array, got dtype {a.dtype}")
    if finite and not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if unit_interval and (np.nanmin(a) < 0 or np.nanmax(a) > 1):
        raise ValueError(f"{name} must hold probabilities in [0, 1]")
    return a


def check_membership(shadow_in, shape) -> np.ndarray:
    """shadow_in as a bool array of ``shape``; 0/1 integers accepted."""
    m = np.asarray(shadow_in)
    if m.dtype != bool:
        if not (np.issubdtype(m.dtype, np.integer) and np.isin(m, (0, 1)).all()):
            raise ValueError(f"shadow_in must be boolean (or 0/1 integers), got dtype {m.dtype}")
        m = m.astype(bool)
    if m.shape != tuple(shape):
        raise ValueError(f"shadow_in must have shape {tuple(shape)}, got {m.shape}")
    return m


def check_index(target_index, T: int, K: int, P: int) -> np.ndarray:
    idx = np.asarray(target_index)
    if idx.shape != (T, K):
        raise ValueError(f"target_index must have shape {(T, K)}, got {idx.shape}")
    if not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"target_index must be integer, got dtype {idx.dtype}")
    if idx.size and (idx.min() < 0 or idx.max() >= P):
        raise ValueError(f"target_index out of range [0, {P})")
    return idx.astype(np.intp)


def pool_index(target_index, T: int, K: int, P: int) -> np.ndarray:
    """(T, K) pool indices: ``target_index`` checked, or, when None, every target on the whole pool
    in pool order (then K must equal P)."""
    if target_index is None:
        if K != P:
            raise ValueError(
                f"without target_index the targets must cover the whole pool: "
                f"target_signal has {K} points, the pool has {P}"
            )
        return np.broadcast_to(np.arange(P), (T, P))
    return check_index(target_index, T, K, P)


def check_exclude(exclude, T: int, S: int) -> np.ndarray:
    if exclude is None:
        return np.full(T, -1, dtype=np.intp)
    e = np.asarray(exclude)
    if e.shape != (T,) or not np.issubdtype(e.dtype, np.integer):
        raise ValueError(f"exclude must be an integer array of shape {(T,)}, got {e.shape} {e.dtype}")
    if e.size and (e.min() < -1 or e.max() >= S):
        raise ValueError(f"exclude entries must be -1 (none) or a shadow index in [0, {S})")
    return e.astype(np.intp)


def check_signals(target_signal, shadow_signal, shadow_in, target_index, exclude):
    """A signal attack's inputs checked: (target (T, K, V), shadows (S, P, V), membership (S, P),
    pool index (T, K), exclude (T,)), the view counts equal."""
    tgt = check_array(target_signal, "target_signal", 3)
    shd = check_array(shadow_signal, "shadow_signal", 3)
    T, K, V = tgt.shape
    S, P, Vs = shd.shape
    if Vs != V:
        raise ValueError(f"view count differs: target_signal has {V}, shadow_signal has {Vs}")
    member = check_membership(shadow_in, (S, P))
    return tgt, shd, member, pool_index(target_index, T, K, P), check_exclude(exclude, T, S)
