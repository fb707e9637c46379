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
  the whole set follow the dataset's class frequencies as far as the filler allows;
- it trains in MICO's order: its pool-IN points first (as a MICO model's members), then the
  filler, each shuffled once by the shadow's own generator (so no two shadows share positions).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass

import numpy as np

from challenges import layout
from challenges.datasets import BaseDataset
from challenges.scenario import challenge_pool
from challenges.tracks import EXTRA_SHADOW_FILE, SCENARIO_SUFFIXES, SHADOW_PHASE, ChallengeParams, scenario_suffix
from production.folders import Job, model_seeds, seeded_job

DESIGN_FILE = "design.json"
EVAL_POINTS = 10_000  # held-out points per designed shadow for its accuracy file


@dataclass(frozen=True)
class Design:
    pool: np.ndarray  # int64 [P] sorted dataset indices of the challenge points
    in_count: int  # m: shadows each pool point is IN for
    n_shadows: int  # K
    train_sets: list  # K int64 arrays of exactly len_training dataset indices, in training order (pool first)
    group: int  # g = K / gcd(m, K) shadows per group (2 at f = 1/2: complementary pairs); designs nest by group

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
    raise ValueError(
        f"no balanced design of {K} shadows fits: {n_pool} challenge points, {n_outside} other points, "
        f"training sets of {len_training}; use more shadows or --design mico"
    )


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
    want[np.argsort(-counts, kind="stable")[: (P * m) % K]] += 1  # the fullest keep the extra points
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


def _filler(
    labels: np.ndarray,
    outside: np.ndarray,
    chosen_labels: np.ndarray,
    n_fill: int,
    freq: np.ndarray,
    len_training: int,
    rng: np.random.Generator,
) -> np.ndarray:
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


