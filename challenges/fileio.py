"""Writing files so that a reader never sees a partial one, a failure leaves nothing behind,
concurrent writers never share a temporary name, and a file that is in place survives a power
loss; the locks concurrent runs take (flock, or lock files where it is missing); file digests and
one-line error texts.

A file or folder ``<dir>/<name>`` is written inside a private folder ``<dir>/.<name>.<random><suffix>``
(created with ``tempfile.mkdtemp``, so no two writers ever get the same one) and renamed to its
final name in one step. A run killed mid-write can leave such a hidden folder behind; it is never
mistaken for the real file. Each writer holds an ``flock`` on its private folder while it writes,
so the next writer of the same name deletes the folders whose lock it can take: a killed run's
(:func:`sweep_leftovers`); :func:`remove_leftovers` deletes them where a lock of the caller's
excludes other writers. Both match only those folders, never a lock file such as ``.<name>.lock``.

Before the rename every file (and folder) of the new tree is flushed to the disk with ``fsync``,
and after it the parent folder, as databases and git do: a rename can otherwise reach the disk
before the data it names, and a power loss then leaves a complete-looking but truncated or empty
file under the final name, which a later run would trust. :func:`place` is that step on its own,
for trees assembled elsewhere (downloads).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import functools
import glob
import hashlib
import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
import warnings
from contextlib import contextmanager
from contextvars import ContextVar


class WriteError(OSError):
    """A file that could not be written: one line naming it, the reason and what to do. Keeps the
    cause's errno and reason, so an outer writer (a folder holding the file) names itself instead."""

    def __init__(self, path: str, e: OSError):
        super().__init__(e.errno, e.strerror or str(e))
        self.path = path

    def __str__(self) -> str:
        if self.errno in (errno.ENOSPC, errno.EDQUOT):
            fix = "free some space there"
        elif self.errno == errno.EFBIG:
            fix = "raise the file-size limit (ulimit -f)"
        elif self.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            fix = "make its folder writable"
        elif self.errno == errno.ENOTDIR:
            fix = f"{_not_a_folder(self.path)} is a file, not a folder; move it or choose another path"
        else:
            fix = "check its folder"
        return f"{self.path}: cannot write ({self.strerror}); {fix}, then rerun"


def write_error(path: str, e: OSError) -> WriteError:
    """A one-line error naming the file that could not be written, and what to do."""
    return WriteError(path, e)


def fsync_path(path: str) -> None:
    """Flush ``path`` (a file's bytes, or a folder's entries) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        # Some file systems cannot sync a folder (EINVAL); a file's failure always counts.
        if e.errno != errno.EINVAL or not os.path.isdir(path):
            raise
    finally:
        os.close(fd)


def sync_tree(path: str) -> None:
    """fsync a file, or a folder and the regular files and folders in it (each folder after its
    contents; links are not followed)."""
    if not os.path.isdir(path) or os.path.islink(path):
        fsync_path(path)
        return
    for folder, _, files in os.walk(path, topdown=False):
        for p in (os.path.join(folder, name) for name in files):
            if os.path.isfile(p) and not os.path.islink(p):  # regular files only: opening a FIFO blocks
                fsync_path(p)
        fsync_path(folder)


def place(src: str, dst: str) -> None:
    """Rename the file or folder ``src`` to ``dst`` (same file system) durably: its contents are
    flushed first, and the parent folder after, so that after a power loss ``dst`` is either
    absent or complete."""
    sync_tree(src)
    os.replace(src, dst)
    fsync_path(os.path.dirname(os.path.abspath(dst)))


# The private folders of the folders atomic_path is assembling (in this thread): a file written
# inside one is flushed once, with that folder, not on its own as well (each fsync costs a few ms).
_ASSEMBLING: ContextVar[tuple[str, ...]] = ContextVar("assembling", default=())


@contextmanager
def atomic_path(path: str, suffix: str = ".tmp"):
    """Yield a fresh, not yet existing name to write ``path`` (file or folder) under; on success it is
    flushed to the disk and renamed to ``path`` in one step (:func:`place`), on any failure (Ctrl-C
    included) it is removed. Close what you wrote before the block ends.

    An OSError that names no file (a full disk while writing) or names the temporary one is raised
    again as a one-line error naming ``path``.
    """
    parent = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    outer = _ASSEMBLING.get()
    nested = any(parent.startswith(p + os.sep) for p in outer)
    if not nested:
        sweep_leftovers(path, suffix)
    try:
        private = tempfile.mkdtemp(prefix=f".{name}.", suffix=suffix, dir=parent)
    except OSError as e:
        raise write_error(path, e) from None
    held = _hold(private)  # while it lives, no sweeper takes this folder for a dead writer's
    tmp = os.path.join(private, name)  # the final name, so that suffix-sensitive writers (np.savez) keep it
    token = _ASSEMBLING.set((*outer, private))
    try:
        yield tmp
        (os.replace if nested else place)(tmp, path)  # nested: the enclosing folder flushes it
    except OSError as e:
        shutil.rmtree(private, ignore_errors=True)
        if e.filename is None or str(e.filename).startswith(private):
            raise write_error(path, e) from None
        raise
    except BaseException:
        shutil.rmtree(private, ignore_errors=True)
        raise
    finally:
        _ASSEMBLING.reset(token)
        if held is not None:
            os.close(held)
    os.rmdir(private)


LEFTOVER_GRACE_S = 2.0  # a folder younger than this may be a live writer's, between mkdtemp and its flock


def _hold(folder: str) -> int | None:
    """An open descriptor of ``folder`` holding an exclusive flock (None where the file system has none)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def sweep_leftovers(path: str, suffix: str = ".tmp") -> None:
    """Delete the private folders that killed :func:`atomic_path` writers of ``path`` left behind,
    without any lock of the caller's: a live writer holds an flock on its folder for as long as it
    writes (:func:`atomic_path`), and the lock dies with its process, so a folder whose lock can be
    taken (and older than LEFTOVER_GRACE_S) is a dead writer's. Every writer sweeps the name it
    writes, so the next run to write a file removes what a killed one left beside it."""
    parent, name = os.path.split(os.path.abspath(path))
    pattern = os.path.join(glob.escape(parent), f".{glob.escape(name)}.*{glob.escape(suffix)}")
    for leftover in glob.glob(pattern):
        try:
            if not os.path.isdir(leftover) or os.path.islink(leftover):
                continue
            if time.time() - os.stat(leftover).st_mtime < LEFTOVER_GRACE_S:
                continue
            fd = _hold(leftover)
        except OSError:  # gone meanwhile, or not a folder
            continue
        if fd is not None:
            try:
                shutil.rmtree(leftover, ignore_errors=True)
            finally:
                os.close(fd)


