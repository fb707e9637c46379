"""The signal cache that save_preds.py writes and every attack reads.

One file per model, ``<cache-dir>/<track>/<scenario>/<phase>/model_<id>.npz``, holding:

- ``points``  int64 [P]: the dataset indices this file holds, sorted ascending. A shadow (train
  or designed) holds the union of the scenario's challenge points; a dev or final model holds
  only what the attacks read of it: its own challenge points and, where RMIA is run, its
  population points (``save_preds.py --rmia-population``). A later need for more points (new
  shadows widen the union, another RMIA population) adds them to the file;
- ``views``   str [V]: query view names, view 0 = ``orig`` (see ``models.query.view_names``);
- ``phi``     float32 [P, V]: z_y - logsumexp_{j != y} z_j (the true-class probability is
  sigmoid(phi));
- ``mentr``   float32 [P, V]: modified prediction entropy (Song & Mittal 2021);
- ``logits``  float32 [P, V, C]: only with ``save_preds.py --save-logits``;
- the stamp of the model.pt the signals came from: ``model_size``, ``model_mtime_ns``,
  ``model_inode``, ``model_ctime_ns`` (its key) and ``model_sha256``.

Every read checks an entry against its model.pt. The key is the fast path: a copy (``cp -a``,
rsync, an archive) keeps size and mtime but never inode and ctime, and a rewrite in place
changes ctime. When the key differs the sha256 decides, so a copied tree, or an entry written
before the key had inode and ctime, is still used. A file is reused by save_preds.py only if
it came from this model.pt and its views match; points missing from it are computed and merged.
An attack's :func:`load` refuses models of one scenario whose files hold different views.
Files are written under a unique temporary name and renamed, while holding the file's own advisory
lock (``.locks/<name>``), so a killed run leaves either the old file or the new one, runs on
different models (``--shard``) never wait for each other, and concurrent runs on the same models
split them (a model another run holds is left for last). Files are flushed to the disk before the
rename (:func:`challenges.fileio.place`), so a power loss leaves the old or the new file too. A
read-only cache with nothing to write needs no lock.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from .fileio import atomic_path, file_digest, remove_leftovers, try_lock, write_error
from .layout import ModelDir
from .tracks import TARGET_PHASES

KEY = ("model_size", "model_mtime_ns", "model_inode", "model_ctime_ns")
REQUIRED = ("points", "views", "phi", "mentr", "model_size", "model_mtime_ns", "model_sha256")
LOCKS = ".locks"


class CacheError(ValueError):
    """A cache that does not cover what an attack asks for."""


def cache_file(cache_dir: str, md: ModelDir) -> str:
    return os.path.join(cache_dir, md.track, md.scenario, md.phase, md.name + ".npz")


def lock_file(path: str) -> str:
    """The advisory lock of one cache file (a separate file: the cache file itself is replaced)."""
    return os.path.join(os.path.dirname(path), LOCKS, os.path.basename(path))


def sha256(path: str) -> str:
    return file_digest(path, "sha256")


def model_key(path: str) -> dict:
    """What identifies this very file cheaply: size, mtime, inode and ctime."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise CacheError(f"{path}: cannot read ({e.strerror}); re-download the model folder") from None
    return {
        "model_size": st.st_size,
        "model_mtime_ns": st.st_mtime_ns,
        "model_inode": st.st_ino,
        "model_ctime_ns": st.st_ctime_ns,
    }


def model_stamp(path: str, sha: str | None = None) -> dict:
    return {**model_key(path), "model_sha256": sha if sha is not None else sha256(path)}


def source_stamp(entry: dict, model_file: str) -> dict | None:
    """``model_file``'s stamp if ``entry`` was computed from these very bytes, else None.

    Equal keys are trusted; otherwise the file is hashed and compared with the entry's sha256.
    The result differs from the entry's own stamp when only the key changed (a copy).
    """
    key = model_key(model_file)
    if all(k in entry and int(entry[k]) == v for k, v in key.items()):
        return {**key, "model_sha256": str(entry["model_sha256"])}
    sha = sha256(model_file)
    return {**key, "model_sha256": sha} if sha == str(entry["model_sha256"]) else None


# What each array must be, beyond the phi / mentr / logits rows: (dimensions, dtype kinds).
SHAPES = {
    "points": (1, "iu"),
    "views": (1, "U"),
    **{k: (0, "iu") for k in KEY},
    "model_sha256": (0, "U"),
}


