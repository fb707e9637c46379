"""Writing files so that a reader never sees a partial one, a failure leaves nothing behind, and
concurrent writers never share a temporary name; file digests and one-line error texts.

A file or folder ``<dir>/<name>`` is written inside a private folder ``<dir>/.<name>.<random><suffix>``
(created with ``tempfile.mkdtemp``, so no two writers ever get the same one) and renamed to its
final name in one step. A run killed mid-write can leave such a hidden folder behind; it is never
mistaken for the real file, and :func:`remove_leftovers` deletes it where a lock excludes other
writers.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager


def write_error(path: str, e: OSError) -> OSError:
    """A one-line error naming the file that could not be written, and what to do."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some space there"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "make its folder writable"
    else:
        fix = "check its folder"
    return OSError(f"{path}: cannot write ({e.strerror or e}); {fix}, then rerun")


@contextmanager
def atomic_path(path: str, suffix: str = ".tmp"):
    """Yield a fresh, not yet existing name to write ``path`` (file or folder) under; on success it is
    renamed to ``path`` in one step, on any failure (Ctrl-C included) it is removed.

    An OSError that names no file (a full disk while writing) or names the temporary one is raised
    again as a one-line error naming ``path``.
    """
    parent = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    try:
        private = tempfile.mkdtemp(prefix=f".{name}.", suffix=suffix, dir=parent)
    except OSError as e:
        raise write_error(path, e) from None
    tmp = os.path.join(private, name)  # the final name, so that suffix-sensitive writers (np.savez) keep it
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        shutil.rmtree(private, ignore_errors=True)
        if e.filename is None or str(e.filename).startswith(private):
            raise write_error(path, e) from None
        raise
    except BaseException:
        shutil.rmtree(private, ignore_errors=True)
        raise
    os.rmdir(private)


def remove_leftovers(path: str) -> None:
    """Delete what a killed writer of ``path`` left behind. Only call this under a lock that every
    writer of ``path`` holds: another writer's temporary folder looks the same."""
    parent, name = os.path.split(os.path.abspath(path))
    for leftover in glob.glob(os.path.join(glob.escape(parent), f".{glob.escape(name)}.*")):
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


def one_line(text, limit: int | None = 200) -> str:
    """``text`` with its whitespace runs (newlines included) collapsed, cut to ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."
