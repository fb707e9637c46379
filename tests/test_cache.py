"""The signal cache: checked against its model.pt on every read, corrupt files, unique temporary
names and the per-folder lock."""

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import run_lira_mia
import save_preds
from challenges import cache, layout
from challenges.datasets import load_dataset, to_tensor
from challenges.fileio import atomic_path, locked
from challenges.tracks import load_params
from models import load_model
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
    assert lines[-1].startswith("save_preds.py: ") and ".lock: cannot write" in lines[-1]
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
