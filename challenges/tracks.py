"""MICO track specifications and the per-challenge parameters.

A track fixes the base dataset, the model architecture and MICO's split sizes.
A challenge tree may override the sizes in ``<data-dir>/<track>/challenge.json``
(the synthetic challenge does); everything reads them through :func:`load_params`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from .fileio import write_text

SCENARIO_SUFFIXES = ("inf", "hi", "lo")  # no DP, eps=10, eps=4 (delta=1e-5)
PHASES = ("train", "dev", "final")  # MICO's phases
TARGET_PHASES = ("dev", "final")
# The dev and final models' score as MICO would give it: each phase on its own pooled ROC (MICO
# ranked them apart), then their mean; a key beside the phases in score tables and files.
TARGETS = "dev+final"
SHADOW_PHASE = "shadow"  # designed shadow models (train_shadows.py --design balanced): never targets
# Every model folder of a scenario, in row order: the shadows (train, then designed) come first.
MODEL_PHASES = ("train", SHADOW_PHASE, "dev", "final")
# Marks an extra MICO-random shadow (train_shadows.py --design mico): a train model of ours, not
# MICO's, so its challenge points are not points to attack (a balanced design leaves them out).
EXTRA_SHADOW_FILE = "extra_shadow"
LEN_CHALLENGE = 100  # members = non-members = 100, so 200 challenge points per model
# A synthetic challenge's training secret, in <data-dir>/<track>/solutions/ (production.folders):
# only a synthetic build writes it, so it marks a tree as one.
SECRET_FILE = "training_secret"
TEST_SECRET_ENV = "MICO_TEST_TRAINING_SECRET"  # tests only: a known secret (production.folders)
SECRET_ORIGINS = ("random", "test")  # os.urandom (private targets), $MICO_TEST_TRAINING_SECRET (none)

CIFAR10_MEAN = (0.49139968, 0.48215841, 0.44653091)
CIFAR10_STD = (0.24703223, 0.24348513, 0.26158784)


@dataclass(frozen=True)
class Track:
    name: str
    n_points: int | None  # None: take N from the dataset file (Purchase-100)
    len_training: int
    num_classes: int
    input_shape: tuple
    dataset: str  # base dataset path relative to <data-dir>/<track>/
    epsilons: dict  # scenario suffix -> target epsilon (None = no DP), delta = DP_DELTA


TRACKS = {
    "cifar10": Track(
        "cifar10", 60_000, 50_000, 10, (3, 32, 32), "cifar-10-batches-py", {"inf": None, "hi": 10.0, "lo": 4.0}
    ),
    "purchase100": Track(
        "purchase100", None, 150_000, 100, (600,), "dataset_purchase", {"inf": None, "hi": 10.0, "lo": 4.0}
    ),
}
DP_DELTA = 1e-5


def get_track(name: str) -> Track:
    try:
        return TRACKS[name]
    except KeyError:
        raise ValueError(f"unknown challenge {name!r}: choose one of {', '.join(TRACKS)}") from None


def scenario_names(track: str) -> list[str]:
    return [f"{track}_{s}" for s in SCENARIO_SUFFIXES]


def check_scenario(track: str, scenario: str) -> str:
    """``scenario`` if it names one of ``track``'s scenarios; the one place scenario names are checked."""
    names = scenario_names(track)
    if scenario not in names:
        raise ValueError(f"unknown scenario {scenario!r} for {track}: choose one of {', '.join(names)}")
    return scenario


def scenario_suffix(scenario: str) -> str:
    """'cifar10_hi' -> 'hi'."""
    suffix = scenario.rsplit("_", 1)[-1]
    if suffix not in SCENARIO_SUFFIXES:
        raise ValueError(f"unknown scenario {scenario!r}: expected <track>_{{{','.join(SCENARIO_SUFFIXES)}}}")
    return suffix


@dataclass(frozen=True)
class ChallengeParams:
    """Sizes needed to rebuild every model's splits, and where the base dataset lives."""

    track: str
    n_points: int | None
    len_training: int
    len_challenge: int
    dataset: str  # absolute path of the base dataset
    synthetic: bool = False
    seed: int | None = None  # synthetic challenges: the seed every model's seeds derive from
    # synthetic purchase100: the data generator ('classes', the demo's; 'shoppers', --preset mico's)
    generator: str | None = None
    # synthetic: the models per scenario (train, dev, final) and the --epochs override (None: MICO's
    # recipe) it was built with; models None: not recorded (challenge.json written before they were)
    models: tuple[int, int, int] | None = None
    epochs: int | None = None
    # synthetic: where its training secret came from (SECRET_ORIGINS); None: not recorded
    training_secret: str | None = None

    def to_json(self, track_dir: str) -> dict:
        d = asdict(self)
        d["dataset"] = os.path.relpath(self.dataset, track_dir)
        d["models"] = None if self.models is None else dict(zip(PHASES, self.models))
        return d

    @property
    def private_targets(self) -> bool:
        """False for a challenge built with the test secret: its dev/final ground truth follows from
        a known value. True otherwise (a random secret, the real challenge, or not recorded)."""
        return self.training_secret != "test"


