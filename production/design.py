"""Designed shadow training sets: every challenge point IN for exactly the same number of shadows.

MICO's train models draw their training sets at random, so for a challenge point only about 24%
(purchase100: 1 - LEN_TRAINING/N) or 17% (cifar10) of them are OUT, and OUT statistics rest on
about 20 models. A balanced design fixes that (as in the LiRA reference code, which keeps each
point for exactly ``pkeep * num_experiments`` shadows):

- the pool is the union of the scenario's challenge points (targets' and train models');
- each pool point is IN for exactly ``m`` of the ``K`` shadows, the ``m`` drawn uniformly per point
  (random apart from the counts: every shadow gets the same number of pool points), ``f = m / K`` = 1/2
  by default; where the pool-IN points plus everything outside the pool cannot reach
  LEN_TRAINING (cifar10: the pool holds about half the dataset), the smallest larger ``m`` that can;
- every shadow's training set then has exactly LEN_TRAINING points: its pool-IN points plus filler
  drawn without replacement from outside the pool, stratified by class so that the class counts of
  the whole set follow the dataset's class frequencies as far as the filler allows.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Design:
    pool: np.ndarray       # int64 [P] sorted dataset indices of the challenge points
    in_count: int          # m: shadows each pool point is IN for
    n_shadows: int         # K
    train_sets: list       # K sorted int64 arrays of exactly len_training dataset indices

    @property
    def fraction(self) -> float:
        return self.in_count / self.n_shadows


def in_count(n_pool: int, n_outside: int, len_training: int, n_shadows: int, fraction: float = 0.5) -> int:
    """m: IN shadows per pool point. ``round(fraction * K)`` unless the shadows could then not reach
    (or would exceed) ``len_training``; then the nearest m that works. ValueError if none does.

    Every shadow receives floor or ceil of ``n_pool * m / K`` pool points (:func:`pool_membership`)
    and needs the rest of ``len_training`` from the ``n_outside`` other points.
    """
    K = n_shadows

    def fits(m: int) -> bool:
        lo, hi = (n_pool * m) // K, -(-(n_pool * m) // K)
        return hi <= len_training and lo >= len_training - n_outside

    want = min(max(int(round(fraction * K)), 1), K)
    for m in sorted(range(1, K + 1), key=lambda m: (abs(m - want), -m)):
        if fits(m):
            return m
    raise ValueError(f"no balanced design of {K} shadows fits: {n_pool} challenge points, {n_outside} other points, "
                     f"training sets of {len_training}; use more shadows or --design mico")


def pool_membership(n_pool: int, n_shadows: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """(K, P) bool with exactly ``m`` True per column (point) and floor/ceil(P m / K) per row (shadow).

    Start from LiRA's reference design (rank K uniform keys per point, keep the ``m`` smallest: a
    uniformly random m-subset per point), then even out the row sums by moving single memberships
    from the fullest to the emptiest shadow at random points where only the first is IN. Every move
    keeps the column sums, so the memberships stay random apart from the two counts.
    """
    K, P = n_shadows, n_pool
    member = rng.random((K, P)).argsort(axis=0).argsort(axis=0) < m
    counts = member.sum(axis=1)
    want = np.full(K, (P * m) // K)
    want[np.argsort(-counts, kind="stable")[:(P * m) % K]] += 1  # the fullest keep the extra points
    while True:
        gap = counts - want
        o, u = int(gap.argmax()), int(gap.argmin())
        d = int(min(gap[o], -gap[u]))
        if d <= 0:
            return member
        cols = rng.choice(np.flatnonzero(member[o] & ~member[u]), size=d, replace=False)
        member[o, cols], member[u, cols] = False, True
        counts[o] -= d
        counts[u] += d


def _filler(labels: np.ndarray, outside: np.ndarray, chosen_labels: np.ndarray, n_fill: int,
            freq: np.ndarray, len_training: int, rng: np.random.Generator) -> np.ndarray:
    """``n_fill`` indices from ``outside`` (no repeats), by class: each class gets what it lacks for
    ``len_training * freq`` given ``chosen_labels``, within what the class has outside the pool; the
    remainder, uniformly from the points not yet taken."""
    n_classes = len(freq)
    lack = np.maximum(np.floor(len_training * freq) - np.bincount(chosen_labels, minlength=n_classes), 0)
    out_labels = labels[outside]
    picks = []
    for c in np.flatnonzero(lack):
        cand = outside[out_labels == c]
        k = int(min(lack[c], len(cand), n_fill - sum(len(p) for p in picks)))
        if k > 0:
            picks.append(rng.choice(cand, size=k, replace=False))
    taken = np.concatenate(picks) if picks else np.zeros(0, dtype=np.int64)
    rest = n_fill - len(taken)
    if rest > 0:
        free = np.setdiff1d(outside, taken, assume_unique=True)
        taken = np.concatenate([taken, rng.choice(free, size=rest, replace=False)])
    return taken


def balanced_design(labels: np.ndarray, pool: np.ndarray, len_training: int, n_shadows: int, *,
                    fraction: float = 0.5, seed=0) -> Design:
    """The training sets of ``n_shadows`` (even) designed shadows.

    labels: int [N] class of every dataset point; pool: dataset indices of the challenge points
    (any order, duplicates allowed). Deterministic in ``seed``; shadow k's set does not depend on
    how many shadows are trained in one run, only on (seed, n_shadows).
    """
    if n_shadows < 2 or n_shadows % 2:
        raise ValueError(f"a balanced design needs an even number of shadows >= 2, got {n_shadows}")
    labels = np.asarray(labels)
    N = len(labels)
    pool = np.unique(np.asarray(pool, dtype=np.int64))
    outside = np.setdiff1d(np.arange(N, dtype=np.int64), pool, assume_unique=True)
    m = in_count(len(pool), len(outside), len_training, n_shadows, fraction)
    rng = np.random.default_rng(seed)
    member = pool_membership(len(pool), n_shadows, m, rng)
    freq = np.bincount(labels, minlength=int(labels.max()) + 1) / N
    sets = []
    for k in range(n_shadows):
        chosen = pool[member[k]]
        fill = _filler(labels, outside, labels[chosen], len_training - len(chosen), freq, len_training, rng)
        sets.append(np.sort(np.concatenate([chosen, fill])))
    return Design(pool, m, n_shadows, sets)
