"""Explicit training-set files, for shadow models whose training sets no MICO seed triple can express.

A designed shadow model (``<scenario>/shadow/model_<id>/``) stores its membership as

- ``training_set.npy``: int64 [LEN_TRAINING], the sorted, distinct dataset indices it trained on
  (read with ``allow_pickle=False``: a plain array, nothing else);
- ``training_set.sha256``: the sha256 of that file's bytes, so a truncated, edited or swapped file is
  refused rather than silently attacked with.

Every failure is a one-line :class:`MembershipError` naming the file and the fix.
"""

from __future__ import annotations

import io
import os

import numpy as np

from .fileio import atomic_path, file_digest, write_text

TRAINING_SET = "training_set.npy"
CHECKSUM = "training_set.sha256"
_FIX = "retrain the model with train_shadows.py --design balanced (delete its folder first)"


class MembershipError(ValueError):
    """A training-set file that is missing, malformed, of the wrong size or fails its checksum."""


def write_training_set(folder: str, indices) -> None:
    """Write ``training_set.npy`` and its checksum into ``folder`` (each atomically)."""
    arr = np.unique(np.asarray(indices, dtype=np.int64))
    if len(arr) != len(np.asarray(indices)):
        raise ValueError("a training set must not repeat a dataset index")
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    path = os.path.join(folder, TRAINING_SET)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(buf.getvalue())
    write_text(os.path.join(folder, CHECKSUM), file_digest(path, "sha256") + "\n")


def read_training_set(folder: str, n_points: int, len_training: int) -> np.ndarray:
    """The sorted int64 dataset indices of ``folder``'s training set, after every check."""
    path = os.path.join(folder, TRAINING_SET)
    sums = os.path.join(folder, CHECKSUM)

    def fail(why: str) -> MembershipError:
        return MembershipError(f"{path}: {why}; {_FIX}")

    for p in (path, sums):
        if not os.path.isfile(p):
            raise MembershipError(f"{p}: missing; {_FIX}")
    try:
        with open(sums) as f:
            expected = f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise MembershipError(f"{sums}: unreadable ({type(e).__name__}); {_FIX}") from None
    if file_digest(path, "sha256") != expected:
        raise fail(f"sha256 differs from {CHECKSUM} (truncated, edited or replaced)")
    problem = _header_problem(path, len_training)
    if problem:
        raise fail(problem)
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise fail(f"not a plain numpy array ({type(e).__name__})") from None
    if len(arr) and (arr[0] < 0 or arr[-1] >= n_points or np.any(np.diff(arr) <= 0)):
        raise fail(f"indices must be distinct, sorted and in [0, {n_points})")
    return arr.astype(np.int64)


def _header_problem(path: str, len_training: int) -> str | None:
    """Why the .npy header of ``path`` does not describe a 1-D integer array of ``len_training``
    entries that fills the file exactly, or None. Read before the array, so that a header claiming
    10^13 rows is refused instead of allocated."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version not in readers:
                return f"not a plain numpy array (.npy version {version})"
            shape, _, dtype = readers[version](f)
            offset = f.tell()
    except (OSError, ValueError, EOFError) as e:
        return f"not a plain numpy array ({type(e).__name__})"
    if len(shape) != 1 or dtype.kind not in "iu":
        return f"expected a 1-D integer array, found {dtype} of shape {shape}"
    if shape[0] != len_training:
        return f"{shape[0]} indices, expected {len_training} (the challenge's LEN_TRAINING)"
    data = os.path.getsize(path) - offset
    if data != shape[0] * dtype.itemsize:
        return f"its header announces {shape[0] * dtype.itemsize} bytes of indices, the file holds {data}"
    return None
