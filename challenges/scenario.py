"""One scenario's cached signals and the membership an attacker knows, assembled as arrays for the
attacks; the targets' ground truth, read apart for scoring (:func:`target_truth`).

Everything is indexed by ``points``: the sorted union of the scenario's challenge points. What an
attack is handed (:class:`ScenarioData`) holds the membership of the train models (published by
MICO through their seeds and solution.csv) and of our own shadows, never a dev or final model's:
their ``solutions`` rows are -1 even where a synthetic challenge's solutions/ tree holds the truth.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np

from . import cache, layout
from .splits import RUNNER_UP_LEN_TRAINING, membership_matrix, runner_up_membership, runner_up_train_positions
from .tracks import TARGET_PHASES, ChallengeParams


@dataclass
class ScenarioData:
    scenario: str
    models: list  # ModelDir: train, designed shadows, dev, final (layout.MODEL_PHASES order)
    points: np.ndarray  # int64 [P] dataset indices
    fields: dict  # cache field -> float32 [n_models, P, V(, C)] ('phi', 'mentr', ...)
    challenge: np.ndarray  # int64 [n_models, 2m]: positions in ``points``, challenge order; -1 for shadows
    shadow_in: np.ndarray  # bool [n_shadows, P]: point in the shadow model's training set
    # int8 [n_models, 2m]: the train models' 0/1 membership of their challenge points; -1 for every
    # dev/final model (attacks never see a target's truth: scoring reads it with target_truth)
    solutions: np.ndarray
    # bool [n_train, P]: the membership the MICO runner-up's code *used* for the train models (its
    # index bug, challenges.splits.runner_up_train_positions); only when asked for
    runner_up_in: np.ndarray | None = None
    # bool [n_shadows, P]: the shadow held the point as one of its own challenge members, which MICO's
    # non-private runs train first, unshuffled, as a target trains its members (attacks.order); False
    # for filler, for points it does not hold, and for every designed shadow (its pool points come
    # first too, but as a block of thousands, not a first batch of m). None: not known.
    shadow_first: np.ndarray | None = None

    @property
    def phi(self) -> np.ndarray:
        return self.fields["phi"]

    def phase_rows(self, phase: str) -> np.ndarray:
        return np.array([i for i, md in enumerate(self.models) if md.phase == phase], dtype=np.int64)

    def own_rows(self, phase: str) -> np.ndarray:
        """Rows of ``phase``'s models that are the challenge's own: no extra shadow of ours (designed,
        or MICO-random marked extra_shadow). The one row set every score and choice is made on."""
        rows = self.phase_rows(phase)
        return rows[[not self.models[i].extra for i in rows]] if len(rows) else rows

    @property
    def n_shadows(self) -> int:
        """Shadow models (train, then designed shadows) are rows ``0 .. n_shadows - 1``."""
        return len(self.shadow_in)


def scenario_points(
    data_dir: str, track: str, scenario: str, params: ChallengeParams, n_points: int, *, need_models: bool = True
):
    """(model folders, their splits (None for designed shadows), sorted union of the challenge points).
    ``need_models``: every folder must hold its model.pt (else a LayoutError naming the fix)."""
    mds = layout.models(data_dir, track, scenario)
    if not any(not md.designed for md in mds):
        where = os.path.join(data_dir, track, scenario)
        fetch = f"download_files.py --challenge {track} --scenario {scenario}"
        if not os.path.isdir(where):
            raise layout.LayoutError(f"{where}: no such scenario folder; run {fetch}")
        raise layout.LayoutError(f"{where}: no train, dev or final model folders; run {fetch}, or remove the folder")
    for md in mds if need_models else ():
        md.check_model_file()
    splits = [None if md.designed else md.splits(params, n_points) for md in mds]
    return mds, splits, np.unique(np.concatenate([s.challenge for s in splits if s is not None]))


def cached_points(md, split, union: np.ndarray, reads=None) -> np.ndarray:
    """Sorted dataset indices ``md``'s cache file holds: the scenario's whole ``union`` for a shadow
    (train or designed); for a dev/final target only what the attacks read of it, its own challenge
    points plus ``reads(len(union), own)`` (pool positions, e.g. RMIA's population, for its own
    positions ``own`` in ``union``; see ``attacks.suite.target_reads``)."""
    if md.phase not in TARGET_PHASES:
        return union
    own = np.searchsorted(union, split.challenge)
    extra = reads(len(union), own) if reads is not None else own
    return union[np.union1d(own, extra)]


def challenge_pool(data_dir: str, track: str, scenario: str, params: ChallengeParams, n_points: int) -> np.ndarray:
    """Sorted union of the challenge points of the challenge's own models (extra shadows left out:
    their challenge points are never attacked). Needs the models' seeds only, not their model.pt."""
    mds, splits, _ = scenario_points(data_dir, track, scenario, params, n_points, need_models=False)
    return np.unique(np.concatenate([s.challenge for md, s in zip(mds, splits) if not md.extra]))


