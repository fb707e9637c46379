"""A scenario made of arrays only (no files): for the auto and stacked attacks' tests."""

import numpy as np

from challenges.layout import ModelDir
from challenges.scenario import ScenarioData


def fake_scenario(
    n_train=8,
    n_dev=2,
    n_final=2,
    P=60,
    m=6,
    effect=1.5,
    seed=0,
    scenario="purchase100_inf",
    first_effect=0.0,
    first=True,
    noise=1.0,
):
    """ScenarioData of ``n_train`` train models (the shadows) then dev and final models.

    Each model trains on a random half of the P pool points; a member's phi is raised by
    ``effect`` over the point's difficulty, plus ``first_effect`` for its m challenge members (trained
    first, as in MICO: attacks.order), and noise of sd ``noise``; each target has m members and m
    non-members among its 2m challenge points, its solutions consistent with its membership.
    ``first``: the shadows' ``shadow_first`` (their challenge members) is given; else None.
    """
    rng = np.random.default_rng(seed)
    phases = ["train"] * n_train + ["dev"] * n_dev + ["final"] * n_final
    n = len(phases)
    member = np.zeros((n, P), dtype=bool)
    challenge = np.zeros((n, 2 * m), dtype=np.int64)
    for i in range(n):
        member[i, rng.permutation(P)[: P // 2]] = True
        ins = rng.choice(np.flatnonzero(member[i]), m, replace=False)
        outs = rng.choice(np.flatnonzero(~member[i]), m, replace=False)
        challenge[i] = rng.permutation(np.concatenate([ins, outs]))
    difficulty = rng.normal(2.0, 1.5, P)
    firsts = np.zeros((n, P), dtype=bool)
    firsts[np.arange(n)[:, None], challenge] = np.take_along_axis(member, challenge, axis=1)
    phi = difficulty + effect * member + first_effect * firsts + rng.normal(0, 1.0, (n, P)) * noise
    mentr = -0.5 * phi + rng.normal(0, 0.3, (n, P))
    models = [ModelDir("/nonexistent", "purchase100", scenario, ph, i) for i, ph in enumerate(phases)]
    return ScenarioData(
        scenario=scenario,
        models=models,
        points=np.arange(P),
        fields={"phi": phi[:, :, None].astype(np.float32), "mentr": mentr[:, :, None].astype(np.float32)},
        challenge=challenge,
        shadow_in=member[:n_train].copy(),
        solutions=np.take_along_axis(member, challenge, axis=1).astype(np.int8),
        runner_up_in=member[:n_train].copy(),
        shadow_first=firsts[:n_train].copy() if first else None,
    )


def permute_membership(data, row, seed=1):
    """A copy of ``data`` with model ``row``'s membership shuffled over the pool (its solutions and,
    for a shadow, its first-trained members follow); its signals are left as they are."""
    rng = np.random.default_rng(seed)
    shadow_in, solutions = data.shadow_in.copy(), data.solutions.copy()
    shadow_in[row] = rng.permutation(shadow_in[row])
    solutions[row] = shadow_in[row, data.challenge[row]]
    if solutions[row].min() == solutions[row].max():  # keep both classes on its challenge points
        solutions[row, 0] = 1 - solutions[row, 0]
        shadow_in[row, data.challenge[row, 0]] = bool(solutions[row, 0])
    shadow_first = data.shadow_first
    if shadow_first is not None and row < len(shadow_first):
        shadow_first = shadow_first.copy()
        shadow_first[row] = False
        shadow_first[row, data.challenge[row]] = solutions[row] == 1
    return type(data)(**{**data.__dict__, "shadow_in": shadow_in, "solutions": solutions, "shadow_first": shadow_first})
