"""The one walker over a MICO challenge tree.

``<data-dir>/<track>/<track>_{inf,hi,lo}/{train,dev,final}/model_<id>/`` holds ``model.pt`` and
``seed_challenge``; train models also hold ``seed_training``, ``seed_membership`` and
``solution.csv``. Designed shadow models (ours, not MICO's) live in ``<scenario>/shadow/model_<id>/``
with ``model.pt`` and an explicit training set (:mod:`challenges.membership`) instead of seeds.
Ground truth for dev/final, when known (the synthetic challenge), lives in a separate tree
``<data-dir>/<track>/solutions/<scenario>/<phase>/model_<id>/solution.csv`` so that model folders
never reveal it. Nothing else in the project lists directories.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np

from .membership import read_training_set
from .splits import Splits, reconstruct
from .tracks import (
    EXTRA_SHADOW_FILE,
    MODEL_PHASES,
    SHADOW_PHASE,
    ChallengeParams,
    check_scenario,
    scenario_names,
)

_MODEL_RE = re.compile(r"^model_(0|[1-9][0-9]*)$")
SEED_FILES = ("seed_challenge", "seed_training", "seed_membership")


class LayoutError(ValueError):
    """A challenge tree that is missing something or holds a malformed file."""


class LayoutWarning(UserWarning):
    """A challenge tree that can be used, but not as intended (a designed shadow missing); the
    scripts print it as one line (:func:`challenges.cli.run`)."""


def read_seed(path: str) -> int:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise LayoutError(f"{path}: cannot read seed ({e.strerror}); re-download the model folder") from None
    try:
        return int(raw.decode("ascii").strip())
    except ValueError:  # UnicodeDecodeError included
        raise LayoutError(
            f"{path}: malformed seed {raw[:40]!r} (expected one integer); re-download the model folder"
        ) from None


def read_row(path: str) -> np.ndarray:
    """A one-row CSV of numbers (solution.csv, prediction.csv) as float64."""
    try:
        with open(path) as f:
            text = f.read().strip()
        return np.array([float(v) for v in text.replace("\n", ",").split(",") if v.strip()])
    except OSError as e:
        raise LayoutError(f"{path}: cannot read ({e.strerror})") from None
    except ValueError:
        raise LayoutError(f"{path}: not a comma-separated row of numbers") from None


@dataclass(frozen=True)
class ModelDir:
    data_dir: str
    track: str
    scenario: str
    phase: str
    model_id: int

    @property
    def name(self) -> str:
        return f"model_{self.model_id}"

    @property
    def path(self) -> str:
        return os.path.join(self.data_dir, self.track, self.scenario, self.phase, self.name)

    @property
    def model_file(self) -> str:
        return os.path.join(self.path, "model.pt")

    @property
    def prediction_file(self) -> str:
        return os.path.join(self.path, "prediction.csv")

    @property
    def key(self) -> str:
        """``<scenario>/<phase>/model_<id>``: the model's path inside the track folder."""
        return f"{self.scenario}/{self.phase}/{self.name}"

    def seeds(self) -> tuple[int, int | None, int | None]:
        """(seed_challenge, seed_training, seed_membership); the last two None when absent, which
        only dev and final models may be (a train model's training set comes from them)."""
        out = []
        for i, name in enumerate(SEED_FILES):
            p = os.path.join(self.path, name)
            if os.path.exists(p):
                out.append(read_seed(p))
            elif i == 0:
                raise LayoutError(
                    f"{p}: missing; every model folder needs seed_challenge (re-download it with download_files.py)"
                )
            elif self.phase == "train":
                raise LayoutError(
                    f"{p}: missing; a train model needs seed_training and seed_membership "
                    "(re-download the model folder, or move it out of train/)"
                )
            else:
                out.append(None)
        return tuple(out)

    @property
    def designed(self) -> bool:
        """A designed shadow model: explicit training set, no seeds, no challenge points."""
        return self.phase == SHADOW_PHASE

    @property
    def extra(self) -> bool:
        """An extra shadow of ours (designed, or MICO-random with the extra_shadow mark), not MICO's."""
        return self.designed or os.path.exists(os.path.join(self.path, EXTRA_SHADOW_FILE))

    def restore_hint(self) -> str:
        """How to bring back a file this folder lost: retrain our own shadows, re-download MICO's models."""
        where = f"--challenge {self.track} --scenario {self.scenario}"
        if self.designed:
            return (
                f"retrain it: rerun train_shadows.py {where} --design balanced with the design's --n, --seed and "
                "--fraction; it retrains incomplete folders"
            )
        if self.extra:
            return (
                f"retrain it: rerun train_shadows.py {where} --design mico with the --seed in its extra_shadow "
                f"file and an --n and --first-id that cover {self.name}; it retrains incomplete folders"
            )
        return "re-download it with download_files.py"

    def check_model_file(self) -> None:
        """LayoutError naming model.pt and the fix (:meth:`restore_hint`) if the folder has none."""
        if not os.path.isfile(self.model_file):
            raise LayoutError(f"{self.model_file}: missing; {self.restore_hint()}")

    def splits(self, params: ChallengeParams, n_points: int) -> Splits:
        return reconstruct(n_points, params.len_training, params.len_challenge, *self.seeds())

    def training_set(self, params: ChallengeParams, n_points: int) -> np.ndarray:
        """Dataset indices the model trained on: its explicit training-set file (designed shadows)
        or ``member + training`` rebuilt from its seeds (MICO's train models)."""
        if self.designed:
            return read_training_set(self.path, n_points, params.len_training)
        return self.splits(params, n_points).train_indices()

    def solution_file(self) -> str | None:
        """solution.csv in the model folder, else in the separate solutions tree, else None."""
        for p in (
            os.path.join(self.path, "solution.csv"),
            os.path.join(self.data_dir, self.track, "solutions", self.key, "solution.csv"),
        ):
            if os.path.exists(p):
                return p
        return None

    def solution(self) -> np.ndarray | None:
        p = self.solution_file()
        return None if p is None else read_row(p).astype(np.int64)


