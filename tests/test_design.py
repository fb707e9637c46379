"""Designed (balanced) shadow training sets and their explicit membership files."""

import os

import numpy as np
import pytest

from challenges.membership import CHECKSUM, TRAINING_SET, MembershipError, read_training_set, write_training_set
from production.design import _identity, balanced_design, in_count, pool_membership, requested_in_count


@pytest.mark.parametrize("K,m", [(2, 1), (4, 2), (16, 8), (16, 11), (6, 5)])
def test_pool_membership_exact_counts(K, m):
    member = pool_membership(997, K, m, np.random.default_rng(K * m))
    assert (member.sum(axis=0) == m).all()  # every point IN for exactly m shadows
    rows = member.sum(axis=1)
    assert rows.max() - rows.min() <= 1 and rows.sum() == 997 * m  # every shadow as many pool points


def test_pool_membership_is_random():
    a = pool_membership(2000, 8, 4, np.random.default_rng(0))
    # two shadows share about half their pool points (not the same half, as a cyclic design would)
    overlap = (a[0] & a[1]).sum() / a[0].sum()
    assert 0.35 < overlap < 0.65


@pytest.mark.parametrize(
    "N,LT,n_pool,K,f_min",
    [(1200, 700, 975, 4, 0.5), (10_000, 5_000, 3_800, 16, 0.5), (60_000, 50_000, 29_200, 16, 0.66)],
)
def test_balanced_design(N, LT, n_pool, K, f_min):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, N)
    pool = rng.choice(N, n_pool, replace=False)
    d = balanced_design(labels, np.concatenate([pool, pool[:5]]), LT, K, seed=3)  # duplicates allowed
    assert np.array_equal(d.pool, np.sort(pool))
    member = np.stack([np.isin(d.pool, s) for s in d.train_sets])
    assert (member.sum(axis=0) == d.in_count).all()
    assert all(len(s) == LT and len(np.unique(s)) == LT and s.min() >= 0 and s.max() < N for s in d.train_sets)
    assert d.fraction >= f_min and (f_min > 0.5) == (d.fraction > 0.5)  # cifar10-like: smallest f that fits
    # class balance: each set's class counts follow the dataset's frequencies closely
    freq = np.bincount(labels, minlength=10) / N
    for s in d.train_sets:
        assert np.abs(np.bincount(labels[s], minlength=10) / LT - freq).max() < 0.02
    again = balanced_design(labels, pool, LT, K, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(d.train_sets, again.train_sets))


def test_design_refuses_what_cannot_fit():
    with pytest.raises(ValueError, match="--n must be a multiple of 2"):
        balanced_design(np.zeros(100, dtype=int), np.arange(10), 50, 3)
    with pytest.raises(ValueError, match="no balanced design"):
        in_count(n_pool=900, n_outside=10, len_training=950, n_shadows=4)


@pytest.mark.parametrize(
    "K,fraction,m", [(2, 0.5, 1), (8, 0.5, 4), (4, 0.75, 3), (8, 0.75, 6), (25, 0.76, 19), (3, 1 / 3, 1), (10, 0.7, 7)]
)
def test_requested_share(K, fraction, m):
    assert requested_in_count(K, fraction) == m


@pytest.mark.parametrize(
    "K,fraction,message",
    [
        (2, 0.75, "--n 2 at --fraction 0.75: --n must be a multiple of 4"),  # was m = K: no OUT shadows
        (4, 0.9, "--n must be a multiple of 10"),  # was m = K
        (6, 0.75, "--n must be a multiple of 4"),  # was quietly 4 of 6 = 0.667
        (4, 0.9999, "no OUT"),  # the nearest share is 1
        (4, 0.0001, "no OUT"),  # ... or 0
    ],
)
def test_degenerate_or_inexact_shares_are_refused(K, fraction, message):
    with pytest.raises(ValueError, match=message) as e:
        requested_in_count(K, fraction)
    assert "\n" not in str(e.value) and "--fraction" in str(e.value)


def test_a_design_never_puts_every_point_in_every_shadow():
    """cifar10-like: the pool is half the dataset, so 1 of 2 cannot reach LEN_TRAINING; m = K would, and is refused."""
    with pytest.raises(ValueError, match="no balanced design of 2"):
        in_count(n_pool=29_200, n_outside=30_800, len_training=50_000, n_shadows=2)
    assert 0 < in_count(n_pool=29_200, n_outside=30_800, len_training=50_000, n_shadows=16) < 16


