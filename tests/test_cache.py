"""The signal cache: checked against its model.pt on every read, corrupt files, unique temporary
names and the per-folder lock."""

import contextlib
import dataclasses
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import run_lira_mia
import save_preds
from attacks.options import AttackOptions
from attacks.rmia import rmia
from attacks.suite import COMPARE, make_attack, target_reads
from bench import bench_save_preds
from challenges import cache, evaluation, layout
from challenges.datasets import load_dataset, to_tensor
from challenges.fileio import atomic_path, locked, try_lock
from challenges.scenario import load_scenario, scenario_points
from challenges.tracks import load_params
from models import load_model
from models.query import query
from tests.conftest import run_script

TRACK, SCENARIO = "purchase100", "purchase100_inf"


def _save_preds(data_dir, cache_dir, *extra):
    return save_preds.main(
        ["--challenge", TRACK, "--data-dir", data_dir, "--cache-dir", cache_dir, "--device", "cpu", *extra]
    )


def _lira(data_dir, cache_dir, report_dir):
    return run_lira_mia.main(
        [
            "--challenge",
            TRACK,
            "--data-dir",
            data_dir,
            "--cache-dir",
            cache_dir,
            "--report-dir",
            str(report_dir),
            "--evaluate",
        ]
    )


def _models(data_dir):
    return layout.models(data_dir, TRACK, SCENARIO)


def _other_model_in_place(src: str, dst: str) -> None:
    """Overwrite ``dst`` with another model of the same architecture, keeping dst's size and mtime:
    what a rebuilt challenge or a replaced model looks like to a size+mtime check."""
    st = os.stat(dst)
    shutil.copyfile(src, dst)
    assert os.path.getsize(dst) == st.st_size
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.fixture
def cached_small(small_copy):
    data_dir, cache_dir = small_copy
    assert _save_preds(data_dir, cache_dir) == 0
    return data_dir, cache_dir


# ---------------------------------------------------------------------------------------------
# 1. A stale cache is never used
# ---------------------------------------------------------------------------------------------


def test_stale_cache_is_refused_by_run_lira_mia(cached_small, tmp_path):
    data_dir, cache_dir = cached_small
    mds = _models(data_dir)
    dev = next(md for md in mds if md.phase == "dev")
    shutil.copy2(mds[0].model_file, dev.model_file)  # cp -a: another model, its mtime kept
    with pytest.raises(cache.CacheError) as ei:
        _lira(data_dir, cache_dir, tmp_path)
    msg = str(ei.value)
    assert "\n" not in msg and cache.cache_file(cache_dir, dev) in msg and dev.model_file in msg
    assert "stale" in msg and "save_preds.py --challenge purchase100" in msg
    assert not any(os.path.exists(md.prediction_file) for md in mds)  # nothing from old models
    assert _save_preds(data_dir, cache_dir) == 0  # the fix the message names
    assert _lira(data_dir, cache_dir, tmp_path) == 0


def test_same_size_and_mtime_is_not_trusted(cached_small, tmp_path):
    data_dir, cache_dir = cached_small
    mds = _models(data_dir)
    target = mds[-1]
    before = cache.read(cache.cache_file(cache_dir, target))
    _other_model_in_place(mds[1].model_file, target.model_file)
    with pytest.raises(cache.CacheError, match="stale"):
        _lira(data_dir, cache_dir, tmp_path)
    assert _save_preds(data_dir, cache_dir) == 0
    after = cache.read(cache.cache_file(cache_dir, target))
    np.testing.assert_array_equal(after["phi"], cache.read(cache.cache_file(cache_dir, mds[1]))["phi"])
    assert not np.array_equal(after["phi"], before["phi"])
    assert str(after["model_sha256"]) == cache.sha256(mds[1].model_file)


