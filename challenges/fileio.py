"""Writing files so that a reader never sees a partial one, a failure leaves nothing behind,
concurrent writers never share a temporary name, and a file that is in place survives a power
loss; file digests and one-line error texts.

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

import errno
import fcntl
import glob
import hashlib
import os
import shutil
import tempfile
import time
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


def try_lock(path: str, wait: bool = False):
    """``path`` (created if absent) opened with an exclusive flock, or None if another process holds
    it; ``wait``: block until it is free instead. Closing the returned file releases the lock."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
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
        raise write_error(path, e) from None
    return f


@contextmanager
def locked(path: str):
    """Hold an exclusive advisory lock (``fcntl.flock``) on the file ``path``, created if absent;
    waits while another process holds it. The lock dies with its process, so a killed run never
    leaves a stale one."""
    with try_lock(path, wait=True):  # closing the file releases the lock
        yield


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