def _solution(md, m2: int) -> np.ndarray | None:
    """A model's solution.csv (train) or solutions/ tree entry (a synthetic dev/final model), checked
    for length; None where there is none."""
    sol = None if md.designed else md.solution()
    if sol is not None and len(sol) != m2:
        raise layout.LayoutError(f"{md.solution_file()}: {len(sol)} values, expected {m2}")
    return sol


def _solutions(mds, splits, m2: int) -> np.ndarray:
    """int8 [n_models, 2m]: the train models' membership (an attacker's knowledge), -1 for every
    dev/final model; a train model's solution.csv must agree with the split rebuilt from its seeds."""
    solutions = np.full((len(mds), m2), -1, dtype=np.int8)
    for i, (md, s) in enumerate(zip(mds, splits)):
        sol = None if md.phase in TARGET_PHASES else _solution(md, m2)
        if sol is None:
            continue
        solutions[i] = sol
        if s.member is not None and not np.array_equal(sol, s.solutions()):
            raise layout.LayoutError(
                f"{md.solution_file()}: disagrees with the split rebuilt from "
                "the seeds (wrong challenge parameters or base dataset?)"
            )
    return solutions


def target_truth(data: ScenarioData, rows) -> np.ndarray:
    """int8 [len(rows), 2m] ground truth of model ``rows`` of ``data``, for scoring only: the train
    models' known membership, a dev/final model's from the synthetic solutions/ tree; -1 where none
    exists (MICO's own dev and final models)."""
    m2 = data.solutions.shape[1]
    out = np.full((len(rows), m2), -1, dtype=np.int8)
    for j, r in enumerate(np.asarray(rows, dtype=np.int64).tolist()):
        md = data.models[r]
        if md.phase not in TARGET_PHASES:
            out[j] = data.solutions[r]
            continue
        sol = _solution(md, m2)
        if sol is not None:
            out[j] = sol
    return out


def design_warning(mds, splits, points: np.ndarray, designed_in: np.ndarray) -> str | None:
    """Why the designed shadows are not the balanced design they were made as, or None.

    ``designed_in``: bool [n_designed, len(points)], the designed shadows' membership. A complete
    design holds every challenge point of the challenge's own models IN for the same number of
    shadows; a missing model (a failed shard, a deleted folder) breaks that."""
    ids = [md.model_id for md in mds if md.designed]
    if not ids:
        return None
    own = np.concatenate([s.challenge for md, s in zip(mds, splits) if s is not None and not md.extra])
    counts = designed_in[:, np.searchsorted(points, np.unique(own))].sum(axis=0)
    gaps = sorted(set(range(max(ids) + 1)) - set(ids))
    if counts.min() == counts.max() and not gaps:
        return None
    md = next(md for md in mds if md.designed)
    missing = f"; missing: {', '.join(f'model_{i}' for i in gaps[:5])}{' ...' if len(gaps) > 5 else ''}" if gaps else ""
    return (
        f"{os.path.dirname(md.path)}: the {len(ids)} designed shadows are not a balanced design (challenge points "
        f"IN for {counts.min()} to {counts.max()} of them{missing}); used as they are. To complete it, rerun "
        f"train_shadows.py --challenge {md.track} --scenario {md.scenario} --design balanced with the design's "
        "--n, --seed and --fraction"
    )


