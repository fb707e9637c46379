"""Extra shadows keep one recipe: a design (design.json) or a scenario's MICO-random extras
(extra_shadows.json, each folder's recipe.json) grown with other epochs, learning rate or batch size
is refused by name, before anything trains; records from before recipes count as MICO's recipe."""

import json
import os

import pytest

import train_shadows
from challenges import layout
from challenges.datasets import load_dataset
from challenges.tracks import load_params
from models.train import recipe_for
from production import recipes
from production.design import DESIGN_FILE, designed_jobs, mico_jobs
from tests.conftest import run_script

TRACK, SCENARIO = "purchase100", "purchase100_inf"


def _shadows(data_dir, *extra):
    argv = ["--challenge", TRACK, "--data-dir", data_dir, "--scenario", SCENARIO, "--device", "cpu", *extra]
    return argv


@pytest.mark.parametrize("design", ["balanced", "mico"])
def test_growing_shadows_with_another_recipe_is_refused_by_name(small_copy, capsys, design):
    """`--n 2 --epochs 1`, then `--n 4` with other epochs gave 2 shadows of each recipe, silently."""
    data_dir, _ = small_copy
    base = _shadows(data_dir, "--design", design)
    code, _ = run_script(train_shadows.main, "train_shadows.py", [*base, "--n", "2", "--epochs", "1"], capsys)
    assert code == 0
    record = (
        os.path.join(data_dir, TRACK, SCENARIO, "shadow", DESIGN_FILE)
        if design == "balanced"
        else os.path.join(data_dir, TRACK, SCENARIO, recipes.EXTRAS_FILE)
    )
    for extra, named in [
        (["--epochs", "2"], "--epochs 1 (this run: 2)"),
        (["--epochs", "1", "--lr", "0.01"], "--lr 0.001 (this run: 0.01)"),
        (["--epochs", "1", "--batch-size", "64"], "--batch-size 512 (this run: 64)"),
    ]:
        code, lines = run_script(train_shadows.main, "train_shadows.py", [*base, "--n", "4", *extra], capsys)
        assert code == 1
        (line,) = [ln for ln in lines if ln.startswith("train_shadows.py:")]
        assert line.startswith(f"train_shadows.py: {record}: trained with another recipe ({named}")
    phase = "shadow" if design == "balanced" else "train"
    mds = [md for md in layout.models(data_dir, TRACK, SCENARIO, (phase,)) if md.extra]
    assert len(mds) == 2  # nothing trained by the refused runs
    code, _ = run_script(train_shadows.main, "train_shadows.py", [*base, "--n", "4", "--epochs", "1"], capsys)
    assert code == 0
    mds = [md for md in layout.models(data_dir, TRACK, SCENARIO, (phase,)) if md.extra]
    assert len(mds) == 4
    for md in mds:  # every shadow records the recipe it trained with
        name = DESIGN_FILE if design == "balanced" else recipes.RECIPE_FILE
        kept = json.load(open(os.path.join(md.path, name)))
        kept = kept[recipes.RECIPE_KEY] if design == "balanced" else kept
        assert kept["epochs"] == 1 and kept["lr"] == 0.001 and kept["optimizer"] == "adam"


def test_mico_extras_are_claimed_before_anything_trains(small_copy):
    """Two runs started together with other recipes: the second to take the lock is refused although
    the first has placed no folder yet (extra_shadows.json is written at planning)."""
    data_dir, _ = small_copy
    params = load_params(data_dir, TRACK)
    a, b = recipe_for(TRACK, "inf", epochs=3), recipe_for(TRACK, "inf", epochs=4)
    mico_jobs(data_dir, TRACK, SCENARIO, params, params.n_points, 2, 0, 1000, recipe=a)  # run A planned
    with pytest.raises(layout.LayoutError, match=r"--epochs 3 \(this run: 4\)"):
        mico_jobs(data_dir, TRACK, SCENARIO, params, params.n_points, 2, 1, 2000, recipe=b)  # run B
    mico_jobs(data_dir, TRACK, SCENARIO, params, params.n_points, 4, 0, 1000, recipe=a)  # A grows


def _forget_recipes(data_dir, phase):
    """What a tree trained before recipes were recorded looks like."""
    for path in (
        os.path.join(data_dir, TRACK, SCENARIO, "shadow", DESIGN_FILE),
        *(os.path.join(md.path, DESIGN_FILE) for md in layout.models(data_dir, TRACK, SCENARIO, (phase,))),
    ):
        if os.path.exists(path) and phase == "shadow":
            d = json.load(open(path))
            del d[recipes.RECIPE_KEY]
            open(path, "w").write(json.dumps(d))
    for md in layout.models(data_dir, TRACK, SCENARIO, (phase,)):
        if os.path.exists(os.path.join(md.path, recipes.RECIPE_FILE)):
            os.remove(os.path.join(md.path, recipes.RECIPE_FILE))
    extras = os.path.join(data_dir, TRACK, SCENARIO, recipes.EXTRAS_FILE)
    if os.path.exists(extras):
        os.remove(extras)


def test_records_from_before_recipes_count_as_micos_recipe(small_copy, capsys):
    data_dir, _ = small_copy
    for design in ("balanced", "mico"):
        argv = _shadows(data_dir, "--design", design, "--n", "2", "--epochs", "1")
        assert run_script(train_shadows.main, "train_shadows.py", argv, capsys)[0] == 0
    _forget_recipes(data_dir, "shadow")
    _forget_recipes(data_dir, "train")
    params = load_params(data_dir, TRACK)
    dataset = load_dataset(params)
    mico = recipe_for(TRACK, "inf")
    # Another recipe than MICO's is refused, naming MICO's epochs; MICO's own grows them.
    with pytest.raises(layout.LayoutError, match=rf"--epochs {mico.epochs} \(this run: 1\)"):
        designed_jobs(data_dir, TRACK, SCENARIO, params, dataset, 4, 0, 0.5, recipe=recipe_for(TRACK, "inf", epochs=1))
    assert len(designed_jobs(data_dir, TRACK, SCENARIO, params, dataset, 4, 0, 0.5)[0]) == 4
    with pytest.raises(layout.LayoutError, match=rf"--epochs {mico.epochs} \(this run: 1\)"):
        mico_jobs(
            data_dir, TRACK, SCENARIO, params, params.n_points, 2, 0, 1000, recipe=recipe_for(TRACK, "inf", epochs=1)
        )
    jobs = mico_jobs(data_dir, TRACK, SCENARIO, params, params.n_points, 2, 0, 1000)
    # The old folders now record MICO's recipe, so they count as complete, not to be retrained.
    for job in jobs:
        assert json.load(open(os.path.join(job.md.path, recipes.RECIPE_FILE))) == recipes.record(mico)