def _problem(entry: dict) -> str | None:
    """Why ``entry`` is not a consistent cache file (a missing, misshapen or mistyped array), or None."""
    missing = [k for k in REQUIRED if k not in entry]
    if missing:
        return f"no {missing[0]!r}"
    for k, (ndim, kinds) in SHAPES.items():
        if k in entry and (entry[k].ndim != ndim or entry[k].dtype.kind not in kinds):
            return f"{k} is {entry[k].dtype} of shape {entry[k].shape}, expected {ndim}-D ({kinds})"
    p, v = len(entry["points"]), len(entry["views"])
    for k in ("phi", "mentr", "logits"):
        if k in entry and entry[k].shape[:2] != (p, v):
            return f"{k} shape {entry[k].shape}, expected ({p}, {v}, ...)"
    return None


def read(path: str) -> dict | None:
    """A cache file's arrays, or None if it is absent.

    Raises CacheError if it exists but cannot be read, or is not a consistent cache file.
    """
    if not os.path.exists(path):
        return None
    fix = "rerun save_preds.py, which recomputes it"
    try:
        with np.load(path, allow_pickle=False) as z:
            entry = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - truncated zip, bad CRC, bad header: all mean the same
        raise CacheError(f"{path}: corrupt cache file ({type(e).__name__}); {fix}") from None
    problem = _problem(entry)
    if problem:
        raise CacheError(f"{path}: corrupt cache file ({problem}); {fix}")
    return entry


def write(path: str, points: np.ndarray, views: list[str], stamp: dict, arrays: dict) -> None:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    except OSError as e:
        raise write_error(path, e) from None
    with atomic_path(path) as tmp:
        np.savez(
            tmp,
            points=np.asarray(points, dtype=np.int64),
            views=np.asarray(views),
            **{k: np.asarray(v) for k, v in stamp.items()},
            **arrays,
        )


def merge(entry: dict | None, points: np.ndarray, arrays: dict) -> tuple[np.ndarray, dict]:
    """Union of a current cache entry with freshly computed rows, sorted by point index."""
    if entry is None:
        order = np.argsort(points)
        return points[order], {k: v[order] for k, v in arrays.items()}
    allp = np.concatenate([entry["points"], points])
    order = np.argsort(allp, kind="stable")
    return allp[order], {k: np.concatenate([entry[k], v])[order] for k, v in arrays.items()}


def _plan(path: str, model_file: str, points: np.ndarray, views: list[str], need_logits: bool):
    """(entry to extend or None, the model's stamp, the points still to compute) for one file."""
    try:
        entry = read(path)
    except CacheError:
        entry = None
    stamp = None if entry is None else source_stamp(entry, model_file)
    if stamp is None or list(entry["views"]) != list(views) or (need_logits and "logits" not in entry):
        entry, stamp = None, model_stamp(model_file)  # taken before the model is loaded
    todo = points if entry is None else np.setdiff1d(points, entry["points"], assume_unique=True)
    return entry, stamp, todo


def _current(entry: dict | None, stamp: dict, todo: np.ndarray) -> bool:
    return entry is not None and len(todo) == 0 and all(k in entry and int(entry[k]) == stamp[k] for k in KEY)


def update(
    path: str,
    model_file: str,
    points: np.ndarray,
    views: list[str],
    need_logits: bool,
    compute: Callable[[np.ndarray, bool], dict],
    wait: bool = True,
) -> str:
    """Make one model's cache file hold ``points`` (sorted dataset indices) for ``views``; returns
    'current', 'restamped', 'computed', or 'busy' when ``wait`` is False and another run holds the
    file's lock (it is computing this very file).

    ``compute(todo, keep_logits)`` returns {field: array [len(todo), V(, C)]} for the points
    still missing. The file is checked and written under its lock, so that a concurrent run sees
    the result and does not redo it, or redoes it when it asks for more (logits, points). An
    unreadable file, or one computed from another model.pt, is recomputed from scratch; points the
    file holds beyond ``points`` are kept. A cache that cannot be written (read-only) is fine as
    long as it is current: reading needs no lock, since a file only ever appears whole, by rename.
    """
    try:
        lock = try_lock(lock_file(path), wait=wait)
    except OSError:
        if _current(*_plan(path, model_file, points, views, need_logits)):
            return "current"
        raise
    if lock is None:
        return "busy"
    with lock:  # closing the file releases the lock
        remove_leftovers(path)
        entry, stamp, todo = _plan(path, model_file, points, views, need_logits)
        if len(todo) == 0:
            if _current(entry, stamp, todo):
                return "current"
            fields = {k: v for k, v in entry.items() if k not in stamp and k not in ("points", "views")}
            write(path, entry["points"], views, stamp, fields)
            return "restamped"
        # An entry that already holds logits keeps them, so merged rows stay complete.
        arrays = compute(todo, need_logits or (entry is not None and "logits" in entry))
        held, arrays = merge(entry, todo, arrays)
        write(path, held, views, stamp, arrays)
        return "computed"


