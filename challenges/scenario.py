"""One scenario's cached signals and ground truth, assembled as arrays for the attacks.

Everything is indexed by ``points``: the sorted union of the scenario's challenge points.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from . import cache, layout
from .splits import membership_matrix
from .tracks import ChallengeParams


@dataclass
class ScenarioData:
    scenario: str
    models: list              # ModelDir, train then dev then final
    points: np.ndarray        # int64 [P] dataset indices
    fields: dict              # cache field -> float32 [n_models, P, V(, C)] ('phi', 'mentr', ...)
    challenge: np.ndarray     # int64 [n_models, 2m]: positions in ``points``, challenge order
    shadow_in: np.ndarray     # bool [n_train, P]: point in the train model's training set
    solutions: np.ndarray     # int8 [n_models, 2m]: 0/1, -1 where unknown

    @property
    def phi(self) -> np.ndarray:
        return self.fields["phi"]

    def phase_rows(self, phase: str) -> np.ndarray:
        return np.array([i for i, md in enumerate(self.models) if md.phase == phase], dtype=np.int64)

    @property
    def n_train(self) -> int:
        return len(self.shadow_in)


def scenario_points(data_dir: str, track: str, scenario: str, params: ChallengeParams, n_points: int):
    """(model folders, their splits, sorted union of their challenge points) of one scenario."""
    mds = layout.models(data_dir, track, scenario)
    if not mds:
        raise layout.LayoutError(f"{os.path.join(data_dir, track, scenario)}: no model folders; "
                                 "re-download the scenario or remove the empty folder")
    splits = [md.splits(params, n_points) for md in mds]
    return mds, splits, np.unique(np.concatenate([s.challenge for s in splits]))


def load_scenario(data_dir: str, cache_dir: str, track: str, scenario: str, params: ChallengeParams,
                  n_points: int, fields=("phi",)) -> ScenarioData:
    mds, splits, points = scenario_points(data_dir, track, scenario, params, n_points)
    challenge = np.stack([np.searchsorted(points, s.challenge) for s in splits])
    member = membership_matrix(n_points, [s for md, s in zip(mds, splits) if md.phase == "train"])
    solutions = np.full(challenge.shape, -1, dtype=np.int8)
    for i, (md, s) in enumerate(zip(mds, splits)):
        sol = md.solution()
        if sol is not None:
            if len(sol) != challenge.shape[1]:
                raise layout.LayoutError(f"{md.solution_file()}: {len(sol)} values, expected "
                                         f"{challenge.shape[1]}")
            solutions[i] = sol
        if s.member is not None and sol is not None and not np.array_equal(sol, s.solutions()):
            raise layout.LayoutError(f"{md.solution_file()}: disagrees with the split rebuilt from "
                                     "the seeds (wrong challenge parameters or base dataset?)")
    arrays = cache.load(cache_dir, mds, points, fields)
    return ScenarioData(scenario, mds, points, arrays, challenge, member[:, points], solutions)
