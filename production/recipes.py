"""The training recipe a scenario's extra shadows share, recorded and checked.

Shadows trained with another recipe (other epochs, learning rate, batch size, optimiser or DP
parameters) are other shadows: mixed into one design, or into one scenario's MICO-random extras,
they give the attacks IN/OUT statistics of two populations (8 shadows at 5 epochs and 2 at 30:
held-out accuracy 0.32 against 0.54). So the recipe (every field of :class:`models.train.Recipe`)
is recorded where the shadows are, and a run that would grow them with another is refused by name:

- a balanced design: in ``shadow/design.json`` and each shadow's copy of it (``recipe``);
- MICO-random extras: in ``<scenario>/extra_shadows.json``, claimed under ``<scenario>/.extra_shadows.lock``
  before anything trains (so of two concurrent runs with other recipes the second is refused), and
  in each extra's folder (``recipe.json``).

A record written before recipes were recorded (a design.json without ``recipe``, extras without
``recipe.json``) is read as MICO's recipe for the scenario, the only one train_shadows.py used
unless --epochs, --batch-size or --lr was given; such an extra gets its ``recipe.json`` when a run
of that recipe claims the scenario's extras.
"""

from __future__ import annotations

import dataclasses
import json
import os

from challenges import layout
from challenges.fileio import locked, write_text
from challenges.tracks import scenario_suffix
from models.train import Recipe, recipe_for

RECIPE_KEY = "recipe"  # in design.json
RECIPE_FILE = "recipe.json"  # in each MICO-random extra's folder
EXTRAS_FILE = "extra_shadows.json"  # <scenario>/: the recipe of the scenario's MICO-random extras
FLAGS = {"epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr"}  # the fields train_shadows.py sets


def record(recipe: Recipe) -> dict:
    """The recipe as JSON: every field, by name."""
    return dataclasses.asdict(recipe)


def default_record(track: str, scenario: str) -> dict:
    """What a record written before recipes were recorded stands for: MICO's recipe for the scenario."""
    return record(recipe_for(track, scenario_suffix(scenario)))


def differences(have: dict, want: dict) -> list[str]:
    """Each field where ``want`` differs from ``have``, as '--epochs 5 (this run: 30)' (the flag that
    sets it; the field's name for those no flag sets, such as the optimiser or the DP parameters)."""
    return [f"{FLAGS.get(k, k)} {have.get(k)} (this run: {v})" for k, v in want.items() if have.get(k) != v]


def refusal(where: str, have: dict, want: dict, fix: str) -> layout.LayoutError:
    return layout.LayoutError(
        f"{where}: trained with another recipe ({', '.join(differences(have, want))}); rerun with its flags, or {fix}"
    )


def read_record(path: str, fix: str) -> dict | None:
    """A JSON object record (a recipe, a design's identity); None if absent; a LayoutError naming the
    file and ``fix`` if it is unreadable or not an object."""
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            have = json.load(f)
    except (OSError, ValueError):
        have = None
    if not isinstance(have, dict):
        raise layout.LayoutError(f"{path}: {fix}")
    return have


def _read(path: str) -> dict | None:
    """A recipe record; None if absent; LayoutError if unreadable."""
    return read_record(path, "unreadable recipe record; delete it and the shadows it describes, and rerun")


def claim_extras(data_dir: str, track: str, scenario: str, recipe: Recipe) -> None:
    """Make ``recipe`` the one of the scenario's MICO-random extras, or refuse (naming the flag and the
    file) if extras of another recipe are there: under a lock, before anything trains."""
    scenario_dir = os.path.join(data_dir, track, scenario)
    want = record(recipe)
    fix = "delete the extra shadows (the train/ folders holding an extra_shadow file) to start anew"
    path = os.path.join(scenario_dir, EXTRAS_FILE)
    with locked(os.path.join(scenario_dir, ".extra_shadows.lock")):
        have = _read(path)
        if have is not None and have != want:
            raise refusal(path, have, want, fix)
        for md in layout.models(data_dir, track, scenario, ("train",)):
            if not md.extra:
                continue
            folder = os.path.join(md.path, RECIPE_FILE)
            theirs = _read(folder)
            if theirs is None:  # an extra from before recipes were recorded: MICO's recipe
                if default_record(track, scenario) != want:
                    raise refusal(md.path, default_record(track, scenario), want, fix)
                write_text(folder, json.dumps(want, indent=2) + "\n")  # recorded now, so the folder is complete
            elif theirs != want:
                raise refusal(folder, theirs, want, fix)
        if have is None:
            write_text(path, json.dumps(want, indent=2) + "\n")