def balanced_design(
    labels: np.ndarray, pool: np.ndarray, len_training: int, n_shadows: int, *, fraction: float = 0.5, seed=0
) -> Design:
    """The training sets of ``n_shadows`` (even) designed shadows.

    labels: int [N] class of every dataset point; pool: dataset indices of the challenge points
    (any order, duplicates allowed); fraction: the wanted share of IN shadows per pool point
    (:func:`in_count`); seed: int or sequence of ints. Deterministic. The shadows come in groups of
    g = K / gcd(m, K), each pool point IN for exactly a = m g / K of every group, drawn group by
    group: with f = 1/2 complementary pairs (each point IN for exactly one of each pair), with
    f = 3/4 groups of 4 (IN for 3). The first j groups of a design are exactly the design of j g
    shadows, so a design can grow by whole groups; when m and K share no factor it is one group.
    """
    if n_shadows < 2 or n_shadows % 2:
        raise ValueError(f"a balanced design needs an even number of shadows >= 2, got {n_shadows}")
    key = [int(v) for v in np.atleast_1d(seed)]
    labels = np.asarray(labels)
    N = len(labels)
    pool = np.unique(np.asarray(pool, dtype=np.int64))
    outside = np.setdiff1d(np.arange(N, dtype=np.int64), pool, assume_unique=True)
    m = in_count(len(pool), len(outside), len_training, n_shadows, fraction)
    common = math.gcd(m, n_shadows)
    g, a = n_shadows // common, m // common
    member = np.concatenate(
        [pool_membership(len(pool), g, a, np.random.default_rng(key + [g, i])) for i in range(n_shadows // g)]
    )
    freq = np.bincount(labels, minlength=int(labels.max()) + 1) / N
    sets = []
    for k in range(n_shadows):
        chosen = pool[member[k]]
        fill = _filler(
            labels,
            outside,
            labels[chosen],
            len_training - len(chosen),
            freq,
            len_training,
            np.random.default_rng(key + [0, k]),
        )
        # MICO's order, as a target sees its members: the pool points first, then the filler, each
        # in an order of this shadow's own (not sorted: a shared order would give every shadow the
        # same position per point, a bias no MICO model has).
        order = np.random.default_rng(key + [1, k])
        sets.append(np.concatenate([order.permutation(chosen), order.permutation(fill)]))
    return Design(pool, m, n_shadows, sets, g)


def _identity(design: Design, seed: int) -> dict:
    """What makes two designed shadows parts of one design (written to each folder's design.json).
    Not the number of shadows: the first j groups of every design with this identity are the same
    shadows, so a design grows by whole groups."""
    return {
        "design": "balanced",
        "order": "pool-first",
        "seed": seed,
        "group": design.group,
        "in_per_group": design.in_count * design.group // design.n_shadows,
        "pool_sha256": hashlib.sha256(design.pool.tobytes()).hexdigest(),
    }


def _check_compatible(mds: list, want: dict) -> None:
    """Refuse to add shadows of another design (other seed, pool, group or IN count per group) beside existing ones."""
    for md in mds:
        path = os.path.join(md.path, DESIGN_FILE)
        try:
            with open(path) as f:
                have = json.load(f)
        except (OSError, ValueError):
            raise layout.LayoutError(f"{path}: missing or unreadable; delete {md.path} and rerun") from None
        if have != want:
            keys = [*want, *(k for k in have if k not in want)]
            diff = ", ".join(f"{k} {have.get(k)} (now {want.get(k)})" for k in keys if have.get(k) != want.get(k))
            raise layout.LayoutError(
                f"{md.path}: belongs to another design ({diff}); rerun with its --n/--seed, "
                f"or delete {os.path.dirname(md.path)} to start a new design"
            )


def designed_jobs(
    data_dir: str,
    track: str,
    scenario: str,
    params: ChallengeParams,
    dataset: BaseDataset,
    n: int,
    seed: int,
    fraction: float = 0.5,
) -> tuple[list[Job], Design]:
    """The jobs of a balanced design of ``n`` shadows for ``scenario`` (``<scenario>/shadow/model_<k>``),
    each challenge point IN for ``fraction`` of them (:func:`in_count`)."""
    pool = challenge_pool(data_dir, track, scenario, params, len(dataset))
    si = SCENARIO_SUFFIXES.index(scenario_suffix(scenario))
    design = balanced_design(dataset.y, pool, params.len_training, n, fraction=fraction, seed=[seed, 200 + si])
    want = _identity(design, seed)
    _check_compatible([md for md in layout.models(data_dir, track, scenario, (SHADOW_PHASE,))], want)
    text = json.dumps(want, indent=2) + "\n"
    jobs = []
    for k, train in enumerate(design.train_sets):
        md = layout.ModelDir(data_dir, track, scenario, SHADOW_PHASE, k)
        rest = np.setdiff1d(np.arange(len(dataset)), train, assume_unique=True)
        held_out = np.random.default_rng([seed, 300 + si, k]).choice(rest, min(EVAL_POINTS, len(rest)), replace=False)
        jobs.append(
            Job(md, train, np.sort(held_out), model_seeds(seed, 200 + si, k)[0], {DESIGN_FILE: text}, training_set=True)
        )
    return jobs, design


def mico_jobs(
    data_dir: str, track: str, scenario: str, params: ChallengeParams, n_points: int, n: int, seed: int, first_id: int
) -> list[Job]:
    """The jobs of ``n`` extra MICO-random shadows: new train models ``first_id ..`` whose seeds come
    from (``seed``, scenario, id), revealed like MICO's train models and marked as extra shadows."""
    si = SCENARIO_SUFFIXES.index(scenario_suffix(scenario))
    jobs = []
    for model_id in range(first_id, first_id + n):
        md = layout.ModelDir(data_dir, track, scenario, "train", model_id)
        job = seeded_job(md, params, n_points, model_seeds(seed, 100 + si, model_id), reveal=True)
        job.files[EXTRA_SHADOW_FILE] = f"train_shadows.py --design mico --seed {seed}\n"
        jobs.append(job)
    return jobs