def test_training_set_file_round_trip_and_errors(tmp_path):
    idx = np.array([9, 2, 5, 7])
    write_training_set(str(tmp_path), idx)
    assert np.array_equal(read_training_set(str(tmp_path), 10, 4), np.sort(idx))
    assert sorted(os.listdir(tmp_path)) == sorted([CHECKSUM, TRAINING_SET])
    with pytest.raises(MembershipError, match="expected 5"):
        read_training_set(str(tmp_path), 10, 5)
    with pytest.raises(MembershipError, match=r"in \[0, 8\)"):
        read_training_set(str(tmp_path), 8, 4)
    data = (tmp_path / TRAINING_SET).read_bytes()
    (tmp_path / TRAINING_SET).write_bytes(data[:-8])
    with pytest.raises(MembershipError, match="sha256") as e:
        read_training_set(str(tmp_path), 10, 4)
    assert str(tmp_path / TRAINING_SET) in str(e.value) and "\n" not in str(e.value)
    os.remove(tmp_path / CHECKSUM)
    with pytest.raises(MembershipError, match="missing"):
        read_training_set(str(tmp_path), 10, 4)
    with pytest.raises(ValueError, match="repeat"):
        write_training_set(str(tmp_path), [1, 1, 2])


def test_half_designs_are_nested_pairs():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 10, 3000)
    pool = rng.choice(3000, 900, replace=False)
    big, small = (balanced_design(labels, pool, 1500, K, seed=[7, 1]) for K in (8, 4))
    assert big.group == 2 and all(np.array_equal(a, b) for a, b in zip(big.train_sets[:4], small.train_sets))
    member = np.stack([np.isin(big.pool, s) for s in big.train_sets])
    assert (member[0::2] != member[1::2]).all()  # complementary pairs on the pool


def test_three_quarter_designs_grow_in_groups_of_four():
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 10, 3000)
    pool = rng.choice(3000, 600, replace=False)
    big, small = (balanced_design(labels, pool, 2200, K, fraction=0.75, seed=[7, 2]) for K in (16, 8))
    assert (big.group, big.in_count, small.in_count) == (4, 12, 6)
    assert all(np.array_equal(a, b) for a, b in zip(big.train_sets[:8], small.train_sets))
    member = np.stack([np.isin(big.pool, s) for s in big.train_sets])
    assert (member.reshape(4, 4, -1).sum(axis=1) == 3).all()  # every point IN for 3 of each group of 4
    assert all(len(s) == 2200 for s in big.train_sets)
    odd = balanced_design(labels, pool, 2200, 10, fraction=0.7, seed=1)  # m = 7 of 10: one group
    assert odd.group == 10 and (np.stack([np.isin(odd.pool, s) for s in odd.train_sets]).sum(axis=0) == 7).all()
    twice = balanced_design(labels, pool, 2200, 20, fraction=0.7, seed=1)  # 14 of 20: two groups of 10
    assert twice.group == 10 and all(np.array_equal(a, b) for a, b in zip(twice.train_sets, odd.train_sets))
    # what design.json records: the same for a design and its growth (one group of 4, then two)
    one = balanced_design(labels, pool, 2200, 4, fraction=0.75, seed=[7, 2])
    assert one.group == 4 and _identity(one, 7) == _identity(big, 7) != _identity(odd, 7)


def test_shadows_train_pool_first_in_orders_of_their_own():
    """MICO's order for a designed shadow: its pool-IN points first (as a target's members), then
    the filler, each in the shadow's own order (not sorted, not shared between shadows)."""
    rng = np.random.default_rng(8)
    labels = rng.integers(0, 10, 3000)
    pool = rng.choice(3000, 900, replace=False)
    d = balanced_design(labels, pool, 1500, 4, seed=[7, 1])
    heads = []
    for s in d.train_sets:
        n_in = int(np.isin(s, d.pool).sum())
        assert np.isin(s[:n_in], d.pool).all() and not np.isin(s[n_in:], d.pool).any()  # pool first
        assert (np.diff(s[:n_in]) < 0).any() and (np.diff(s[n_in:]) < 0).any()  # neither part sorted
        heads.append(s[:n_in])
    # two shadows sharing pool points see them at unrelated positions
    common = np.intersect1d(heads[0], heads[2])
    pos = [[int(np.flatnonzero(h == v)[0]) for v in common] for h in (heads[0], heads[2])]
    assert len(common) > 100 and abs(np.corrcoef(*pos)[0, 1]) < 0.2
