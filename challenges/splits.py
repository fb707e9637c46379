"""Seed-exact reconstruction of MICO's data splits.

MICO (``mico-competition/mico.py``, ``ChallengeDataset``) derives every model's data
from three seeds with torchcsprng's MT19937 generator and ``torch.utils.data.random_split``.
Neither torchcsprng nor torch 1.8 installs any more; this module reproduces the same
indices bit for bit.

``N = len(dataset)``, ``m = len_challenge``, ``n = len_training``; arrows are
``random_split`` calls, i.e. a prefix/suffix cut of ``randperm(size, generator)``::

    dataset (N) --seed_challenge--> challenge (2m) | rest (N - 2m)
    challenge   --seed_membership-> nonmember (m)  | member (m)
    rest        --seed_training---> training (n - m) | evaluation (N - n - m)

A model trains on ``member + training``. ``challenge`` keeps the permutation's order,
which is the order of ``solution.csv`` and ``prediction.csv``.

The generator is C++ ``std::mt19937`` seeded with the low 32 bits of the seed, and
CPU ``randperm(n)`` is the swap loop
``r = 0..n-1; for i in 0..n-2: z = next_u32() % (n - i); swap(r[i], r[i + z])``.
Modern torch's default CPU generator is the same engine with the same seeding and the same
loop, so :func:`randperm` uses it after checking it against known outputs of ``std::mt19937``
(:data:`_KNOWN`); if a future torch changes either, the slow pure-Python loop over numpy's
legacy MT19937 stream (the same algorithm) takes over.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

# randperm(n, seed)[:5] computed by a C++ program with std::mt19937 (tests/mt19937_ref.cpp).
_KNOWN = {
    (12345, 60000): [30690, 49102, 47981, 51624, 17952],
    (4294967295, 197324): [12871, 49412, 36880, 159355, 107144],
}


def _randperm_reference(n: int, seed: int) -> np.ndarray:
    """The swap loop in Python over numpy's legacy MT19937 stream (``std::mt19937`` seeding)."""
    bitgen = np.random.MT19937()
    bitgen._legacy_seeding(seed & 0xFFFFFFFF)
    draws = bitgen.random_raw(max(n - 1, 0)).astype(np.int64)  # raw 32-bit outputs
    z = (draws % np.arange(n, 1, -1, dtype=np.int64)).tolist()
    r = list(range(n))
    for i, zi in enumerate(z):
        j = i + zi
        r[i], r[j] = r[j], r[i]
    return np.asarray(r, dtype=np.int64)


def _randperm_torch(n: int, seed: int) -> np.ndarray:
    gen = torch.Generator(device="cpu").manual_seed(seed & 0xFFFFFFFF)
    return torch.randperm(n, generator=gen, dtype=torch.int64).numpy()


@functools.lru_cache(maxsize=1)
def _torch_is_exact() -> bool:
    return all(_randperm_torch(n, s)[:5].tolist() == v for (s, n), v in _KNOWN.items())


def randperm(n: int, seed: int) -> np.ndarray:
    """torchcsprng-MT19937 ``randperm(n)`` for ``seed``, as int64 numpy array."""
    if _torch_is_exact():
        return _randperm_torch(n, seed)
    return _randperm_reference(n, seed)


@dataclass(frozen=True)
class Splits:
    """Dataset indices (int64) of one model's splits; ``None`` where the seed is unknown."""

    challenge: np.ndarray
    rest: np.ndarray
    member: np.ndarray | None = None
    nonmember: np.ndarray | None = None
    training: np.ndarray | None = None
    evaluation: np.ndarray | None = None

    def solutions(self) -> np.ndarray:
        """0/1 membership labels aligned with ``challenge`` (the order of solution.csv)."""
        if self.member is None:
            raise ValueError("seed_membership is unknown: no solutions for this model")
        return np.isin(self.challenge, self.member).astype(np.int64)

    def train_indices(self) -> np.ndarray:
        """Everything the model was trained on: ``member ++ training``."""
        if self.member is None or self.training is None:
            raise ValueError("seed_training and seed_membership are needed for the training set")
        return np.concatenate([self.member, self.training])


