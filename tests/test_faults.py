"""Fault injection: save_preds.py killed part-way, two runs at once, a full disk; what every
writer flushes to the disk before and after its rename (a power loss cannot be simulated: the
tests record each fsync); leftover folders and the locks beside them.

save_preds.py runs are real processes on the small one-scenario challenge. A test-only pause between writing a
cache file's temporary copy and renaming it makes a kill or a second run land mid-write.
Cache files are compared array by array: a .npz records its members' write time, so two runs
never give identical bytes, while every array (the model stamp included: the same model files)
must be equal.
"""

import contextlib
import glob
import os
import re
import resource
import shutil
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

import save_preds
from bench import bench_fsync
from challenges import cache, download, layout, membership, submission
from challenges.fileio import atomic_path, try_lock
from challenges.layout import ModelDir
from models import build_model
from models.train import TrainResult
from production import folders
from tests.conftest import ROOT

TRACK, SCENARIO = "purchase100", "purchase100_inf"

SLOW_SAVE_PREDS = """
import sys, time
import numpy as np
import save_preds
savez, pause = np.savez, float(sys.argv[1])
def slow_savez(*args, **kwargs):
    savez(*args, **kwargs)
    time.sleep(pause)  # the temporary file is complete, not yet renamed
np.savez = slow_savez
sys.exit(save_preds.main(sys.argv[2:]))
"""


def _args(data_dir, cache_dir, *extra):
    # One thread: MKL may use fewer threads than asked on a busy machine (MKL_DYNAMIC), and a
    # different split of a sum changes float32 logits in the last bits; one thread sums one way.
    return [
        "--challenge",
        TRACK,
        "--data-dir",
        data_dir,
        "--cache-dir",
        cache_dir,
        "--device",
        "cpu",
        "--threads",
        "1",
        *extra,
    ]


def _start(pause, data_dir, cache_dir, *extra):
    return subprocess.Popen(
        [sys.executable, "-c", SLOW_SAVE_PREDS, str(pause), *_args(data_dir, cache_dir, *extra)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _files(data_dir, cache_dir):
    return [cache.cache_file(cache_dir, md) for md in layout.models(data_dir, TRACK, SCENARIO)]


def _leftovers(cache_dir):
    """Anything in the cache folders but finished cache files and the lock: temporary files."""
    return [
        p
        for p in glob.glob(os.path.join(cache_dir, TRACK, SCENARIO, "*", "*"))
        + glob.glob(os.path.join(cache_dir, TRACK, SCENARIO, "*", ".*"))
        if not re.fullmatch(r"model_\d+\.npz|\.locks", os.path.basename(p))
    ]


def _wait_for(cond, proc, what, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"save_preds.py ended (rc {proc.returncode}) before {what}: {proc.stderr.read()[-500:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def _assert_same_arrays(data_dir, cache_dir, reference, fields=None):
    for path, ref in zip(_files(data_dir, cache_dir), _files(data_dir, reference)):
        got, want = cache.read(path), cache.read(ref)
        keys = fields or sorted(want)
        assert set(keys) <= set(got), (path, sorted(got))
        for k in keys:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"{path}: {k}")


@pytest.fixture(scope="module")
def reference(small_challenge, tmp_path_factory, single_thread):
    """An uninterrupted run, with logits (single_thread restores this process's threads after the module)."""
    cache_dir = str(tmp_path_factory.mktemp("reference") / "cache")
    assert save_preds.main(_args(small_challenge, cache_dir, "--save-logits")) == 0
    return cache_dir


def test_killed_mid_write_then_rerun(small_challenge, reference, tmp_path):
    data_dir, cache_dir = small_challenge, str(tmp_path / "cache")
    files = _files(data_dir, cache_dir)
    proc = _start(0.5, data_dir, cache_dir, "--save-logits")
    try:
        _wait_for(lambda: os.path.exists(files[0]) and _leftovers(cache_dir), proc, "a second model's temporary file")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    done = [f for f in files if os.path.exists(f)]
    assert 0 < len(done) < len(files) and _leftovers(cache_dir)  # part-way, mid-write
    for f in done:
        cache.read(f)  # never a half file under the final name
    assert save_preds.main(_args(data_dir, cache_dir, "--save-logits")) == 0
    assert _leftovers(cache_dir) == []
    _assert_same_arrays(data_dir, cache_dir, reference)


@pytest.mark.slow
def test_concurrent_runs_cooperate(small_challenge, reference, tmp_path):
    """Two runs on one cache, one asking for logits: both succeed and every file has logits."""
    data_dir, cache_dir = small_challenge, str(tmp_path / "cache")
    procs = [_start(0.15, data_dir, cache_dir), _start(0.15, data_dir, cache_dir, "--save-logits")]
    try:
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-1000:]
    assert _leftovers(cache_dir) == []
    _assert_same_arrays(data_dir, cache_dir, reference)  # logits included


def _mount_tmpfs(path: str, size: str) -> bool:
    os.makedirs(path)
    r = (
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], capture_output=True, check=False)
        if shutil.which("mount")
        else None
    )
    return r is not None and r.returncode == 0


