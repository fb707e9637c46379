"""Designed shadow training sets: every challenge point IN for exactly the same number of shadows.

MICO's train models draw their training sets at random, so for a challenge point only about 24%
(purchase100: 1 - LEN_TRAINING/N) or 17% (cifar10) of them are OUT, and OUT statistics rest on
about 20 models. A balanced design fixes that (as in the LiRA reference code, which keeps each
point for exactly ``pkeep * num_experiments`` shadows):

- the pool is the union of the scenario's challenge points (targets' and train models');
- each pool point is IN for exactly ``m`` of the ``K`` shadows, the ``m`` drawn uniformly per point
  (random apart from the counts: every shadow gets the same number of pool points), ``f = m / K`` = 1/2
  by default, never 0 or 1, with K a multiple of f's denominator (:func:`requested_in_count`); where
  the pool-IN points plus everything outside the pool cannot reach LEN_TRAINING (cifar10: the pool
  holds about half the dataset), the nearest ``m`` that can;
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
from fractions import Fraction

import numpy as np

from challenges import layout
from challenges.datasets import BaseDataset
from challenges.fileio import locked, write_text
from challenges.scenario import challenge_pool
from challenges.tracks import EXTRA_SHADOW_FILE, SCENARIO_SUFFIXES, SHADOW_PHASE, ChallengeParams, scenario_suffix
from models.train import Recipe, recipe_for
from production import recipes
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


MAX_GROUP = 1000  # --fraction is read as the nearest share p/q with q <= MAX_GROUP


def requested_in_count(n_shadows: int, fraction: float) -> int:
    """m = ``fraction * K``: IN shadows per pool point that ``--fraction`` asks of ``--n K`` shadows.

    The fraction is the share p/q (q <= MAX_GROUP) nearest to it, and K must be a multiple of q
    (the group: 2 at 1/2, 4 at 3/4), so that every pool point can be IN for exactly p of every q.
    ValueError (naming --n and --fraction) if it is not, or if every shadow would hold every pool
    point or none (no OUT or no IN statistics).
    """
    share = Fraction(fraction).limit_denominator(MAX_GROUP)
    p, q = share.numerator, share.denominator
    if not 0 < p < q:
        raise ValueError(
            f"--fraction {fraction:g}: each challenge point would be IN for {p} of every {q} shadows, "
            "which leaves no OUT (or no IN) shadows; choose a share strictly between 0 and 1, e.g. 0.5"
        )
    if n_shadows < q or n_shadows % q:
        ok = ", ".join(f"--n {q * j}" for j in range(1, 4))
        raise ValueError(
            f"--n {n_shadows} at --fraction {fraction:g}: --n must be a multiple of {q} (each challenge "
            f"point is IN for {p} of every group of {q} shadows), e.g. {ok}"
        )
    return n_shadows // q * p


def in_count(n_pool: int, n_outside: int, len_training: int, n_shadows: int, fraction: float = 0.5) -> int:
    """m: IN shadows per pool point. :func:`requested_in_count` unless the shadows could then not
    reach (or would exceed) ``len_training``; then the nearest m in 1 .. K - 1 that works (never
    0 or K: a design needs IN and OUT shadows at every point). ValueError if none does.

    Every shadow receives floor or ceil of ``n_pool * m / K`` pool points (:func:`pool_membership`)
    and needs the rest of ``len_training`` from the ``n_outside`` other points.
    """
    K = n_shadows
    want = requested_in_count(K, fraction)
    for m in sorted(range(1, K), key=lambda m: (abs(m - want), -m)):
        if _fits(n_pool, n_outside, len_training, K, m):
            return m
    raise ValueError(
        f"no balanced design of {K} shadows fits: {n_pool} challenge points, {n_outside} other points, "
        f"training sets of {len_training}; use more shadows or --design mico"
    )


def _fits(n_pool: int, n_outside: int, len_training: int, K: int, m: int) -> bool:
    """Whether K shadows with every pool point IN for m of them can each train on exactly
    ``len_training`` points: floor or ceil of ``n_pool * m / K`` pool points, the rest from outside."""
    lo, hi = (n_pool * m) // K, -(-(n_pool * m) // K)
    return hi <= len_training and lo >= len_training - n_outside


def kept_in_count(n_pool: int, n_outside: int, len_training: int, n_shadows: int, share: tuple[int, int]) -> int:
    """m for ``n_shadows`` shadows growing a design whose points are IN for ``a`` of every group of
    ``g`` (``share`` = (a, g)): the design's own share, whatever K; ValueError (naming --n) if K is
    not a multiple of g."""
    a, g = share
    if n_shadows < g or n_shadows % g:
        raise ValueError(
            f"--n {n_shadows}: the scenario's design puts each challenge point IN for {a} of every {g} "
            f"shadows, so it grows in groups of {g}: --n must be a multiple of {g}, e.g. --n {g * -(-n_shadows // g)}"
        )
    m = n_shadows // g * a
    if not _fits(n_pool, n_outside, len_training, n_shadows, m):  # the same share fits at every K
        raise ValueError(f"the design's share {a}/{g} cannot give training sets of {len_training}")
    return m


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
    labels: np.ndarray,
    pool: np.ndarray,
    len_training: int,
    n_shadows: int,
    *,
    fraction: float = 0.5,
    seed=0,
    share: tuple[int, int] | None = None,
) -> Design:
    """The training sets of ``n_shadows`` designed shadows (a multiple of the group of ``fraction``).

    labels: int [N] class of every dataset point; pool: dataset indices of the challenge points
    (any order, duplicates allowed); fraction: the wanted share of IN shadows per pool point
    (:func:`in_count`); share: (a, g) of a design being grown, which keeps its share whatever K
    (:func:`kept_in_count`; ``fraction`` is then not read); seed: int or sequence of ints.
    Deterministic. The shadows come in groups of g = K / gcd(m, K), each pool point IN for
    exactly a = m g / K of every group, drawn group by group: with f = 1/2 complementary pairs
    (each point IN for exactly one of each pair), with f = 3/4 groups of 4 (IN for 3). The first j
    groups of a design are exactly the design of j g shadows, so a design can grow by whole
    groups; when m and K share no factor it is one group.
    """
    key = [int(v) for v in np.atleast_1d(seed)]
    labels = np.asarray(labels)
    N = len(labels)
    pool = np.unique(np.asarray(pool, dtype=np.int64))
    outside = np.setdiff1d(np.arange(N, dtype=np.int64), pool, assume_unique=True)
    if share is None:
        m = in_count(len(pool), len(outside), len_training, n_shadows, fraction)
    else:
        m = kept_in_count(len(pool), len(outside), len_training, n_shadows, share)
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


def _pool_sha256(pool: np.ndarray) -> str:
    """The identity's fingerprint of a design's challenge points (sorted unique int64 indices)."""
    return hashlib.sha256(pool.tobytes()).hexdigest()


def _identity(design: Design, seed: int) -> dict:
    """What makes two designed shadows parts of one design (``shadow/design.json`` and each folder's).
    Not the number of shadows: the first j groups of every design with this identity are the same
    shadows, so a design grows by whole groups."""
    return {
        "design": "balanced",
        "order": "pool-first",
        "seed": seed,
        "group": design.group,
        "in_per_group": design.in_count * design.group // design.n_shadows,
        "pool_sha256": _pool_sha256(design.pool),
    }


def _describe(identity: dict) -> str:
    """'seed 0, IN for 1 of every 2 shadows' (the flags that made it: --seed, --fraction)."""
    seed, a, g = (identity.get(k) for k in ("seed", "in_per_group", "group"))
    return f"seed {seed}, IN for {a} of every {g} shadows"


def _refusal(where: str, have: dict, want: dict, shadow_dir: str) -> layout.LayoutError:
    """The one-line refusal to add shadows of design ``want`` where design ``have`` is: its flags, or a fresh start."""
    try:
        flags = f"--seed {int(have['seed'])} --fraction {int(have['in_per_group']) / int(have['group']):g}"
        flags += f" and --n a multiple of {int(have['group'])}"
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        flags = "its --seed and --fraction"
    pool = "" if have.get("pool_sha256") == want["pool_sha256"] else "; other challenge points"
    return layout.LayoutError(
        f"{where}: belongs to another design ({_describe(have)}{pool}; this run: {_describe(want)}); "
        f"rerun with {flags}, or delete {shadow_dir} to start a new design"
    )


def _read_identity(path: str) -> dict | None:
    """A design.json's identity; None if absent. LayoutError if unreadable."""
    return recipes.read_record(path, f"unreadable design identity; delete {os.path.dirname(path)} and rerun")


ASKED = "fraction_asked"  # the --fraction that made a design: kept beside its identity, not part of it


def _core(identity: dict) -> dict:
    """The identity without the --fraction that asked for it (two requests may give one design)."""
    return {k: v for k, v in identity.items() if k != ASKED}


def kept_share(data_dir: str, track: str, scenario: str, seed: int, pool: np.ndarray, fraction: float):
    """(a, g) of the scenario's design when this request grows it, else None: same seed and challenge
    points, and ``fraction`` is what made it (or is its share). A design whose share was moved to fit
    LEN_TRAINING (at f = 1/2 on CIFAR-10 and the faithful preset) keeps that share as it grows: the
    nearest share that fits depends on K (5/8 at 128 shadows, 159/256 at 256), and K must not change
    the design."""
    have = _read_identity(os.path.join(data_dir, track, scenario, SHADOW_PHASE, DESIGN_FILE))
    if have is None or have.get("seed") != seed:
        return None
    if have.get("pool_sha256") != _pool_sha256(pool):
        return None
    try:
        a, g = int(have["in_per_group"]), int(have["group"])
    except (KeyError, TypeError, ValueError):
        return None
    asked = Fraction(fraction).limit_denominator(MAX_GROUP)
    if have.get(ASKED) == fraction or asked == Fraction(a, g):
        return a, g
    return None


def claim_design(data_dir: str, track: str, scenario: str, want: dict, fraction: float | None = None) -> None:
    """Make ``want`` the scenario's design, or refuse if another design is there.

    The identity is checked and ``<scenario>/shadow/design.json`` written under ``shadow/.design.lock``,
    before any model is trained: of two runs with different designs started together, the second
    to get the lock is refused, so a shadow folder never mixes designs. Folders from before the
    scenario-level file carry their own design.json, checked too. A new design records the
    ``fraction`` that asked for it (:func:`kept_share`).
    """
    shadow_dir = os.path.join(data_dir, track, scenario, SHADOW_PHASE)
    path = os.path.join(shadow_dir, DESIGN_FILE)
    os.makedirs(shadow_dir, exist_ok=True)
    default = recipes.default_record(track, scenario)  # what a design.json without a recipe trained with
    with locked(os.path.join(shadow_dir, ".design.lock")):
        have = _read_identity(path)
        if have is not None:
            _check_same(path, {recipes.RECIPE_KEY: default} | have, want, shadow_dir)
        for md in layout.models(data_dir, track, scenario, (SHADOW_PHASE,)):
            folder = os.path.join(md.path, DESIGN_FILE)
            theirs = _read_identity(folder)
            if theirs is None:
                raise layout.LayoutError(f"{folder}: missing; delete {md.path} and rerun")
            _check_same(folder, {recipes.RECIPE_KEY: default} | theirs, want, shadow_dir)
        if have is None:
            write_text(path, json.dumps(want | ({} if fraction is None else {ASKED: fraction}), indent=2) + "\n")


def _check_same(where: str, have: dict, want: dict, shadow_dir: str) -> None:
    """Refuse adding shadows of ``want`` to the design ``have`` describes (at ``where``): another design,
    or the same design trained with another recipe (naming the flag that differs)."""
    key = recipes.RECIPE_KEY
    if _core(have) == want:
        return
    if {k: v for k, v in _core(have).items() if k != key} != {k: v for k, v in want.items() if k != key}:
        raise _refusal(where, have, want, shadow_dir)
    raise recipes.refusal(where, have[key], want[key], f"delete {shadow_dir} to start a new design")


def designed_jobs(
    data_dir: str,
    track: str,
    scenario: str,
    params: ChallengeParams,
    dataset: BaseDataset,
    n: int,
    seed: int,
    fraction: float = 0.5,
    recipe: Recipe | None = None,
) -> tuple[list[Job], Design]:
    """The jobs of a balanced design of ``n`` shadows for ``scenario`` (``<scenario>/shadow/model_<k>``),
    each challenge point IN for ``fraction`` of them (:func:`in_count`), or the scenario's design grown
    with its own share (:func:`kept_share`). The design becomes the scenario's
    (:func:`claim_design`); another design already there is refused."""
    pool = challenge_pool(data_dir, track, scenario, params, len(dataset))
    si = SCENARIO_SUFFIXES.index(scenario_suffix(scenario))
    share = kept_share(data_dir, track, scenario, seed, np.unique(pool.astype(np.int64)), fraction)
    design = balanced_design(
        dataset.y, pool, params.len_training, n, fraction=fraction, seed=[seed, 200 + si], share=share
    )
    recipe = recipe or recipe_for(track, scenario_suffix(scenario))
    want = _identity(design, seed) | {recipes.RECIPE_KEY: recipes.record(recipe)}
    claim_design(data_dir, track, scenario, want, fraction)
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


def check_extra_ids(data_dir: str, track: str, scenario: str, first_id: int, n: int) -> None:
    """Refuse extra ids ``first_id .. first_id + n - 1`` that the challenge's own models use (a train
    model that is not an extra shadow, or any dev or final model): they would count as done extras,
    or give a shadow a target's id."""
    own = [md for md in layout.models(data_dir, track, scenario, ("train", "dev", "final")) if not md.extra]
    clash = [md for md in own if first_id <= md.model_id < first_id + n]
    if clash:
        top = max(md.model_id for md in own)
        raise ValueError(
            f"--first-id {first_id}: ids {first_id}-{first_id + n - 1} include the challenge's own "
            f"{clash[0].phase}/{clash[0].name} ({len(clash)} in all, in {os.path.join(data_dir, track, scenario)}); "
            f"choose a --first-id above {top}"
        )


def mico_jobs(
    data_dir: str,
    track: str,
    scenario: str,
    params: ChallengeParams,
    n_points: int,
    n: int,
    seed: int,
    first_id: int,
    recipe: Recipe | None = None,
) -> list[Job]:
    """The jobs of ``n`` extra MICO-random shadows: new train models ``first_id ..`` whose seeds come
    from (``seed``, scenario, id), revealed like MICO's train models and marked as extra shadows.
    Ids of the challenge's own models are refused (:func:`check_extra_ids`); so are extras of
    another ``recipe`` (None: MICO's) than the scenario's extras (:func:`production.recipes.claim_extras`)."""
    check_extra_ids(data_dir, track, scenario, first_id, n)
    recipe = recipe or recipe_for(track, scenario_suffix(scenario))
    recipes.claim_extras(data_dir, track, scenario, recipe)
    recipe_text = json.dumps(recipes.record(recipe), indent=2) + "\n"
    si = SCENARIO_SUFFIXES.index(scenario_suffix(scenario))
    jobs = []
    for model_id in range(first_id, first_id + n):
        md = layout.ModelDir(data_dir, track, scenario, "train", model_id)
        job = seeded_job(md, params, n_points, model_seeds(seed, 100 + si, model_id), reveal=True)
        job.files[EXTRA_SHADOW_FILE] = f"train_shadows.py --design mico --seed {seed}\n"
        job.files[recipes.RECIPE_FILE] = recipe_text
        jobs.append(job)
    return jobs
