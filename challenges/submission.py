"""prediction.csv files and the submission zip, as MICO's starting kit made them.

``predictions_<track>.zip`` holds ``<track>/<scenario>/<phase>/model_<id>/prediction.csv`` for
every dev and final model: one row of ``2 * len_challenge`` comma-separated membership
confidences in [0, 1], in challenge order.

A submission comes from one run. Once a ``run_lira_mia.py`` run has written every prediction file
it attacked, it writes, last, ``<data-dir>/<track>/predictions.json``: a run id, the time, its
command line and the sha256 of every ``prediction.csv`` it wrote. ``save_zip.py`` packs only a set
whose every file that record names with the same sha256, so a run that stopped part-way (a full
disk) and left new files beside an earlier run's, a run over one ``--scenario``, or an edited
file is refused.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import uuid
import warnings
import zipfile

import numpy as np

from . import layout
from .fileio import atomic_path, file_digest, write_text
from .tracks import TARGET_PHASES, ChallengeParams, scenario_names

MANIFEST = "predictions.json"


def write_prediction(path: str, scores: np.ndarray) -> str:
    """Write one prediction file; returns the sha256 of the bytes written."""
    scores = np.asarray(scores, dtype=np.float64)
    if not (np.all(np.isfinite(scores)) and scores.min() >= 0 and scores.max() <= 1):
        raise ValueError(f"{path}: refusing to write scores outside [0, 1] or not finite")
    text = ",".join(repr(float(v)) for v in scores) + "\n"
    write_text(path, text)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def manifest_path(data_dir: str, track: str) -> str:
    return os.path.join(data_dir, track, MANIFEST)


def prediction_key(md: layout.ModelDir) -> str:
    """A prediction file's name in the run record: its path inside the track folder."""
    return f"{md.key}/prediction.csv"


def write_manifest(data_dir: str, track: str, digests: dict, command: str) -> dict:
    """Record one finished run: ``digests`` {prediction_key: sha256} of every file it wrote. Call it
    only after the last prediction file is in place. Returns the record."""
    record = {
        "run_id": uuid.uuid4().hex[:12],
        "finished": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "command": command,
        "files": dict(sorted(digests.items())),
    }
    write_text(manifest_path(data_dir, track), json.dumps(record, indent=1) + "\n")
    return record


def read_manifest(data_dir: str, track: str) -> dict:
    """The last finished run's record; LayoutError (one line, with the fix) if absent or malformed."""
    path = manifest_path(data_dir, track)
    rerun = f"run run_lira_mia.py --challenge {track} to the end, then save_zip.py"
    if not os.path.exists(path):
        raise layout.LayoutError(
            f"{path}: missing, so no complete run_lira_mia.py run is known to have written these predictions; {rerun}"
        )
    try:
        with open(path) as f:
            record = json.load(f)
        if not (isinstance(record, dict) and {"run_id", "finished", "files"} <= record.keys()):
            raise ValueError("expected an object with run_id, finished and files")
        if not (isinstance(record["files"], dict) and all(isinstance(v, str) for v in record["files"].values())):
            raise ValueError("'files' is not a map of file names to sha256 digests")
    except (OSError, ValueError) as e:
        raise layout.LayoutError(f"{path}: not a record of a run_lira_mia.py run ({e}); {rerun}") from None
    return record


def not_from_run(mds: list, record: dict, track_dir: str | None = None) -> list[str]:
    """One message per prediction file of ``mds`` that the run ``record`` did not write as it is now,
    and (with ``track_dir``) per file the record lists that is no longer among ``mds``' (its model
    folder gone since the run)."""
    run = f"run {record['run_id']} ({record['finished']})"
    out = []
    if track_dir is not None:
        present = {prediction_key(md) for md in mds}
        out += [
            f"{os.path.join(track_dir, key)}: written by the last complete run_lira_mia.py {run}, gone since"
            for key in record["files"]
            if key not in present
        ]
    for md in mds:
        want = record["files"].get(prediction_key(md))
        if want is None:
            out.append(f"{md.prediction_file}: not written by the last complete run_lira_mia.py {run}")
        elif file_digest(md.prediction_file) != want:
            out.append(
                f"{md.prediction_file}: changed since the last complete run_lira_mia.py {run} wrote it "
                "(a later run that stopped part-way, or an edit)"
            )
    return out


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


def _expected_ids(data_dir: str, track: str, params: ChallengeParams, phase: str, found: list[str]) -> range:
    """The ids ``phase`` (dev or final) has in every scenario: from the model counts challenge.json
    records (a synthetic challenge), else every id from the lowest to the highest any scenario has
    (MICO: dev model_100..149, final model_150..199, the same in all three scenarios)."""
    if params.models is not None:
        n_train, n_dev, n_final = params.models
        return range(n_train, n_train + n_dev) if phase == "dev" else range(n_train + n_dev, sum(params.models))
    ids = [md.model_id for s in found for md in layout.models(data_dir, track, s, (phase,))]
    return range(min(ids), max(ids) + 1) if ids else range(0)


def missing_targets(data_dir: str, track: str, params: ChallengeParams) -> list[str]:
    """One message per scenario, or dev or final model folder, of the track's layout that is not
    there: MICO's scorer takes a submission only whole (all three scenarios, every dev and final model)."""
    found = layout.scenarios(data_dir, track)
    where = "challenge.json's model counts" if params.models is not None else "the other scenarios and ids"
    fix = (
        "rebuild it with download_files.py --synthetic and the challenge's settings (it adds what is missing)"
        if params.synthetic
        else "download it with download_files.py"
    )
    out = [
        f"{os.path.join(data_dir, track, s)}: missing; a submission needs all three scenarios; {fix}"
        for s in scenario_names(track)
        if s not in found
    ]
    for phase in TARGET_PHASES:
        ids = _expected_ids(data_dir, track, params, phase, found)
        if not ids:
            continue
        span = f"{phase} model_{ids[0]}..model_{ids[-1]} in every scenario, from {where}"
        for s in found:
            have = {md.model_id for md in layout.models(data_dir, track, s, (phase,))}
            out += [
                f"{layout.ModelDir(data_dir, track, s, phase, i).path}: missing (the layout has {span}); {fix}"
                for i in ids
                if i not in have
            ]
    return out


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


def output_problem(out_path: str, data_dir: str, track: str) -> str | None:
    """Why the zip must not be written to ``out_path`` (None if it may): inside the challenge's track
    folder (predictions.json, challenge.json, model folders: nothing there is the zip's to replace),
    an existing folder, or an existing file that is not a zip (a zip is one earlier save_zip.py wrote)."""
    track_dir = os.path.abspath(os.path.join(data_dir, track))
    out = os.path.abspath(out_path)
    if out == track_dir or out.startswith(track_dir + os.sep):
        return (
            f"--output {out_path}: inside the challenge folder {os.path.join(data_dir, track)}; write the zip elsewhere"
        )
    if os.path.isdir(out_path):
        example = os.path.join(out_path, f"predictions_{track}.zip")
        return f"--output {out_path}: a folder; name the zip file, e.g. {example}"
    if os.path.exists(out_path) and not zipfile.is_zipfile(out_path):
        return f"--output {out_path}: an existing file that is not a zip; choose another name or remove it"
    return None


def write_zip(data_dir: str, track: str, out_path: str, comment: str = "") -> int:
    """Write the submission zip atomically; returns the number of entries."""
    mds = target_models(data_dir, track)
    with atomic_path(out_path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.comment = comment.encode("utf-8")
        for md in mds:
            z.write(md.prediction_file, arcname=f"{track}/{md.key}/prediction.csv")
    return len(mds)
