"""A scenario made of arrays only (no files): for the auto and stacked attacks' tests."""

import numpy as np

from challenges.layout import ModelDir
from challenges.scenario import ScenarioData


def fake_scenario(n_train=8, n_dev=2, n_final=2, P=60, m=6, effect=1.5, seed=0, scenario="purchase100_inf"):
    """ScenarioData of ``n_train`` train models (the shadows) then dev and final models.

    Each model trains on a random half of the P pool points; a member's phi is raised by
    ``effect`` over the point's difficulty; each target has m members and m non-members among its
    2m challenge points, its solutions consistent with its membership.
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
    phi = difficulty + effect * member + rng.normal(0, 1.0, (n, P))
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
    )


def permute_membership(data, row, seed=1):
    """A copy of ``data`` with model ``row``'s membership shuffled over the pool (its solutions
    follow); its signals are left as they are."""
    rng = np.random.default_rng(seed)
    shadow_in, solutions = data.shadow_in.copy(), data.solutions.copy()
    shadow_in[row] = rng.permutation(shadow_in[row])
    solutions[row] = shadow_in[row, data.challenge[row]]
    if solutions[row].min() == solutions[row].max():  # keep both classes on its challenge points
        solutions[row, 0] = 1 - solutions[row, 0]
        shadow_in[row, data.challenge[row, 0]] = bool(solutions[row, 0])
    return type(data)(**{**data.__dict__, "shadow_in": shadow_in, "solutions": solutions})