def scenarios(data_dir: str, track: str, scenario: str | None = None) -> list[str]:
    """Scenarios present on disk, in MICO order (inf, hi, lo); ``scenario`` restricts to one."""
    names = scenario_names(track)
    if scenario is not None:
        try:
            names = [check_scenario(track, scenario)]
        except ValueError as e:
            raise LayoutError(str(e)) from None
    found = [s for s in names if os.path.isdir(os.path.join(data_dir, track, s))]
    if not found:
        where = os.path.join(data_dir, track)
        raise LayoutError(
            f"{where}: no scenario folder ({', '.join(names)}); run download_files.py "
            f"--challenge {track} (or --synthetic for an offline challenge)"
        )
    return found


def missing_scenarios_note(data_dir: str, track: str) -> str | None:
    """A line naming the scenarios found and those missing from ``<data_dir>/<track>`` when some but
    not all are there (None otherwise): a run over what is there makes no whole submission."""
    found = scenarios(data_dir, track)
    missing = [s for s in scenario_names(track) if s not in found]
    if not missing:
        return None
    return (
        f"{os.path.join(data_dir, track)}: found {', '.join(found)} only; {', '.join(missing)} missing "
        f"(save_zip.py needs all three: download or build {'it' if len(missing) == 1 else 'them'} first)"
    )


def models(data_dir: str, track: str, scenario: str, phases=MODEL_PHASES) -> list[ModelDir]:
    """Model folders of one scenario, phase by phase (train, shadow, dev, final), ids in numeric order."""
    out = []
    for phase in phases:
        d = os.path.join(data_dir, track, scenario, phase)
        if not os.path.isdir(d):
            continue
        ids = sorted(
            int(m.group(1))
            for m in map(_MODEL_RE.match, os.listdir(d))
            if m and os.path.isdir(os.path.join(d, m.group(0)))
        )
        out.extend(ModelDir(data_dir, track, scenario, phase, i) for i in ids)
    return out
