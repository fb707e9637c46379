"""The signal cache that save_preds.py writes and every attack reads.

One file per model, ``<cache-dir>/<track>/<scenario>/<phase>/model_<id>.npz``, holding:

- ``points``  int64 [P]: dataset indices, sorted ascending (the union of the scenario's
  challenge points when it was written);
- ``views``   str [V]: query view names, view 0 = ``orig`` (see ``models.query.view_names``);
- ``phi``     float32 [P, V]: z_y - logsumexp_{j != y} z_j (the true-class probability is
  sigmoid(phi));
- ``mentr``   float32 [P, V]: modified prediction entropy (Song & Mittal 2021);
- ``logits``  float32 [P, V, C]: only with ``save_preds.py --save-logits``;
- ``model_size``, ``model_mtime_ns``, ``model_sha256``: the model.pt the signals came from.

A file is reused only if its model.pt is unchanged and its views match; points missing from it
(new shadow models widen the union) are computed and merged. Files are written to a temporary
name and renamed, so a killed run leaves either the old file or the new one.
"""
from __future__ import annotations

import os

import numpy as np

from .fileio import atomic_path, file_digest
from .layout import ModelDir


class CacheError(ValueError):
    """A cache that does not cover what an attack asks for."""


def cache_file(cache_dir: str, md: ModelDir) -> str:
    return os.path.join(cache_dir, md.track, md.scenario, md.phase, md.name + ".npz")


def sha256(path: str) -> str:
    return file_digest(path, "sha256")


def model_stamp(path: str, sha: str | None = None) -> dict:
    st = os.stat(path)
    return {"model_size": st.st_size, "model_mtime_ns": st.st_mtime_ns,
            "model_sha256": sha if sha is not None else sha256(path)}


def read(path: str) -> dict | None:
    """A cache file's arrays, or None if it is absent or unreadable (it will be recomputed)."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError):
        return None


def is_current(entry: dict | None, model_file: str, views: list[str], need_logits: bool) -> bool:
    """Whether ``entry`` came from this very model.pt, with these views (and logits if needed)."""
    stamp = ("views", "model_size", "model_mtime_ns", "model_sha256", "points", "phi", "mentr")
    if entry is None or any(k not in entry for k in stamp):  # not a file of ours: recompute
        return False
    if list(entry["views"]) != list(views) or (need_logits and "logits" not in entry):
        return False
    st = os.stat(model_file)
    if int(entry["model_size"]) != st.st_size:
        return False
    if int(entry["model_mtime_ns"]) == st.st_mtime_ns:
        return True
    return str(entry["model_sha256"]) == sha256(model_file)


def write(path: str, points: np.ndarray, views: list[str], stamp: dict, arrays: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_path(path, ".tmp.npz") as tmp:
        np.savez(tmp, points=np.asarray(points, dtype=np.int64), views=np.asarray(views),
                 **{k: np.asarray(v) for k, v in stamp.items()}, **arrays)


def merge(entry: dict | None, points: np.ndarray, arrays: dict) -> tuple[np.ndarray, dict]:
    """Union of a current cache entry with freshly computed rows, sorted by point index."""
    if entry is None:
        order = np.argsort(points)
        return points[order], {k: v[order] for k, v in arrays.items()}
    allp = np.concatenate([entry["points"], points])
    order = np.argsort(allp, kind="stable")
    return allp[order], {k: np.concatenate([entry[k], v])[order] for k, v in arrays.items()}


def load(cache_dir: str, mds: list[ModelDir], points: np.ndarray, fields=("phi",)) -> dict:
    """{field: float32 [n_models, len(points), V(, C)]} for every model on ``points``.

    Raises CacheError naming the first model whose cache is missing, lacks a field or a point.
    """
    out = {}
    for k, md in enumerate(mds):
        path = cache_file(cache_dir, md)
        entry = read(path)
        if entry is None:
            raise CacheError(f"{path}: missing; run save_preds.py --challenge {md.track} first")
        pos = np.minimum(np.searchsorted(entry["points"], points), len(entry["points"]) - 1)
        if not np.array_equal(entry["points"][pos], points):
            raise CacheError(f"{path}: does not cover every challenge point; rerun save_preds.py "
                             f"--challenge {md.track}")
        for field in fields:
            if field not in entry:
                raise CacheError(f"{path}: has no {field!r}; rerun save_preds.py --challenge {md.track}"
                                 + (" --save-logits" if field == "logits" else ""))
            arr = entry[field][pos]
            if field not in out:
                out[field] = np.empty((len(mds),) + arr.shape, dtype=np.float32)
            elif arr.shape != out[field].shape[1:]:
                raise CacheError(f"{path}: {field} shape {arr.shape} differs from the other models' "
                                 f"{out[field].shape[1:]} (other query views?); rerun save_preds.py")
            out[field][k] = arr
    return out


def has_field(cache_dir: str, md: ModelDir, field: str) -> bool:
    """Whether the model's cache file holds ``field`` (reads the file's index only)."""
    try:
        with np.load(cache_file(cache_dir, md), allow_pickle=False) as z:
            return field in z.files
    except (OSError, ValueError, EOFError):
        return False


def pending(entry: dict | None, model_file: str, union: np.ndarray, views: list[str],
            need_logits: bool) -> tuple[dict | None, np.ndarray]:
    """(reusable entry or None, points still to compute) for one model."""
    if not is_current(entry, model_file, views, need_logits):
        return None, union
    return entry, np.setdiff1d(union, entry["points"], assume_unique=True)
