"""Leaving shadow models out: the scenario an attacker with fewer shadows would see.

The attacks leave at most one shadow out per target (``exclude``). Choosing an attack on half of
the train models (attacks.auto) and fitting a stacked model out of fold (attacks.stacked) need a
whole set left out, so that nothing about the held-out models (their signals as shadows, their
membership) enters the statistics the others are scored with.

A scenario here is anything shaped like ``challenges.scenario.ScenarioData`` (a dataclass with
``models``, ``fields``, ``challenge``, ``shadow_in``, ``solutions``, ``runner_up_in``, ``shadow_first``); it is read
only through those fields, so this package imports nothing outside ``attacks/``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

HELD_OUT = "held-out"  # phase given to a shadow model left out: attacked, never a shadow


def held_out(data, drop) -> tuple:
    """``(sub, new_row)``: ``data`` with the shadow rows ``drop`` no longer shadows.

    The kept shadows stay first and in order (train models before designed shadows, as the
    attacks expect); the dropped ones follow, their phase set to :data:`HELD_OUT`, then every
    other model. ``new_row`` (n_models,) maps a row of ``data`` to its row in ``sub``. Nothing is
    copied but the reordered arrays, a cached field only when an attack first reads it
    (:class:`Reordered`); ``data`` is left as it is.
    """
    n_models, n_shadows = len(data.models), len(data.shadow_in)
    drop = np.unique(np.asarray(drop, dtype=np.int64))
    if drop.size and (drop.min() < 0 or drop.max() >= n_shadows):
        raise ValueError(f"rows to hold out must be shadow rows in [0, {n_shadows}), got {drop.tolist()}")
    is_dropped = np.zeros(n_models, dtype=bool)
    is_dropped[drop] = True
    shadows = np.arange(n_shadows)
    kept = shadows[~is_dropped[:n_shadows]]
    order = np.concatenate([kept, drop, np.arange(n_shadows, n_models)]).astype(np.int64)
    new_row = np.empty(n_models, dtype=np.int64)
    new_row[order] = np.arange(n_models)
    models = [dataclasses.replace(data.models[r], phase=HELD_OUT) if is_dropped[r] else data.models[r] for r in order]
    runner_up_in = data.runner_up_in
    if runner_up_in is not None:  # one row per train model, the first len(runner_up_in) rows
        runner_up_in = runner_up_in[kept[kept < len(runner_up_in)]]
    sub = dataclasses.replace(
        data,
        models=models,
        fields=Reordered(data.fields, order),
        challenge=data.challenge[order],
        shadow_in=data.shadow_in[kept],
        solutions=data.solutions[order],
        runner_up_in=runner_up_in,
        shadow_first=None if data.shadow_first is None else data.shadow_first[kept],
    )
    return sub, new_row


class Reordered(Mapping):
    """``fields`` ({name: array [n_models, ...]}) with their rows in ``order``, each field reordered
    when first read, then kept. A held-out scenario so copies only what its attacks read: the
    stacked attack's folds never copy the logits, which only the classifier and the runner-up's
    LiRA read (at MICO's cifar10 size, 18 query views, 4 GiB a copy; bench/bench_memory.py)."""

    def __init__(self, fields, order: np.ndarray):
        self._fields, self._order, self._done = fields, order, {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._done:
            self._done[name] = self._fields[name][self._order]
        return self._done[name]

    def __contains__(self, name) -> bool:  # Mapping's own would read, so copy, the field
        return name in self._fields

    def __iter__(self):
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)


def split_rows(rows, n_parts: int, seed) -> list[np.ndarray]:
    """``rows`` shuffled with ``seed`` and cut into ``n_parts`` near-equal sorted parts."""
    rows = np.asarray(rows, dtype=np.int64)
    perm = np.random.default_rng(seed).permutation(rows)
    return [np.sort(perm[i::n_parts]) for i in range(n_parts)]