def _positions(path: str, entry: dict, points: np.ndarray, required: np.ndarray, rerun: str) -> np.ndarray:
    """Row of each of ``points`` in the entry, -1 where it holds none; CacheError if it lacks one of
    ``required``."""
    held = entry["points"]
    pos = np.searchsorted(held, points)
    found = pos < len(held)
    found[found] = held[pos[found]] == points[found]
    missing = np.setdiff1d(required, held, assume_unique=True)
    if len(missing):
        raise CacheError(
            f"{path}: lacks {len(missing)} of the {len(required)} points the attack reads of this model "
            f"(e.g. point {missing[0]}); {rerun}"
        )
    return np.where(found, pos, -1)


def load(cache_dir: str, mds: list[ModelDir], points: np.ndarray, fields=("phi",), required=None) -> dict:
    """{field: float32 [n_models, len(points), V(, C)]} for every model on ``points``.

    ``required``: per model, the sorted points its file must hold (None: all of ``points``, also
    for a None entry); points a file does not hold are NaN. Raises CacheError naming the first
    model whose cache is missing, corrupt, computed from another model.pt, lacks a field or a
    required point, or holds other query views than the first model's.
    """
    out, first = {}, None
    for k, md in enumerate(mds):
        path = cache_file(cache_dir, md)
        rerun = f"rerun save_preds.py --challenge {md.track}"
        entry = read(path)
        if entry is None:
            raise CacheError(f"{path}: missing; run save_preds.py --challenge {md.track} first")
        views = [str(v) for v in entry["views"]]
        if first is None:
            first = (path, views)
        elif views != first[1]:  # the same count of other views would otherwise mix silently
            raise CacheError(
                f"{path}: query views {views} differ from {first[0]}'s {first[1]}; {rerun} with the view flags "
                "(--augment, --shifts, --neighbours, --flip-bits, --noise) wanted for every model"
            )
        if source_stamp(entry, md.model_file) is None:
            raise CacheError(f"{path}: stale, {md.model_file} is not the model it was computed from; {rerun}")
        need = points if required is None or required[k] is None else required[k]
        target = md.phase in TARGET_PHASES
        pos = _positions(
            path, entry, points, need, rerun + (" with the same --rmia-population and --seed" if target else "")
        )
        for field in fields:
            if field not in entry:
                raise CacheError(f"{path}: has no {field!r}; {rerun}" + (" --save-logits" if field == "logits" else ""))
            arr = np.where((pos >= 0).reshape((-1,) + (1,) * (entry[field].ndim - 1)), entry[field][pos], np.nan)
            if field not in out:
                out[field] = np.empty((len(mds),) + arr.shape, dtype=np.float32)
            elif arr.shape != out[field].shape[1:]:
                raise CacheError(
                    f"{path}: {field} shape {arr.shape} differs from the other models' "
                    f"{out[field].shape[1:]} (other query views?); rerun save_preds.py"
                )
            out[field][k] = arr
    return out


def views(cache_dir: str, md: ModelDir) -> list[str] | None:
    """The query views of the model's cache file (reads that array only); None if it is absent or
    unreadable (load() names the problem)."""
    try:
        with np.load(cache_file(cache_dir, md), allow_pickle=False) as z:
            return [str(v) for v in z["views"]]
    except Exception:  # noqa: BLE001 - absent or unreadable: load() names the problem
        return None


def has_field(cache_dir: str, md: ModelDir, field: str) -> bool:
    """Whether the model's cache file holds ``field`` (reads the file's index only)."""
    try:
        with np.load(cache_file(cache_dir, md), allow_pickle=False) as z:
            return field in z.files
    except Exception:  # noqa: BLE001 - absent or unreadable: load() names the problem
        return False
