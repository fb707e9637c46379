import json
import os
import shutil
import subprocess
import time

import numpy as np
import pytest

from challenges import splits
from challenges.splits import membership_matrix, randperm, reconstruct

HERE = os.path.dirname(__file__)
VECTORS = json.load(open(os.path.join(HERE, "data", "split_vectors.json")))["cases"]


def _check(case, s):
    assert s.challenge.tolist() == case["challenge"]
    assert s.member.tolist() == case["member"]
    assert s.training[:20].tolist() == case["training_head"]
    assert s.evaluation[:20].tolist() == case["evaluation_head"]


@pytest.mark.parametrize("case", VECTORS, ids=lambda c: f"N{c['n_points']}-{c['seed_challenge']}")
def test_committed_vectors(case):
    s = reconstruct(
        case["n_points"],
        case["len_training"],
        case["len_challenge"],
        case["seed_challenge"],
        case["seed_training"],
        case["seed_membership"],
    )
    _check(case, s)


def test_against_compiled_std_mt19937(tmp_path):
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    exe = tmp_path / "ref"
    subprocess.run([cxx, "-O2", "-o", str(exe), os.path.join(HERE, "mt19937_ref.cpp")], check=True)
    rng = np.random.default_rng(7)
    for n, lt, m in [(60000, 50000, 100), (197324, 150000, 100), (1000, 700, 10), (7, 5, 1)]:
        sc, st, sm = (int(v) for v in rng.integers(0, 2**63, 3, dtype=np.uint64))
        out = subprocess.run(
            [str(exe), str(n), str(lt), str(m), str(sc), str(st), str(sm), "20"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        ch, mem, tr, ev = ([int(v) for v in line.split(",")] for line in out)
        _check(dict(challenge=ch, member=mem, training_head=tr, evaluation_head=ev), reconstruct(n, lt, m, sc, st, sm))


def test_fast_path_matches_reference_loop():
    for n, seed in [(1, 3), (2, 5), (1000, 2**40 + 17), (59800, 99)]:
        assert np.array_equal(randperm(n, seed), splits._randperm_reference(n, seed))


def test_fallback_used_when_torch_disagrees(monkeypatch):
    splits._torch_is_exact.cache_clear()
    monkeypatch.setattr(splits, "_KNOWN", {(1, 10): [9, 9, 9, 9, 9]})
    try:
        assert not splits._torch_is_exact()
        assert np.array_equal(randperm(500, 11), splits._randperm_reference(500, 11))
    finally:
        splits._torch_is_exact.cache_clear()


def test_split_structure():
    s = reconstruct(5000, 3500, 100, 1, 2, 3)
    assert len(s.challenge) == 200 and len(s.member) == len(s.nonmember) == 100
    assert len(s.training) == 3400 and len(s.evaluation) == 5000 - 3500 - 100
    allidx = np.concatenate([s.challenge, s.training, s.evaluation])
    assert np.array_equal(np.sort(allidx), np.arange(5000))
    assert set(s.member) | set(s.nonmember) == set(s.challenge)
    sol = s.solutions()
    assert sol.sum() == 100 and np.array_equal(
        s.challenge[sol == 1], s.member[np.argsort([list(s.challenge).index(v) for v in s.member])]
    )
    assert len(s.train_indices()) == 3500
    for arr in (s.challenge, s.member, s.training):
        assert arr.dtype == np.int64


def test_missing_seeds():
    s = reconstruct(1000, 700, 10, 5)
    assert s.member is None and s.training is None
    with pytest.raises(ValueError):
        s.solutions()
    with pytest.raises(ValueError):
        reconstruct(100, 700, 10, 5)


def test_membership_matrix_is_fast_and_right():
    seeds = [(i, 10_000 + i, 20_000 + i) for i in range(100)]
    t = time.perf_counter()
    mat = membership_matrix(197324, [reconstruct(197324, 150000, 100, *sd) for sd in seeds])
    assert time.perf_counter() - t < 20  # seconds, not minutes (about 0.5 s here)
    assert mat.shape == (100, 197324) and mat.dtype == bool
    assert (mat.sum(1) == 150000).all()
    s = reconstruct(197324, 150000, 100, *seeds[3])
    assert mat[3, s.member].all() and not mat[3, s.nonmember].any() and not mat[3, s.evaluation].any()