def remove_leftovers(path: str, suffix: str = ".tmp") -> None:
    """Delete the private folders a killed :func:`atomic_path` writer of ``path`` (with the same
    ``suffix``) left behind; a file beside them, such as the lock ``.<name>.lock``, is never
    touched. Only call this under a lock that every writer of ``path`` holds: another writer's
    temporary folder looks the same."""
    parent, name = os.path.split(os.path.abspath(path))
    pattern = os.path.join(glob.escape(parent), f".{glob.escape(name)}.*{glob.escape(suffix)}")
    for leftover in glob.glob(pattern):
        if os.path.isdir(leftover) and not os.path.islink(leftover):
            shutil.rmtree(leftover, ignore_errors=True)


# ---------------------------------------------------------------- locks
#
# A lock is ``fcntl.flock`` on a file that stays in place (``.<name>.lock``, ``.locks/...``): the
# kernel (or the network file system's lock manager) drops it when its process dies. Some cluster
# file systems have no flock (Lustre mounted without ``-o flock``, NFS without its lock daemon):
# flock fails there with ENOLCK, ENOSYS, EOPNOTSUPP or EINVAL. $MICO_LOCKS says what to do then:
# ``auto`` (default) takes a lock file instead (one line says so, once per file system), ``flock``
# stops with one line naming the folder and the fix, ``files`` always takes lock files (for a
# network file system whose flock is local to each host). docs/guarantees.md says what lock files
# cost when a holder is killed.

LOCKS_ENV = "MICO_LOCKS"
LOCK_MODES = ("auto", "flock", "files")
NO_FLOCK = frozenset({errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL})
HELD = ".held"  # a lock file: <lock>.held, created with O_EXCL, naming its holder
HEARTBEAT_S = 30.0  # a lock file's holder touches it this often
STALE_S = 300.0  # a lock file of another host (or a frozen holder) untouched this long is stale
POLL_S = 1.0  # how often a waiter looks at a lock file again


class LockWarning(UserWarning):
    """flock does not work in a folder and lock files are used instead (printed as one line)."""


def lock_mode() -> str:
    """$MICO_LOCKS: 'auto' (default), 'flock' or 'files'; ValueError naming the variable otherwise."""
    mode = os.environ.get(LOCKS_ENV) or "auto"
    if mode not in LOCK_MODES:
        raise ValueError(f"{LOCKS_ENV}={mode!r}: expected one of {', '.join(LOCK_MODES)} (docs/guarantees.md)")
    return mode