def reconstruct(
    n_points: int,
    len_training: int,
    len_challenge: int,
    seed_challenge: int,
    seed_training: int | None = None,
    seed_membership: int | None = None,
) -> Splits:
    """Rebuild MICO's splits of a dataset of ``n_points`` from a model's seeds."""
    m = len_challenge
    if not 0 < 2 * m <= n_points or not m <= len_training <= n_points - m:
        raise ValueError(
            f"inconsistent sizes: n_points={n_points}, len_training={len_training}, len_challenge={len_challenge}"
        )
    perm = randperm(n_points, seed_challenge)
    challenge, rest = perm[: 2 * m], perm[2 * m :]
    training = evaluation = member = nonmember = None
    if seed_training is not None:
        p = randperm(n_points - 2 * m, seed_training)
        training, evaluation = rest[p[: len_training - m]], rest[p[len_training - m :]]
    if seed_membership is not None:
        p = randperm(2 * m, seed_membership)
        nonmember, member = challenge[p[:m]], challenge[p[m:]]
    return Splits(challenge, rest, member, nonmember, training, evaluation)


def membership_matrix(n_points: int, splits: list[Splits]) -> np.ndarray:
    """Boolean (models x n_points) matrix: True where the point is in that model's training set."""
    out = np.zeros((len(splits), n_points), dtype=bool)
    for k, s in enumerate(splits):
        out[k, s.train_indices()] = True
    return out


# The MICO runner-up's run_lira_mia.py hard-codes this for both tracks (purchase100's real value is
# 150,000).
RUNNER_UP_LEN_TRAINING = 50_000


def runner_up_train_positions(
    n_points: int,
    len_challenge: int,
    seed_training: int,
    seed_membership: int,
    len_training: int = RUNNER_UP_LEN_TRAINING,
) -> np.ndarray:
    """What the MICO runner-up took for a train model's training set, in its order (int64).

    Its run_lira_mia.py stores ``member.indices + training.indices`` of MICO's
    ``ChallengeDataset``. Those are ``Subset`` indices *into their parent subsets*: positions
    ``0..2m-1`` inside ``challenge`` and ``0..N-2m-1`` inside ``rest``, not dataset indices. It
    then tests a challenge point's dataset index against that list. So this returns

        randperm(2m, seed_membership)[m:] ++ randperm(N - 2m, seed_training)[:len_training - m]

    (no ``seed_challenge``: the positions do not depend on it), duplicates kept, as the Python
    list was.

    ``len_training`` larger than ``N - m`` (the hard-coded 50,000 on a small synthetic
    challenge): ``random_split(rest, [len_training - m, N - len_training - m])`` does not fail,
    since the lengths still sum to ``N - 2m``; torch slices the permutation with
    ``indices[0 : len_training - m]`` and ``indices[len_training - m : N - 2m]``, so ``training``
    takes every position of ``rest`` and ``evaluation`` is empty. The slice here clamps the same
    way. Then every point below ``N - 2m`` is "IN" for every shadow.
    """
    m = len_challenge
    if not 0 < 2 * m <= n_points or len_training < m:
        raise ValueError(
            f"inconsistent sizes: n_points={n_points}, len_training={len_training}, len_challenge={len_challenge}"
        )
    member = randperm(2 * m, seed_membership)[m:]
    training = randperm(n_points - 2 * m, seed_training)[: len_training - m]
    return np.concatenate([member, training])


def runner_up_membership(points: np.ndarray, train_positions: list[np.ndarray]) -> np.ndarray:
    """Boolean (shadows x len(points)): the runner-up's ``cp in train_set`` for each dataset index.

    ``points``: dataset indices (e.g. a scenario's sorted challenge-point pool);
    ``train_positions``: one :func:`runner_up_train_positions` array per shadow.
    """
    points = np.asarray(points, dtype=np.int64)
    out = np.zeros((len(train_positions), len(points)), dtype=bool)
    for s, positions in enumerate(train_positions):
        out[s] = np.isin(points, positions)
    return out
