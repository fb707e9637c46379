"""MICO's base datasets, parsed from the original files (no torchvision).

- cifar10: the CIFAR-10 python archive directory (``data_batch_1..5`` then ``test_batch``,
  i.e. torchvision's CIFAR10 train ++ test, 60,000 images). Images become float CHW in [0,1],
  normalised with MICO's per-channel mean and std. The batches are pickles; they are read with an
  unpickler that builds only what the real files hold (dicts, lists, strings, ints and uint8 numpy
  arrays), so a crafted batch cannot run code.
- purchase100: ``dataset_purchase``, CSV rows ``label,600 binary features`` with labels 1..100,
  shifted to 0..99. N is taken from the file (197,324 for the real one).

Raw arrays stay compact (uint8); :func:`to_tensor` makes model inputs for the rows needed.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass

import numpy as np
import torch

from .tracks import CIFAR10_MEAN, CIFAR10_STD, ChallengeParams

CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
PURCHASE_FEATURES = 600


class DatasetError(ValueError):
    """A base dataset that is missing or malformed."""


@dataclass
class BaseDataset:
    track: str
    x: np.ndarray  # uint8: cifar10 (N, 3, 32, 32); purchase100 (N, 600)
    y: np.ndarray  # int64 (N,)

    def __len__(self) -> int:
        return len(self.y)


def _missing(path: str, track: str) -> DatasetError:
    return DatasetError(
        f"{path}: base dataset not found; run download_files.py --challenge {track} "
        "(or --synthetic for an offline challenge), or copy it there"
    )


def _latin1_bytes(text: str, encoding: str) -> bytes:
    """``_codecs.encode`` as Python 3 uses it to pickle bytes at protocol 2, and nothing else."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(
            f"it calls _codecs.encode with {encoding!r}, which no CIFAR-10 batch does; not unpickled"
        )
    return text.encode("latin1")


# The only globals a CIFAR-10 batch references: numpy's array reconstructor under its numpy 1 and
# numpy 2 module names (the real files, written by Python 2's cPickle with protocol 2, name
# numpy.core.multiarray), ndarray and dtype; numpy's protocol 5 reconstructor; and the latin-1
# encoding by which Python 3 writes bytes at protocol 2 (a batch re-pickled that way).
_RECONSTRUCT = np.zeros(1).__reduce__()[0]
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]
_PICKLE_GLOBALS = {
    **{(m, "_reconstruct"): _RECONSTRUCT for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "_frombuffer"): _FROMBUFFER for m in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_bytes,
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"it references {module}.{name}, which no CIFAR-10 batch does; not unpickled"
            ) from None


def read_cifar_batch(path: str) -> dict:
    """One CIFAR-10 python batch (a dict with bytes keys), unpickled without running any code."""
    with open(path, "rb") as f:
        return _BatchUnpickler(f, encoding="bytes").load()


def load_cifar10(path: str) -> BaseDataset:
    if not os.path.isdir(path):
        raise _missing(path, "cifar10")
    xs, ys = [], []
    for name in CIFAR_FILES:
        f = os.path.join(path, name)
        try:
            batch = read_cifar_batch(f)
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            labels = np.asarray(batch[b"labels"], dtype=np.int64)
        except FileNotFoundError:
            raise _missing(f, "cifar10") from None
        except pickle.UnpicklingError as e:
            raise DatasetError(f"{f}: not a CIFAR-10 python batch ({e}); delete it and re-download") from None
        except Exception as e:  # noqa: BLE001 - any parse failure means the same to the user
            raise DatasetError(
                f"{f}: not a CIFAR-10 python batch ({type(e).__name__}); delete it and re-download"
            ) from None
        if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
            raise DatasetError(f"{f}: unexpected shape {data.shape}; delete it and re-download")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels)
    return BaseDataset("cifar10", np.concatenate(xs), np.concatenate(ys))


def load_purchase100(path: str) -> BaseDataset:
    if not os.path.isfile(path):
        raise _missing(path, "purchase100")
    import pandas as pd

    try:
        table = pd.read_csv(path, header=None, dtype=np.int16).to_numpy()
    except Exception as e:  # noqa: BLE001
        raise DatasetError(
            f"{path}: not a Purchase-100 CSV ({type(e).__name__}: {str(e)[:80]}); delete it and re-download"
        ) from None
    if table.ndim != 2 or table.shape[1] != PURCHASE_FEATURES + 1:
        raise DatasetError(
            f"{path}: expected {PURCHASE_FEATURES + 1} columns (label + features), "
            f"found {table.shape[1] if table.ndim == 2 else table.shape}"
        )
    y = table[:, 0].astype(np.int64) - 1
    if y.min() < 0 or y.max() > 99:
        raise DatasetError(f"{path}: labels must lie in 1..100")
    return BaseDataset("purchase100", table[:, 1:].astype(np.uint8), y)


def load_dataset(params: ChallengeParams) -> BaseDataset:
    """The base dataset of a challenge, checked against its expected size."""
    loader = {"cifar10": load_cifar10, "purchase100": load_purchase100}[params.track]
    ds = loader(params.dataset)
    if params.n_points is not None and len(ds) != params.n_points:
        raise DatasetError(f"{params.dataset}: {len(ds)} points, expected {params.n_points}; delete it and re-download")
    return ds


def to_tensor(track: str, x: np.ndarray) -> torch.Tensor:
    """Model inputs (float32) for raw rows of a base dataset."""
    t = torch.from_numpy(np.ascontiguousarray(x)).float()
    if track == "cifar10":
        mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
        return (t / 255.0 - mean) / std
    return t