def test_copied_tree_and_old_entries_are_reverified(cached_small, tmp_path, capsys):
    """A copy keeps the bytes but not the key: sha256 decides, and save_preds refreshes the stamp.
    An entry written before the key had inode and ctime is treated the same way."""
    data_dir, cache_dir = cached_small
    copy = str(tmp_path / "copy")
    shutil.copytree(data_dir, copy)  # copy2: size and mtime kept, inode and ctime new
    old = cache.cache_file(cache_dir, _models(copy)[0])
    entry = cache.read(old)
    del entry["model_inode"], entry["model_ctime_ns"]
    np.savez(old, **entry)
    assert _lira(copy, cache_dir, tmp_path) == 0
    capsys.readouterr()
    assert _save_preds(copy, cache_dir) == 0
    assert "0 model(s) queried, 6 already cached, 6 stamp(s) refreshed" in capsys.readouterr().out
    for md in _models(copy):
        e = cache.read(cache.cache_file(cache_dir, md))
        assert int(e["model_inode"]) == os.stat(md.model_file).st_ino
        assert int(e["model_ctime_ns"]) == os.stat(md.model_file).st_ctime_ns
    mtimes = [os.stat(cache.cache_file(cache_dir, md)).st_mtime_ns for md in _models(copy)]
    assert _save_preds(copy, cache_dir) == 0
    assert "0 model(s) queried, 6 already cached\n" in capsys.readouterr().out
    assert [os.stat(cache.cache_file(cache_dir, md)).st_mtime_ns for md in _models(copy)] == mtimes


# ---------------------------------------------------------------------------------------------
# 2. Corrupt cache files
# ---------------------------------------------------------------------------------------------


def _truncate(path):
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])  # the local zip header survives, the index does not