class LockError(OSError):
    """A lock that cannot be taken where flock is missing and MICO_LOCKS=flock: one line."""

    def __str__(self) -> str:
        return self.strerror


class _NoFlock(Exception):
    def __init__(self, e: OSError):
        self.error = e


def _flock(path: str, wait: bool):
    """``path`` opened with an exclusive flock, None if another process holds it; _NoFlock where
    the file system has none."""
    try:
        f = open(path, "a")  # noqa: SIM115 - returned open: the lock lives as long as the file
    except OSError as e:
        raise write_error(path, e) from None
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    except OSError as e:
        f.close()
        if e.errno in NO_FLOCK:
            raise _NoFlock(e) from None
        raise write_error(path, e) from None
    return f


_NOTED: set[int] = set()  # file systems (st_dev) where the switch to lock files was announced


def _no_flock(path: str, e: OSError, mode: str) -> None:
    """Stop (``MICO_LOCKS=flock``) or say once per file system that lock files take over."""
    folder = os.path.dirname(os.path.abspath(path))
    reason = f"flock fails there: {e.strerror or e} [{errno.errorcode.get(e.errno, e.errno)}]"
    if mode == "flock":
        raise LockError(
            e.errno,
            f"{folder}: {reason}; set {LOCKS_ENV}=files (lock files, docs/guarantees.md) or use a file system "
            "with flock (local disk, Lustre mounted with -o flock), then rerun",
        )
    dev = os.stat(folder).st_dev
    if dev not in _NOTED:
        _NOTED.add(dev)
        warnings.warn(f"{folder}: {reason}; using lock files instead (docs/guarantees.md)", LockWarning, stacklevel=4)


def try_lock(path: str, wait: bool = False):
    """An exclusive lock on ``path`` (created if absent), or None if another process holds it;
    ``wait``: block until it is free instead. Closing the returned object releases the lock. flock,
    or a lock file ``path + '.held'`` as $MICO_LOCKS says (see above)."""
    mode = lock_mode()
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    except OSError as e:
        raise write_error(path, e) from None
    if mode != "files":
        try:
            return _flock(path, wait)
        except _NoFlock as e:
            _no_flock(path, e.error, mode)
    return LockFile.take(path + HELD, wait)


@contextmanager
def locked(path: str):
    """Hold an exclusive lock on the file ``path`` (:func:`try_lock`), created if absent; waits while
    another process holds it. A flock dies with its process, so a killed run never leaves a stale
    one; a lock file of a killed run is cleared as docs/guarantees.md says."""
    with try_lock(path, wait=True):
        yield


def _proc_stat(pid: int) -> tuple[str, str]:
    """(state, start time in clock ticks since boot) of process ``pid``; ('-', '-') where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], fields[19]
    except (OSError, IndexError):
        return "-", "-"


@functools.cache
def _machine() -> str:
    """This host, boot and pid namespace: where a holder's pid can be looked up."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = "-"
    try:
        ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        ns = "-"
    return f"{socket.gethostname()} {boot} {ns}"


