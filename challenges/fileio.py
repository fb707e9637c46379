"""Writing files so that a reader never sees a partial one, and a failure leaves nothing behind."""
from __future__ import annotations

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
