"""Fault injection on save_preds.py: killed part-way, two runs at once, a full disk.

Runs are real processes on the small one-scenario challenge. A test-only pause between writing a
cache file's temporary copy and renaming it makes a kill or a second run land mid-write.
Cache files are compared array by array: a .npz records its members' write time, so two runs
never give identical bytes, while every array (the model stamp included: the same model files)
must be equal.
"""

import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import save_preds
from challenges import cache, layout
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
    return ["--challenge", TRACK, "--data-dir", data_dir, "--cache-dir", cache_dir, "--device", "cpu", *extra]


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
def reference(small_challenge, tmp_path_factory):
    """An uninterrupted run, with logits."""
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
