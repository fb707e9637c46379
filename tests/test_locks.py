"""Locks where flock is missing (challenges/fileio.py): a cluster file system on which flock fails
(ENOLCK, ENOSYS, EOPNOTSUPP, EINVAL), simulated by making fcntl.flock raise. MICO_LOCKS=auto (the
default) takes lock files there, =flock stops with one line, =files always takes lock files; a
killed holder's lock file is cleared (at once on its own machine, after STALE_S elsewhere)."""

import errno
import fcntl
import glob
import os
import signal
import subprocess
import sys
import threading
import time
import warnings

import pytest

import save_preds
import train_shadows
from challenges import cache, fileio, layout
from challenges.fileio import HELD, LockError, LockWarning, try_lock
from tests.conftest import ROOT, run_script

TRACK, SCENARIO = "purchase100", "purchase100_inf"
NO_FLOCK = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)

# The interpreter of a script run on a file system without flock: fcntl.flock fails with ENOLCK.
WITHOUT_FLOCK = """
import errno, fcntl, runpy, sys
def no_flock(fd, op):
    raise OSError(errno.ENOLCK, "No locks available")
fcntl.flock = no_flock
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.fixture
def no_flock(monkeypatch):
    """fcntl.flock fails as on Lustre without -o flock; returns a setter for the errno."""
    err = [errno.ENOLCK]

    def flock(fd, op):
        raise OSError(err[0], os.strerror(err[0]))

    monkeypatch.setattr(fcntl, "flock", flock)
    monkeypatch.setattr(fileio, "_NOTED", set())
    monkeypatch.delenv("MICO_LOCKS", raising=False)
    return err


def _holders(top) -> list:
    return glob.glob(os.path.join(top, "**", f"*{HELD}*"), recursive=True)


@pytest.mark.parametrize("code", NO_FLOCK, ids=lambda c: errno.errorcode[c])
def test_without_flock_a_lock_file_excludes(no_flock, tmp_path, code):
    no_flock[0] = code
    path = str(tmp_path / "sub" / ".model_3.lock")
    with pytest.warns(LockWarning, match=f"{tmp_path}/sub: flock fails there.*{errno.errorcode[code]}.*lock files"):
        held = try_lock(path)
    assert held is not None and os.path.isfile(path + HELD)
    assert str(os.getpid()) in open(path + HELD).read().split()
    assert try_lock(path) is None  # held, by this very process too (as a second flock would be)
    held.close()
    assert not os.path.exists(path + HELD)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per file system
        again = try_lock(path)
    assert again is not None
    again.close()


def test_flock_mode_stops_with_one_line(no_flock, tmp_path, monkeypatch):
    monkeypatch.setenv("MICO_LOCKS", "flock")
    path = str(tmp_path / ".locks" / "model_3.npz")
    with pytest.raises(LockError) as e:
        try_lock(path)
    text = str(e.value)
    assert "\n" not in text and text.startswith(f"{tmp_path}/.locks: flock fails there")
    assert "[ENOLCK]" in text and "MICO_LOCKS=files" in text and "-o flock" in text
    assert not _holders(str(tmp_path))
    monkeypatch.setenv("MICO_LOCKS", "nfs")
    with pytest.raises(ValueError, match="MICO_LOCKS='nfs': expected one of auto, flock, files"):
        try_lock(path)


def test_files_mode_needs_no_failing_flock(tmp_path, monkeypatch):
    """MICO_LOCKS=files takes lock files where flock works too (flock local to each host)."""
    monkeypatch.setenv("MICO_LOCKS", "files")
    path = str(tmp_path / ".lock")
    with try_lock(path) as held:
        assert held is not None and os.path.isfile(path + HELD) and try_lock(path) is None
    assert not os.path.exists(path + HELD)


HOLD = """
import os, sys, time
os.environ["MICO_LOCKS"] = "files"
from challenges.fileio import try_lock
lock = try_lock(sys.argv[1])
print("held", flush=True)
time.sleep(600)
"""


def test_a_killed_holders_lock_file_is_taken_over_at_once(tmp_path, monkeypatch):
    """A holder killed with SIGKILL leaves its lock file; on the same machine its pid is gone, so
    the next run takes the lock at once."""
    monkeypatch.setenv("MICO_LOCKS", "files")
    path = str(tmp_path / ".lock")
    p = subprocess.Popen([sys.executable, "-c", HOLD, path], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        assert try_lock(path) is None  # alive: busy
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stdout.close()
    assert os.path.exists(path + HELD)
    start = time.monotonic()
    held = try_lock(path)
    assert held is not None and time.monotonic() - start < 5
    assert str(os.getpid()) in open(path + HELD).read().split()
    held.close()


def test_another_hosts_lock_file_is_stale_after_stale_s(tmp_path, monkeypatch):
    """A lock file written on another host (or a record not yet written) is taken over only once it
    went STALE_S without a heartbeat; a fresh one is busy."""
    monkeypatch.setenv("MICO_LOCKS", "files")
    path = str(tmp_path / ".lock")
    for record in ("node17 6c1f-boot pid:[4026531836] 4242 123456 0badc0de", ""):
        with open(path + HELD, "w") as f:
            f.write(record)
        assert try_lock(path) is None
        old = time.time() - fileio.STALE_S - 5
        os.utime(path + HELD, (old, old))
        held = try_lock(path)
        assert held is not None and open(path + HELD).read() != record
        held.close()


def test_a_fresh_break_guard_holds_off_a_second_breaker(tmp_path, monkeypatch):
    """Breaking a stale lock file happens under ``.break``: while another process breaks it, a
    second one does not (it could remove the first one's new lock file); a guard left by a killed
    breaker is removed after STALE_S."""
    monkeypatch.setenv("MICO_LOCKS", "files")
    path = str(tmp_path / ".lock")
    with open(path + HELD, "w") as f:
        f.write("node17 boot ns 4242 1 tok")
    old = time.time() - fileio.STALE_S - 5
    os.utime(path + HELD, (old, old))
    open(path + HELD + ".break", "w").close()
    assert try_lock(path) is None and os.path.exists(path + HELD)
    os.utime(path + HELD + ".break", (old, old))
    assert try_lock(path) is None and not os.path.exists(path + HELD + ".break")  # the guard cleared
    held = try_lock(path)
    assert held is not None
    held.close()


def test_waiting_for_a_lock_file_and_the_heartbeat(tmp_path, monkeypatch):
    """wait=True polls until the holder lets go; a holder touches its lock file every HEARTBEAT_S."""
    monkeypatch.setenv("MICO_LOCKS", "files")
    monkeypatch.setattr(fileio, "POLL_S", 0.05)
    monkeypatch.setattr(fileio, "HEARTBEAT_S", 0.2)
    path = str(tmp_path / ".lock")
    holder = try_lock(path)
    old = time.time() - 1000
    os.utime(path + HELD, (old, old))
    deadline = time.monotonic() + 10
    while os.stat(path + HELD).st_mtime < old + 500 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert os.stat(path + HELD).st_mtime > old + 500  # touched by the heartbeat thread
    threading.Timer(0.5, holder.close).start()
    start = time.monotonic()
    with try_lock(path, wait=True) as held:
        assert held is not None and time.monotonic() - start >= 0.4
    assert not os.path.exists(path + HELD)


def test_a_forked_child_leaves_the_parents_lock_files(tmp_path, monkeypatch):
    """A child forked while the parent holds a lock file (a data loader's worker) does not remove it
    when it exits: the exit handler it inherits releases only its own."""
    monkeypatch.setenv("MICO_LOCKS", "files")
    path = str(tmp_path / ".lock")
    held = try_lock(path)
    pid = os.fork()
    if pid == 0:
        try:
            fileio.LockFile._release_all()  # what the child's normal exit runs (atexit)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.path.exists(path + HELD) and try_lock(path) is None
    held.close()
    assert not os.path.exists(path + HELD)


# ---------------------------------------------------------------------------------------------
# The scripts on a file system without flock
# ---------------------------------------------------------------------------------------------


def test_train_shadows_and_save_preds_without_flock(no_flock, small_copy, capsys, single_thread):
    """Training (the design lock, each model's lock) and caching (each cache file's lock) run on
    lock files, say so in one line each, and leave no lock file behind."""
    data_dir, cache_dir = small_copy
    argv = ["--challenge", TRACK, "--data-dir", data_dir, "--device", "cpu", "--threads", "1"]
    train = [*argv, "--scenario", SCENARIO, "--n", "2", "--design", "balanced", "--epochs", "1"]
    code, lines = run_script(train_shadows.main, "train_shadows.py", train, capsys)
    assert code == 0, lines
    notes = [line for line in lines if "flock fails there" in line]
    assert len(notes) == 1 and notes[0].startswith("train_shadows.py: warning: ") and "lock files" in notes[0]
    assert len(layout.models(data_dir, TRACK, SCENARIO)) == 8  # 4 train, 2 shadows, 1 dev, 1 final
    no_flock[0] = errno.ENOSYS
    code, lines = run_script(save_preds.main, "save_preds.py", [*argv, "--cache-dir", cache_dir], capsys)
    assert code == 0, lines
    for md in layout.models(data_dir, TRACK, SCENARIO):
        assert cache.read(cache.cache_file(cache_dir, md))["points"].size
    assert not _holders(data_dir) and not _holders(cache_dir)


def _script(script, env, *args):
    base = {k: v for k, v in os.environ.items() if k != "MICO_LOCKS"}
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_FLOCK, os.path.join(ROOT, script), *args],
        cwd=ROOT,
        env={**base, "OMP_NUM_THREADS": "1", **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_save_preds_end_to_end_without_flock(small_copy, tmp_path):
    """save_preds.py as a user runs it, its fcntl.flock failing with ENOLCK: with MICO_LOCKS=flock it
    stops with one line naming the folder and the fix; by default it caches every model on lock
    files, one line saying so."""
    data_dir, cache_dir = small_copy
    args = ["--challenge", TRACK, "--data-dir", data_dir, "--cache-dir", cache_dir, "--device", "cpu", "--threads", "1"]
    stop = _script("save_preds.py", {"MICO_LOCKS": "flock"}, *args)
    assert stop.returncode == 1 and "Traceback" not in stop.stderr
    last = stop.stderr.strip().splitlines()[-1]
    assert last.startswith(f"save_preds.py: {cache_dir}/{TRACK}/{SCENARIO}/train/.locks: flock fails there")
    assert "[ENOLCK]" in last and "MICO_LOCKS=files" in last
    run = _script("save_preds.py", {}, *args)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    notes = [line for line in run.stderr.splitlines() if "flock fails there" in line]
    assert len(notes) == 1 and notes[0].startswith("save_preds.py: warning: ") and "using lock files" in notes[0]
    assert "model(s) queried" in run.stdout
    for md in layout.models(data_dir, TRACK, SCENARIO):
        assert os.path.isfile(cache.cache_file(cache_dir, md))
    assert not _holders(cache_dir)
