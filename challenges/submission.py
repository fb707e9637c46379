"""prediction.csv files and the submission zip, as MICO's starting kit made them.

``predictions_<track>.zip`` holds ``<track>/<scenario>/<phase>/model_<id>/prediction.csv`` for
every dev and final model: one row of ``2 * len_challenge`` comma-separated membership
confidences in [0, 1], in challenge order.
"""

from __future__ import annotations

import os
import warnings
import zipfile

import numpy as np

from . import layout
from .fileio import atomic_path, write_text
from .tracks import TARGET_PHASES


def write_prediction(path: str, scores: np.ndarray) -> None:
    scores = np.asarray(scores, dtype=np.float64)
    if not (np.all(np.isfinite(scores)) and scores.min() >= 0 and scores.max() <= 1):
        raise ValueError(f"{path}: refusing to write scores outside [0, 1] or not finite")
    write_text(path, ",".join(repr(float(v)) for v in scores) + "\n")


def check_prediction(path: str, n_expected: int) -> str | None:
    """None if ``path`` is a valid prediction file, else the reason.

    The file is parsed exactly as MICO's scorer (``scoring/score.py``) reads it,
    ``np.loadtxt(path, delimiter=",")``, so what passes here parses there: empty fields, Python-only
    spellings such as ``1_0e-1`` and hex floats are refused as they would be on upload.
    """
    if not os.path.exists(path):
        return "missing"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an empty file: loadtxt warns, the length check reports it
            values = np.loadtxt(path, delimiter=",")
    except OSError as e:
        return f"cannot read ({e.strerror})"
    except ValueError as e:  # UnicodeDecodeError included
        return f"not a comma-separated row of numbers as MICO's scorer reads it ({' '.join(str(e).split())})"
    if values.ndim != 1:
        return f"parses to shape {values.shape}, expected one row of {n_expected} values"
    if len(values) != n_expected:
        return f"{len(values)} values, expected {n_expected}"
    if not np.all(np.isfinite(values)):
        return "non-finite values"
    if values.min() < 0 or values.max() > 1:
        return f"values outside [0, 1] (min {values.min():.4g}, max {values.max():.4g})"
    return None


def target_models(data_dir: str, track: str) -> list[layout.ModelDir]:
    return [md for s in layout.scenarios(data_dir, track) for md in layout.models(data_dir, track, s, TARGET_PHASES)]


def validate(data_dir: str, track: str, n_expected: int) -> list[str]:
    """One message per invalid or missing prediction file of the dev and final models."""
    mds = target_models(data_dir, track)
    if not mds:
        raise layout.LayoutError(
            f"{os.path.join(data_dir, track)}: no dev or final model folders to submit; "
            f"download them first (download_files.py --challenge {track})"
        )
    return [
        f"{md.prediction_file}: {why}"
        for md in mds
        if (why := check_prediction(md.prediction_file, n_expected)) is not None
    ]


def write_zip(data_dir: str, track: str, out_path: str) -> int:
    """Write the submission zip atomically; returns the number of entries."""
    mds = target_models(data_dir, track)
    with atomic_path(out_path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for md in mds:
            z.write(md.prediction_file, arcname=f"{track}/{md.key}/prediction.csv")
    return len(mds)