def _garble(path):
    data = bytearray(Path(path).read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(64)  # index intact, a member's bytes (and its CRC) wrong
    Path(path).write_bytes(bytes(data))


def _stamp_pair(path):
    """A readable file whose stamp is an array, not a scalar (int() of it raised TypeError)."""
    entry = cache.read(path)
    entry["model_size"] = np.array([entry["model_size"]] * 2)
    np.savez(path, **entry)


@pytest.mark.parametrize("damage", [_truncate, _garble, _stamp_pair])
def test_corrupt_cache_file(cached_small, tmp_path, damage, capsys):
    data_dir, cache_dir = cached_small
    md = _models(data_dir)[2]
    path = cache.cache_file(cache_dir, md)
    good = cache.read(path)
    damage(path)
    with pytest.raises(cache.CacheError) as ei:
        _lira(data_dir, cache_dir, tmp_path)
    msg = str(ei.value)
    assert path in msg and "corrupt" in msg and "missing" not in msg and "save_preds.py" in msg
    capsys.readouterr()
    assert _save_preds(data_dir, cache_dir) == 0  # treated as absent: recomputed
    assert "1 model(s) queried" in capsys.readouterr().out
    for k, v in good.items():
        np.testing.assert_array_equal(cache.read(path)[k], v)
    assert _lira(data_dir, cache_dir, tmp_path) == 0


# ---------------------------------------------------------------------------------------------
# 3. Unique temporary names, a lock, and runs asking for more (logits)
# ---------------------------------------------------------------------------------------------


def test_atomic_path_names_are_unique_and_cleaned(tmp_path):
    path = tmp_path / "f.npz"
    with atomic_path(str(path)) as a, atomic_path(str(path)) as b:
        assert a != b and os.path.dirname(a) != os.path.dirname(b)
        assert os.path.basename(a) == "f.npz" and not os.path.exists(a)  # np.savez keeps the name
        Path(a).write_text("a")
        Path(b).write_text("b")
    assert path.read_text() == "a" and os.listdir(tmp_path) == ["f.npz"]
    with pytest.raises(KeyboardInterrupt), atomic_path(str(path)) as c:
        Path(c).write_text("c")
        raise KeyboardInterrupt
    assert path.read_text() == "a" and os.listdir(tmp_path) == ["f.npz"]


def test_update_under_lock_rereads_and_satisfies_logits(cached_small):
    """A run that needs logits re-reads the entry under the lock and recomputes when the entry
    another run wrote has none; a run without that need reuses an entry with logits."""
    data_dir, cache_dir = cached_small
    md = _models(data_dir)[0]
    path = cache.cache_file(cache_dir, md)
    entry = cache.read(path)
    calls = []

    def compute(todo, keep_logits):
        calls.append((len(todo), keep_logits))
        n = len(todo)
        return {
            "phi": np.zeros((n, 1), np.float32),
            "mentr": np.zeros((n, 1), np.float32),
            "logits": np.zeros((n, 1, 100), np.float32),
        }

    union = entry["points"]
    assert cache.update(path, md.model_file, union, ["orig"], False, compute) == "current" and calls == []
    assert cache.update(path, md.model_file, union, ["orig"], True, compute) == "computed"
    assert calls == [(len(union), True)] and "logits" in cache.read(path)
    assert cache.update(path, md.model_file, union, ["orig"], False, compute) == "current"
    assert len(calls) == 1


@contextlib.contextmanager
def _read_only(folder: str):
    """``folder`` made read-only: by its modes, or for root, whom modes do not stop, by a read-only
    bind mount onto itself."""
    if os.geteuid() != 0:
        subprocess.run(["chmod", "-R", "a-w", folder], check=True)
        try:
            yield
        finally:
            subprocess.run(["chmod", "-R", "u+w", folder], check=True)
        return
    if subprocess.run(["mount", "--bind", folder, folder], capture_output=True, check=False).returncode:
        pytest.skip("cannot bind-mount here (needs mount permission)")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", folder], capture_output=True, check=True)
        yield
    finally:
        subprocess.run(["umount", folder], check=False)


def test_read_only_cache_with_nothing_to_do(cached_small, capsys):
    """A current cache needs no lock file: a run on a read-only copy succeeds; one that must write
    fails in one line naming the lock it could not create."""
    data_dir, cache_dir = cached_small
    argv = ["--challenge", TRACK, "--data-dir", data_dir, "--cache-dir", cache_dir, "--device", "cpu"]
    with _read_only(cache_dir):
        code, _ = run_script(save_preds.main, "save_preds.py", argv, capsys)
        assert code == 0
        code, lines = run_script(save_preds.main, "save_preds.py", [*argv, "--save-logits"], capsys)
    assert code != 0 and not any("Traceback" in line for line in lines)
    assert lines[-1].startswith("save_preds.py: ") and "/.locks/" in lines[-1] and ": cannot write" in lines[-1]
    assert "make its folder writable" in lines[-1]


def test_lock_excludes_other_processes(tmp_path):
    lock = str(tmp_path / ".lock")
    probe = (
        "import fcntl, sys; f = open(sys.argv[1], 'a')\n"
        "try:\n    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n    sys.exit(3)"
    )
    with locked(lock):
        assert subprocess.run([sys.executable, "-c", probe, lock], check=False).returncode == 3
    assert subprocess.run([sys.executable, "-c", probe, lock], check=False).returncode == 0


def test_signals_still_match_a_direct_forward(cached_small):
    """The refactored save_preds loop still stores what the model computes."""
    data_dir, cache_dir = cached_small
    md = _models(data_dir)[-1]
    entry = cache.read(cache.cache_file(cache_dir, md))
    ds = load_dataset(load_params(data_dir, TRACK))
    pts = entry["points"][:40]
    with torch.no_grad():
        logits = load_model(TRACK, md.model_file)(to_tensor(TRACK, ds.x[pts])).double()
    p = torch.softmax(logits, 1)[torch.arange(40), torch.from_numpy(ds.y[pts])]
    np.testing.assert_allclose(entry["phi"][:40, 0], torch.log(p / (1 - p)).numpy(), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# 4. Shards, and dev/final models queried only on the points the attacks read
# ---------------------------------------------------------------------------------------------


def _arrays(cache_dir, mds):
    """Every array of every model's cache file (the stamps included: same model files)."""
    return [cache.read(cache.cache_file(cache_dir, md)) for md in mds]


def _assert_same(got, want):
    for g, w in zip(got, want):
        assert sorted(g) == sorted(w)
        for k in w:
            np.testing.assert_array_equal(g[k], w[k], err_msg=k)


def test_save_preds_shards_split_the_models_and_equal_one_run(small_copy, tmp_path, capsys):
    """Like train_shadows.py --shard: shard 1/2 caches only models 1, 3, 5 of the scenario, shard
    0/2 the others, and together they leave the cache a single run leaves."""
    data_dir, cache_dir = small_copy
    mds = _models(data_dir)
    assert _save_preds(data_dir, cache_dir, "--shard", "1/2") == 0
    present = [os.path.exists(cache.cache_file(cache_dir, md)) for md in mds]
    assert present == [i % 2 == 1 for i in range(len(mds))]
    assert _save_preds(data_dir, cache_dir, "--shard", "0/2") == 0
    capsys.readouterr()
    assert _save_preds(data_dir, cache_dir) == 0
    assert f"0 model(s) queried, {len(mds)} already cached\n" in capsys.readouterr().out
    single = str(tmp_path / "single")
    assert _save_preds(data_dir, single) == 0
    _assert_same(_arrays(cache_dir, mds), _arrays(single, mds))


@pytest.mark.parametrize("bad", [["--shard", "2/2"], ["--shard", "1"], ["--rmia-population", "-1"]])
def test_save_preds_bad_shard_or_population_is_a_usage_error(small_challenge, tmp_path, bad, capsys):
    with pytest.raises(SystemExit) as e:
        _save_preds(small_challenge, str(tmp_path / "cache"), *bad)
    assert e.value.code == 2 and bad[0] in capsys.readouterr().err


def _full_cache(data_dir, cache_dir):
    """Every model on the whole union, as save_preds.py cached dev and final models before."""
    params = load_params(data_dir, TRACK)
    ds = load_dataset(params)
    mds, _, union = scenario_points(data_dir, TRACK, SCENARIO, params, len(ds))
    x, y = to_tensor(TRACK, ds.x[union]), torch.from_numpy(ds.y[union])
    for md in mds:

        def compute(todo, keep_logits, md=md):
            rows = torch.from_numpy(np.searchsorted(union, todo))
            out = query(load_model(TRACK, md.model_file), x[rows], y[rows], ["orig"], keep_logits=keep_logits)
            return {k: v.numpy() for k, v in out.items()}

        cache.update(cache.cache_file(cache_dir, md), md.model_file, union, ["orig"], False, compute)
    return union


def _scores(data_dir, cache_dir, runs):
    """{label: scores on dev, final and train (leave-one-out)} of every attack of ``runs``."""
    params = load_params(data_dir, TRACK)
    data = load_scenario(
        data_dir,
        cache_dir,
        TRACK,
        SCENARIO,
        params,
        params.n_points,
        ("phi", "mentr"),
        runner_up=True,
        reads=target_reads([o for _, o in runs]),
    )
    return {label: evaluation.attack_scenario(data, make_attack(o), True) for label, o in runs}


def test_dev_final_cache_only_what_the_attacks_read(small_copy, tmp_path):
    """With a population smaller than the pool, dev and final files hold their own challenge
    points and RMIA's population only, train files the union; every attack of the comparison
    scores exactly as from a cache holding every point of every model."""
    data_dir, cache_dir = small_copy
    n_pop = "40"
    assert _save_preds(data_dir, cache_dir, "--rmia-population", n_pop, "--seed", "5") == 0
    full = str(tmp_path / "full")
    union = _full_cache(data_dir, full)
    params = load_params(data_dir, TRACK)
    for md in _models(data_dir):
        held = cache.read(cache.cache_file(cache_dir, md))["points"]
        if md.phase == "train":
            np.testing.assert_array_equal(held, union)
        else:
            own = md.splits(params, params.n_points).challenge
            assert np.isin(own, held).all() and len(own) < len(held) <= len(own) + int(n_pop) < len(union)
    runs = [(label, dataclasses.replace(o, rmia_population=int(n_pop), seed=5)) for label, o in COMPARE]
    got, want = _scores(data_dir, cache_dir, runs), _scores(data_dir, full, runs)
    for label, _ in runs:
        assert sorted(got[label]) == sorted(want[label]) == ["dev", "final", "train"], label
        for phase, (rows, scores) in want[label].items():
            np.testing.assert_array_equal(got[label][phase][0], rows)
            # exact but for the classifier's last bit: ExtraTrees sums its trees over 2 threads
            np.testing.assert_allclose(got[label][phase][1], scores, rtol=0, atol=1e-12, err_msg=f"{label} {phase}")


def test_a_later_population_is_added_incrementally(small_copy, tmp_path, capsys):
    """A cache of own points only refuses RMIA with a one-line error naming the fix; the fix
    queries only the dev and final models and only on the points they lack."""
    data_dir, cache_dir = small_copy
    assert _save_preds(data_dir, cache_dir, "--rmia-population", "0") == 0
    mds = _models(data_dir)
    params = load_params(data_dir, TRACK)
    before = _arrays(cache_dir, mds)
    for md, entry in zip(mds, before):
        if md.phase != "train":
            np.testing.assert_array_equal(entry["points"], np.sort(md.splits(params, params.n_points).challenge))
    assert _lira(data_dir, cache_dir, tmp_path) == 0  # LiRA reads nothing else
    rmia = ["--attack", "rmia", "--rmia-population", "30", "--seed", "2"]
    with pytest.raises(cache.CacheError) as ei:
        run_lira_mia.main(["--challenge", TRACK, "--data-dir", data_dir, "--cache-dir", cache_dir, *rmia])
    msg = str(ei.value)
    assert "\n" not in msg and "/dev/" in msg and "save_preds.py" in msg and "--rmia-population" in msg
    calls = []
    update = cache.update

    def counting(path, model_file, points, *args):
        entry = cache.read(path)
        calls.append(len(np.setdiff1d(points, entry["points"])))
        return update(path, model_file, points, *args)

    capsys.readouterr()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cache, "update", counting)
        assert _save_preds(data_dir, cache_dir, "--rmia-population", "30", "--seed", "2") == 0
    assert "2 model(s) queried, 4 already cached" in capsys.readouterr().out
    assert calls[:4] == [0] * 4 and 0 < min(calls[4:]) and max(calls[4:]) <= 30
    for old, new in zip(before, _arrays(cache_dir, mds)):
        pos = np.searchsorted(new["points"], old["points"])
        np.testing.assert_array_equal(new["phi"][pos], old["phi"])  # the points held are kept
    assert run_lira_mia.main(["--challenge", TRACK, "--data-dir", data_dir, "--cache-dir", cache_dir, *rmia]) == 0


def test_a_model_another_run_holds_is_left_for_last(cached_small):
    """update(wait=False) answers 'busy' for a file whose lock is held; save_preds.py does every
    other model first, then waits for it."""
    data_dir, cache_dir = cached_small
    mds = _models(data_dir)
    first = cache.cache_file(cache_dir, mds[0])
    entry = cache.read(first)
    with try_lock(cache.lock_file(first)):
        assert cache.update(first, mds[0].model_file, entry["points"], ["orig"], True, None, wait=False) == "busy"
    shutil.rmtree(cache_dir)
    holder = try_lock(cache.lock_file(first))
    threading.Timer(1.0, holder.close).start()
    assert _save_preds(data_dir, cache_dir) == 0
    mtimes = [os.stat(cache.cache_file(cache_dir, md)).st_mtime_ns for md in mds]
    assert mtimes[0] == max(mtimes)


def test_rmia_reads_only_own_and_population_points():
    """NaN where a dev/final cache holds nothing is never read; NaN at a point RMIA reads is refused."""
    rng = np.random.default_rng(0)
    shadow, target = rng.normal(size=(6, 30, 1)), rng.normal(size=(2, 30, 1))
    member, own = rng.random((6, 30)) < 0.5, np.array([[0, 1, 2], [3, 4, 5]])
    reads = target_reads([AttackOptions(attack="rmia", rmia_population=8)])
    partial = np.full_like(target, np.nan)
    for t in range(2):
        kept = np.union1d(own[t], reads(30, own[t]))
        assert len(kept) == 3 + 8
        partial[t, kept] = target[t, kept]
    args = dict(n_population=8, from_phi=True)
    np.testing.assert_array_equal(rmia(partial, shadow, member, own, **args), rmia(target, shadow, member, own, **args))
    partial[0, 0] = np.nan
    with pytest.raises(ValueError, match="own or population points"):
        rmia(partial, shadow, member, own, **args)


def test_bench_save_preds_smoke(single_thread):
    """The benchmark behind docs/slurm.md's caching times, at a tiny size."""
    out = bench_save_preds.main(
        ["--models", "1", "--union", "60", "--own", "8", "--population", "10", "--dataset", "80"]
    )
    whole, pop, bare = out["per_model_s"].values()
    assert min(whole, pop, bare) > 0 and out["before_s"] > out["after_s"]["--rmia-population 0"] > 0


@pytest.mark.parametrize("attack", ["auto", "stacked"])
def test_auto_and_stacked_read_rmias_population(attack):
    """Both run RMIA inside their line-ups, so a dev/final cache must hold its population too."""
    own = np.arange(10)
    combined = target_reads([AttackOptions(attack=attack, rmia_population=8)])
    alone = target_reads([AttackOptions(attack="rmia", rmia_population=8)])
    assert combined is not None
    np.testing.assert_array_equal(combined(100, own), alone(100, own))
    assert target_reads([AttackOptions(attack="loss")]) is None