def test_disk_full(small_challenge, reference, tmp_path):
    data_dir, cache_dir = small_challenge, str(tmp_path / "small_disk")
    one = os.path.getsize(_files(data_dir, reference)[0])
    if not _mount_tmpfs(cache_dir, f"{3 * one // 1024}k"):  # logits make files larger: a few fit
        pytest.skip("cannot mount a small tmpfs here (needs root and mount permission)")
    try:
        r = subprocess.run(
            [sys.executable, "save_preds.py", *_args(data_dir, cache_dir, "--save-logits")],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert r.returncode != 0
        line = r.stderr.strip().splitlines()[-1]
        assert line.startswith("save_preds.py: ") and "No space left on device" in line and "Traceback" not in r.stderr
        assert any(f in line for f in _files(data_dir, cache_dir)) and "free some space" in line
        assert _leftovers(cache_dir) == []
        for f in _files(data_dir, cache_dir):
            if os.path.exists(f):
                cache.read(f)
        subprocess.run(["mount", "-o", "remount,size=16m", cache_dir], check=True)  # space freed
        assert save_preds.main(_args(data_dir, cache_dir, "--save-logits")) == 0
        _assert_same_arrays(data_dir, cache_dir, reference)
    finally:
        subprocess.run(["umount", cache_dir], check=False)


@contextlib.contextmanager
def _file_size_limit(nbytes: int):
    """Writes past ``nbytes`` fail (EFBIG) as they do on a full disk (ENOSPC), inside torch's C++
    zip writer too; unlike a small tmpfs it needs neither root nor a mount."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the signal kills the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def test_disk_full_inside_torch_save(tmp_path):
    """A model folder that does not fit: one line naming it (torch's zip writer raised RuntimeError)."""
    md = ModelDir(str(tmp_path), TRACK, SCENARIO, "shadow", 0)
    result = TrainResult(build_model(TRACK), 0.5, 0.5, None)
    with _file_size_limit(64 << 10), pytest.raises(OSError) as ei:  # a purchase100 model.pt takes 359 KB
        folders.write_folder(_job(md), result)
    msg = str(ei.value)
    assert msg == f"{md.path}: cannot write (File too large); raise the file-size limit (ulimit -f), then rerun"
    assert os.listdir(os.path.dirname(md.path)) == []


# ---------------------------------------------------------------------------------------------
# Durability: data flushed before the rename, the folder after it
# ---------------------------------------------------------------------------------------------


class Fsyncs:
    """Stands in for os.fsync and records each call: (inode, a folder?, the folder's entries)."""

    def __init__(self):
        self.calls = []

    def __call__(self, fd):
        st = os.fstat(fd)
        folder = stat.S_ISDIR(st.st_mode)
        self.calls.append((st.st_ino, folder, os.listdir(fd) if folder else None))

    def durable(self, path) -> bool:
        """``path`` (file or folder) was flushed, and after that its parent folder, holding its name."""
        parent, name = os.path.split(os.path.abspath(path))
        ino, parent_ino = os.stat(path).st_ino, os.stat(parent).st_ino
        first = next((i for i, (n, _, _) in enumerate(self.calls) if n == ino), None)
        return first is not None and any(
            n == parent_ino and name in entries for n, _, entries in self.calls[first + 1 :]
        )


def _job(md):
    return folders.Job(md, np.arange(10), np.arange(10, 20), 0, {"seed_challenge": "7\n"}, training_set=True)


def _tree(root):
    """Every file and folder under ``root``, ``root`` included."""
    out = [str(root)]
    for folder, dirs, files in os.walk(root):
        out.extend(os.path.join(folder, n) for n in dirs + files)
    return out


def _prediction(tmp_path):
    path = str(tmp_path / "prediction.csv")
    submission.write_prediction(path, np.full(200, 0.5))
    return [path]


def _zip(tmp_path):
    d = tmp_path / TRACK / SCENARIO / "dev" / "model_0"
    d.mkdir(parents=True)
    (d / "prediction.csv").write_text("0.5\n")
    out = str(tmp_path / "predictions.zip")
    submission.write_zip(str(tmp_path), TRACK, out)
    return [out]


def _cache_file(tmp_path):
    path = str(tmp_path / "cache" / "model_0.npz")
    stamp = {"model_size": 1, "model_mtime_ns": 2, "model_inode": 3, "model_ctime_ns": 4, "model_sha256": "0"}
    cache.write(path, np.arange(3), ["orig"], stamp, {"phi": np.zeros((3, 1)), "mentr": np.zeros((3, 1))})
    return [path]


def _training_set(tmp_path):
    membership.write_training_set(str(tmp_path), np.arange(5))
    return [str(tmp_path / membership.TRAINING_SET), str(tmp_path / membership.CHECKSUM)]


def _model_pt(tmp_path):
    return [folders.save_state_dict(build_model(TRACK), str(tmp_path / "model.pt"))]


def _model_folder(tmp_path):
    md = ModelDir(str(tmp_path), TRACK, SCENARIO, "shadow", 3)
    folders.write_folder(_job(md), TrainResult(build_model(TRACK), 0.5, 0.5, None))
    assert {"model.pt", "seed_challenge", "accuracy", membership.TRAINING_SET} <= set(os.listdir(md.path))
    return _tree(md.path)


def _downloaded_scenario(tmp_path):
    staged = tmp_path / "staging" / SCENARIO / "train" / "model_0"
    staged.mkdir(parents=True)
    (staged / "model.pt").write_bytes(b"\0" * 100)
    download._place(str(tmp_path / "staging" / SCENARIO), str(tmp_path / SCENARIO))
    return _tree(tmp_path / SCENARIO)


def _folder(tmp_path):
    with atomic_path(str(tmp_path / "dataset")) as tmp:
        os.makedirs(os.path.join(tmp, "sub"))
        (tmp_path / "x").write_text("not part of it")
        with open(os.path.join(tmp, "sub", "batch"), "w") as f:
            f.write("data")
    return _tree(tmp_path / "dataset")


WRITERS = [_prediction, _zip, _cache_file, _training_set, _model_pt, _model_folder, _downloaded_scenario, _folder]


@pytest.mark.parametrize("writer", WRITERS, ids=lambda w: w.__name__.strip("_"))
def test_writers_flush_file_then_folder(writer, tmp_path, monkeypatch):
    """Each file a later run trusts reaches the disk before its name does: a power loss leaves it
    absent or whole, never a truncated file under its final name."""
    fsyncs = Fsyncs()
    monkeypatch.setattr(os, "fsync", fsyncs)
    for path in writer(tmp_path):
        assert fsyncs.durable(path), os.path.relpath(path, tmp_path)


def test_model_folder_is_flushed_once(tmp_path, monkeypatch):
    """Files written atomically inside a folder being assembled (model.pt, the training set) are
    flushed with it, not twice: each fsync costs milliseconds."""
    fsyncs = Fsyncs()
    monkeypatch.setattr(os, "fsync", fsyncs)
    paths = _model_folder(tmp_path)
    assert len(fsyncs.calls) == len(paths) + 1  # every file, the folder, the phase folder


def test_fsync_failure_is_a_write_error(tmp_path, monkeypatch):
    """An fsync that fails (EIO, or ENOSPC on delayed allocation) leaves nothing and names the file."""

    def fail(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    path = str(tmp_path / "prediction.csv")
    with pytest.raises(OSError) as ei:
        submission.write_prediction(path, np.full(200, 0.5))
    assert str(ei.value).startswith(path + ": cannot write (No space left on device); free some space")
    assert os.listdir(tmp_path) == []


def test_leftover_cleanup_spares_the_lock(tmp_path, monkeypatch):
    """Claiming a model removes a killed run's partial folder ``.model_<id>.<random>.partial`` and
    nothing else: not its own lock ``.model_<id>.lock``, which the same prefix would match."""
    md = ModelDir(str(tmp_path), TRACK, SCENARIO, "shadow", 3)
    phase = os.path.dirname(md.path)
    partial = os.path.join(phase, ".model_3.k2j4h5g6.partial")
    other = os.path.join(phase, ".model_30.a1b2c3d4.partial")
    for d in (partial, other):
        os.makedirs(os.path.join(d, "model_3"))
    lock = try_lock(folders._lock_path(md))
    lock.close()
    ino = os.stat(folders._lock_path(md)).st_ino
    touched, rmtree = [], shutil.rmtree
    monkeypatch.setattr(shutil, "rmtree", lambda p, *a, **k: (touched.append(p), rmtree(p, *a, **k)))
    group, locks = folders._claim([_job(md)], 1)
    try:
        assert len(group) == 1 and touched == [partial]
        assert os.stat(folders._lock_path(md)).st_ino == ino and try_lock(folders._lock_path(md)) is None
        assert sorted(os.listdir(phase)) == [".model_3.lock", os.path.basename(other)]
    finally:
        for f in locks:
            f.close()


def test_bench_fsync_smoke(tmp_path, capsys):
    """bench/bench_fsync.py at a tiny size: one row per kind, printed as it is measured."""
    rows = bench_fsync.main(["--n", "1", "--repeats", "1", "--points", "10", "--dir", str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    assert [r["kind"] for r in rows] == list(bench_fsync.writers(10)) and len(lines) == 1 + len(rows)
    assert all(r["with"] > 0 and r["without"] > 0 for r in rows) and os.listdir(tmp_path) == []
    assert lines[1].startswith("prediction.csv: 1 files, ") and "ms/file with fsync" in lines[1]
