"""Running an attack over a scenario, writing predictions, and scoring where truth is known
(the reports built from the scores are in :mod:`challenges.report`).

An attack is a callable ``attack(data, rows, exclude) -> scores``: ``rows`` (T,) are model rows
of ``data`` to attack, ``exclude`` (T,) the shadow row each must leave out of its statistics
(-1 for none: dev/final targets), and ``scores`` (T, 2m) membership scores in [0, 1] in
challenge order. Train models are attacked leave-one-out, so their scores estimate the score
of a submission before it is made. Only the challenge's own models are targets: extra shadows
(designed, or MICO-random ones marked ``extra_shadow``) are shadows only, so the train table
measures the challenge's own models whatever shadows were added.
"""

from __future__ import annotations

import numpy as np

from . import scoring
from .scenario import ScenarioData, target_truth
from .submission import prediction_key, write_manifest, write_prediction
from .tracks import TARGET_PHASES, TARGETS


def target_rows(data: ScenarioData, phase: str) -> np.ndarray:
    """Rows of ``phase``'s models that are the challenge's own (no extra shadow of ours)."""
    return data.own_rows(phase)


def attack_scenario(data: ScenarioData, attack, evaluate: bool) -> dict:
    """{phase: (rows, scores)} for dev and final, plus train (leave-one-out) if ``evaluate``; the
    challenge's own models only (:func:`target_rows`)."""
    phases = (("train",) if evaluate else ()) + TARGET_PHASES
    parts = {ph: target_rows(data, ph) for ph in phases}
    rows = np.concatenate([parts[ph] for ph in phases])
    exclude = np.where(rows < data.n_shadows, rows, -1)
    if len(rows) == 0:
        return {}
    scores = attack(data, rows, exclude)
    out, start = {}, 0
    for ph in phases:
        n = len(parts[ph])
        if n:
            out[ph] = (parts[ph], scores[start : start + n])
        start += n
    return out


def write_predictions(models: list, results: dict) -> dict:
    """prediction.csv of every dev/final model in ``results``; ``models``: the scenario's ModelDirs.
    Returns {prediction_key: sha256} of the files written, for the run's record."""
    digests = {}
    for ph in TARGET_PHASES:
        if ph in results:
            for row, s in zip(*results[ph]):
                md = models[row]
                digests[prediction_key(md)] = write_prediction(md.prediction_file, s)
    return digests


def write_run(data_dir: str, track: str, done: list, command: str) -> dict:
    """Write the prediction.csv files of a whole run, ``done`` [(models, results)] per scenario,
    then, last, the run's record (:func:`challenges.submission.write_manifest`); returns it."""
    digests = {}
    for models, results in done:
        digests.update(write_predictions(models, results))
    return write_manifest(data_dir, track, digests, command)


def score_results(data: ScenarioData, results: dict, seed: int = 0, errors: bool = True) -> dict:
    """{phase: MICO metrics} over every model of a phase pooled, where all truth is known (read
    here, never handed to the attack: challenges.scenario.target_truth); where dev and final are
    both scored, also :data:`TARGETS`: each scored on its own, then their mean, ± bootstrap SEs
    (challenges.scoring.phase_mean; ``seed`` its resamples). ``errors=False`` leaves the SEs out (a
    caller that resamples every attack together, as --compare does, needs no per-row bootstrap)."""
    out, known = {}, {}
    for ph, (rows, scores) in results.items():
        truth = target_truth(data, rows)
        if len(rows) and (truth >= 0).all():
            out[ph] = scoring.score(truth.ravel(), scores.ravel())
            known[ph] = truth, scores
    if all(ph in known for ph in TARGET_PHASES):
        truth, scores, phases = targets_by_phase(known)
        if errors:
            out[TARGETS] = scoring.phase_mean(truth, scores, phases, seed=seed)
        else:
            out[TARGETS] = scoring.mean_over_groups(truth, scores, phases)
    return out


def targets_by_phase(known: dict) -> tuple:
    """(truth, scores, phases) of the dev and final models stacked: (M, 2m), (M, 2m), (M,) phase
    names, from ``known`` {phase: (truth, scores)}."""
    truth = np.concatenate([known[ph][0] for ph in TARGET_PHASES])
    scores = np.concatenate([known[ph][1] for ph in TARGET_PHASES])
    phases = np.concatenate([[ph] * len(known[ph][0]) for ph in TARGET_PHASES])
    return truth, scores, phases
