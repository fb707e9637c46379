"""Files and messages: writing so that a reader never sees a partial file and a failure leaves
nothing behind, file digests, and one-line error texts."""
from __future__ import annotations

import hashlib
import os
import shutil
from contextlib import contextmanager


@contextmanager
def atomic_path(path: str, suffix: str = ".tmp"):
    """Yield a temporary name beside ``path`` (file or folder) to write; on success it is renamed to
    ``path`` in one step, on any failure (Ctrl-C included) it is removed."""
    tmp = path + suffix
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.isdir(tmp) and not os.path.islink(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.lexists(tmp):
            os.remove(tmp)
        raise


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
    return text if limit is None or len(text) <= limit else text[:limit - 3] + "..."