def first_matrix(points: np.ndarray, seeded: list, n_designed: int) -> np.ndarray:
    """bool [len(seeded) + n_designed, len(points)]: ScenarioData.shadow_first. A seeded shadow's
    (a train model's) own challenge members, from its split; nothing for a designed shadow."""
    first = np.zeros((len(seeded) + n_designed, len(points)), dtype=bool)
    for r, s in enumerate(seeded):
        if s.member is not None:
            first[r, np.searchsorted(points, s.member)] = True
    return first


def runner_up_len_training(params: ChallengeParams, n_points: int) -> int:
    """The LEN_TRAINING the runner-up's code would run with on this dataset.

    It hard-codes 50,000 for both tracks. Wherever the dataset holds a training set that large
    (``50,000 <= N - m``, what MICO's own split needs), 50,000 is used, synthetic challenges
    included, as the released program would run there. On a smaller dataset the released program
    could not run: its split makes every point below ``N - 2m`` IN for every shadow, and it stops
    at the first point with no OUT shadow (docs/as_submitted.md, 1.1); there the challenge's own
    LEN_TRAINING is used, which keeps only the index bug.
    """
    fits = RUNNER_UP_LEN_TRAINING <= n_points - params.len_challenge
    return RUNNER_UP_LEN_TRAINING if fits else params.len_training


def runner_up_note(params: ChallengeParams, n_points: int) -> str:
    """One line saying which LEN_TRAINING the runner-up's reproduction uses here, and why."""
    lt = runner_up_len_training(params, n_points)
    if lt == RUNNER_UP_LEN_TRAINING:
        return (
            f"as submitted: LEN_TRAINING = {lt:,}, hard-coded in the runner-up's released code "
            f"(this challenge's own: {params.len_training:,})"
        )
    return (
        f"as submitted: LEN_TRAINING = {lt:,}, this challenge's own: the released code's "
        f"{RUNNER_UP_LEN_TRAINING:,} needs N >= {RUNNER_UP_LEN_TRAINING + params.len_challenge:,} "
        f"(here N = {n_points:,}), so the original could not run here; only its index bug is kept"
    )


def load_scenario(
    data_dir: str,
    cache_dir: str,
    track: str,
    scenario: str,
    params: ChallengeParams,
    n_points: int,
    fields=("phi",),
    runner_up: bool = False,
    reads=None,
) -> ScenarioData:
    """The scenario's arrays; ``runner_up``: also the runner-up's (wrong) train-model membership.

    A dev/final model's signals are NaN outside its own challenge points and ``reads`` (see
    :func:`cached_points`): its cache file holds only those."""
    mds, splits, points = scenario_points(data_dir, track, scenario, params, n_points)
    m2 = 2 * params.len_challenge
    challenge = np.stack([np.full(m2, -1) if s is None else np.searchsorted(points, s.challenge) for s in splits])
    shadows = [i for i, md in enumerate(mds) if md.phase in ("train", "shadow")]
    if shadows != list(range(len(shadows))):
        raise AssertionError("layout.models must list the shadow phases first")
    seeded = [splits[k] for k in shadows if splits[k] is not None]
    member = membership_matrix(n_points, seeded)[:, points]
    designed = [k for k in shadows if splits[k] is None]
    first = first_matrix(points, seeded, len(designed))
    if designed:
        rows = np.zeros((len(designed), n_points), dtype=bool)
        for r, k in enumerate(designed):
            rows[r, mds[k].training_set(params, n_points)] = True
        member = np.concatenate([member, rows[:, points]])
        warning = design_warning(mds, splits, points, rows[:, points])
        if warning:
            warnings.warn(warning, layout.LayoutWarning, stacklevel=2)
    quirky = None
    if runner_up:
        positions = [
            runner_up_train_positions(
                n_points, params.len_challenge, *md.seeds()[1:], len_training=runner_up_len_training(params, n_points)
            )
            for md in mds
            if md.phase == "train"
        ]
        quirky = runner_up_membership(points, positions)
    solutions = _solutions(mds, splits, m2)  # checked before the (slower) cache is read
    required = [cached_points(md, s, points, reads) for md, s in zip(mds, splits)]
    arrays = cache.load(cache_dir, mds, points, fields, required)
    return ScenarioData(scenario, mds, points, arrays, challenge, member, solutions, quirky, first)