def challenge_json_path(data_dir: str, track: str) -> str:
    return os.path.join(data_dir, track, "challenge.json")


def load_params(data_dir: str, track: str) -> ChallengeParams:
    """The challenge's parameters: ``challenge.json`` if present, else MICO's constants."""
    spec = get_track(track)
    track_dir = os.path.join(data_dir, track)
    path = challenge_json_path(data_dir, track)
    if not os.path.exists(path):
        if is_synthetic_tree(data_dir, track):  # MICO's constants would give every split wrong
            raise ValueError(f"{path}: missing, but {track_dir} is a synthetic challenge; {_json_fix(data_dir, track)}")
        return ChallengeParams(
            track, spec.n_points, spec.len_training, LEN_CHALLENGE, os.path.join(track_dir, spec.dataset)
        )
    fix = _json_fix(data_dir, track)
    try:
        with open(path) as f:
            d = json.load(f)
        if not isinstance(d, dict):
            raise ValueError(f"a JSON {type(d).__name__}, not an object")
        params = ChallengeParams(
            track=track,
            n_points=None if d.get("n_points") is None else int(d["n_points"]),
            len_training=int(d["len_training"]),
            len_challenge=int(d["len_challenge"]),
            dataset=os.path.normpath(os.path.join(track_dir, d["dataset"])),
            synthetic=bool(d.get("synthetic", False)),
            seed=None if d.get("seed") is None else int(d["seed"]),
            # written since there are two generators; before, a synthetic purchase100 was 'classes'
            generator=d.get("generator", "classes" if d.get("synthetic") and track == "purchase100" else None),
            models=_model_counts(d.get("models")),
            epochs=None if d.get("epochs") is None else int(d["epochs"]),
            training_secret=_origin(d.get("training_secret")),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: malformed challenge parameters ({e}); {fix}") from None
    if not _inside(params.dataset, track_dir):
        raise ValueError(
            f"{path}: dataset {d['dataset']!r} lies outside {track_dir} (refused: a challenge's base "
            f"dataset lives in its track folder); {fix}"
        )
    return params


def is_synthetic_tree(data_dir: str, track: str) -> bool:
    """Whether ``<data_dir>/<track>`` holds a synthetic challenge's training secret (only a build writes one)."""
    return os.path.exists(os.path.join(data_dir, track, "solutions", SECRET_FILE))


def _json_fix(data_dir: str, track: str) -> str:
    """What brings back a usable challenge.json: a synthetic challenge's settings live only there; the
    real challenge needs none (MICO's constants)."""
    track_dir = os.path.join(data_dir, track)
    if is_synthetic_tree(data_dir, track):
        return (
            f"restore challenge.json from a copy, or delete {track_dir} and build the challenge again "
            "with download_files.py --synthetic (new private targets)"
        )
    return "delete it: the real challenge needs none (MICO's constants)"


def _model_counts(value) -> tuple[int, int, int] | None:
    """challenge.json's ``models`` ({"train": n, "dev": n, "final": n}) as a tuple; None if absent."""
    if value is None:
        return None
    counts = tuple(int(value[ph]) for ph in PHASES)
    if min(counts) < 0:
        raise ValueError(f"negative model count in {value}")
    return counts


def _origin(value) -> str | None:
    if value is not None and value not in SECRET_ORIGINS:
        raise ValueError(f"training_secret {value!r}: expected one of {', '.join(SECRET_ORIGINS)}")
    return value


def secret_warning(data_dir: str, track: str, params: ChallengeParams) -> str | None:
    """One line for a challenge built with the test secret (None otherwise): anyone holding that
    known secret regenerates its dev and final targets, so they are not private."""
    if params.private_targets:
        return None
    return (
        f"{challenge_json_path(data_dir, track)}: built with the test secret (${TEST_SECRET_ENV}), so its "
        "dev and final targets are not private (their ground truth follows from a known value); for "
        "tests only: build without it for private targets"
    )


def _inside(path: str, folder: str) -> bool:
    """Whether ``path`` names something strictly inside ``folder`` (by name: no ``..``, no absolute
    path elsewhere; links are the user's own)."""
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    return path != folder and os.path.commonpath([path, folder]) == folder


def save_params(data_dir: str, params: ChallengeParams) -> str:
    track_dir = os.path.join(data_dir, params.track)
    os.makedirs(track_dir, exist_ok=True)
    path = challenge_json_path(data_dir, params.track)
    write_text(path, json.dumps(params.to_json(track_dir), indent=2) + "\n")
    return path