def _alive(pid: int, start: str) -> bool:
    """Whether process ``pid``, started at ``start`` (ticks since boot), still runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's: it exists
    state, now = _proc_stat(pid)
    return state not in ("Z", "X") and start in ("-", now)  # a zombie is dead; another start: pid reused


class LockFile:
    """A lock held as the file ``marker``, created with O_EXCL and holding one line: host, boot id,
    pid namespace, pid, start time and a random token. While held, a thread touches it every
    HEARTBEAT_S; close() (or the process's normal exit) removes it. Another process takes over a
    marker whose holder is dead (same machine: its pid is gone or reused) or, from another host,
    one untouched for STALE_S."""

    _held: dict[str, LockFile] = {}
    _guard = threading.Lock()
    _beating = False

    def __init__(self, marker: str, record: str):
        self.marker, self.record, self.touched = marker, record, time.monotonic()

    @classmethod
    def take(cls, marker: str, wait: bool):
        pid = os.getpid()
        record = f"{_machine()} {pid} {_proc_stat(pid)[1]} {secrets.token_hex(8)}"
        while True:
            if _create(marker, record):
                return cls(marker, record)._hold()
            if _break_if_stale(marker):
                continue
            if not wait:
                return None
            time.sleep(POLL_S)

    def _hold(self):
        with LockFile._guard:
            LockFile._held[self.marker] = self
            if not LockFile._beating:
                LockFile._beating = True
                threading.Thread(target=LockFile._beat, name="lock-heartbeat", daemon=True).start()
                atexit.register(LockFile._release_all)
        return self

    @staticmethod
    def _beat() -> None:
        while True:
            time.sleep(min(1.0, HEARTBEAT_S))
            with LockFile._guard:
                held = list(LockFile._held.values())
            for lock in held:
                if time.monotonic() - lock.touched >= HEARTBEAT_S:
                    lock.touched = time.monotonic()
                    with contextlib.suppress(OSError):
                        os.utime(lock.marker)

    @staticmethod
    def _forget() -> None:
        """In a forked child: the parent's locks are the parent's (its exit must not remove them)."""
        LockFile._held, LockFile._guard, LockFile._beating = {}, threading.Lock(), False

    @staticmethod
    def _release_all() -> None:
        for lock in list(LockFile._held.values()):
            lock.close()

    def close(self) -> None:
        with LockFile._guard:
            if LockFile._held.get(self.marker) is not self:
                return
            del LockFile._held[self.marker]
        with contextlib.suppress(OSError):
            if _read(self.marker) == self.record:  # still ours (not taken over as stale)
                os.unlink(self.marker)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


os.register_at_fork(after_in_child=LockFile._forget)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _create(marker: str, record: str) -> bool:
    """Create ``marker`` holding ``record``; False if it exists."""
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    except OSError as e:
        raise write_error(marker, e) from None
    try:
        os.write(fd, record.encode())
    except OSError as e:
        os.close(fd)
        os.unlink(marker)
        raise write_error(marker, e) from None
    os.close(fd)
    return True


def _look(marker: str):
    """(stat, record) of ``marker``, None if it is gone."""
    try:
        return os.stat(marker), _read(marker)
    except FileNotFoundError:
        return None


def _stale(st: os.stat_result, record: str) -> bool:
    """Whether the holder ``record`` of a marker is gone: on this machine, its process; elsewhere (or
    a record not yet written), STALE_S without a heartbeat."""
    fields = record.split()
    if len(fields) == 6 and " ".join(fields[:3]) == _machine() and fields[3].isdigit():
        return not _alive(int(fields[3]), fields[4])
    return time.time() - st.st_mtime > STALE_S


def _break_if_stale(marker: str) -> bool:
    """Remove ``marker`` if its holder is gone (under a guard file, so that of two processes that
    judged it stale only one removes it, and never a fresh one); True if the caller may try again."""
    seen = _look(marker)
    if seen is None:
        return True
    if not _stale(*seen):
        return False
    guard = marker + ".break"
    try:
        fd = os.open(guard, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        with contextlib.suppress(FileNotFoundError):
            if time.time() - os.stat(guard).st_mtime > STALE_S:  # a breaker killed mid-way
                os.unlink(guard)
        return False
    except OSError as e:
        raise write_error(guard, e) from None
    try:
        again = _look(marker)
        if again is not None and (again[0].st_ino, again[0].st_mtime_ns, again[1]) == (
            seen[0].st_ino,
            seen[0].st_mtime_ns,
            seen[1],
        ):
            os.unlink(marker)
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(guard)
    return True


def write_text(path: str, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        f.write(text)


def file_digest(path: str, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes ('sha256', 'md5', ...), read in 1 MiB blocks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _not_a_folder(path: str) -> str:
    """The first part of ``path`` that exists and is not a folder (``path`` itself, absolute, if none is)."""
    parts = os.path.abspath(path).split(os.sep)
    for i in range(2, len(parts) + 1):
        head = os.sep.join(parts[:i])
        if os.path.exists(head) and not os.path.isdir(head):
            return head
    return os.path.abspath(path)


def os_error_line(e: OSError) -> str:
    """One line for an OSError that reached a script: the file or folder, the reason and the fix,
    instead of Python's bare ``[Errno 13] Permission denied: 'path'``."""
    if isinstance(e, WriteError) or not e.filename:
        return one_line(e, None)
    name, why = os.fspath(e.filename), e.strerror or str(e)
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "check the permissions of it and of its folder (read-only?), or choose another folder"
    elif e.errno in (errno.ENOTDIR, errno.EEXIST) and not os.path.isdir(name):
        head = _not_a_folder(name)
        where = "" if head == os.path.abspath(name) else f"{head} "
        return f"{name}: {where}is a file, not a folder; move it or choose another path"
    elif e.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some space there, then rerun"
    elif e.errno == errno.EISDIR:
        fix = "it is a folder; name a file instead"
    else:
        return one_line(f"{name}: {why}", None)
    return one_line(f"{name}: {why}; {fix}", None)


def one_line(text, limit: int | None = 200) -> str:
    """``text`` with its whitespace runs (newlines included) collapsed, cut to ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."
