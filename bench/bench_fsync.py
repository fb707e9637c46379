"""Benchmark: what flushing to the disk costs the pipeline's writers (challenges.fileio).

Writes ``--n`` files of each kind through the writers the pipeline uses, once with ``os.fsync``
and once with it replaced by a no-op (what the writers did before they flushed), alternating,
``--repeats`` times; the fastest run of each counts, because other work on the machine slows
runs at random (the load average is printed). Each row is printed as soon as it is measured:

    <kind>: <n> files, <ms> ms/file with fsync, <ms> ms/file without, +<ms> ms/file

Kinds: a prediction.csv (200 scores), a cache file (40,000 points, one view, as on MICO's
purchase100), a purchase100 model folder (model.pt, seeds, training set) and a cifar10 model.pt.
Files go to a temporary folder under ``--dir``: measure on the disk the pipeline writes to
(``/tmp`` may be a RAM disk, where fsync is free).

    python bench/bench_fsync.py [--n 50] [--repeats 3] [--dir .]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from challenges import cache, submission  # noqa: E402
from challenges.layout import ModelDir  # noqa: E402
from models import build_model  # noqa: E402
from models.train import TrainResult  # noqa: E402
from production import folders  # noqa: E402

STAMP = {"model_size": 1, "model_mtime_ns": 2, "model_inode": 3, "model_ctime_ns": 4, "model_sha256": "0"}


def writers(points: int = 40_000) -> dict:
    """kind -> write(folder, i): one file (or folder) of that kind, the i-th."""
    rng = np.random.default_rng(0)
    scores = rng.random(200)
    phi = rng.standard_normal((points, 1)).astype(np.float32)
    mlp = TrainResult(build_model("purchase100"), 0.5, 0.5, None)
    cnn = build_model("cifar10")
    train = np.arange(1000)

    def model_folder(d, i):
        md = ModelDir(d, "purchase100", "purchase100_inf", "shadow", i)
        job = folders.Job(md, train, train, i, {"seed_challenge": "1\n"}, training_set=True)
        folders.write_folder(job, mlp)

    return {
        "prediction.csv": lambda d, i: submission.write_prediction(os.path.join(d, f"p{i}.csv"), scores),
        "cache file": lambda d, i: cache.write(
            os.path.join(d, f"model_{i}.npz"), np.arange(points), ["orig"], STAMP, {"phi": phi, "mentr": phi}
        ),
        "purchase100 model folder": model_folder,
        "cifar10 model.pt": lambda d, i: folders.save_state_dict(cnn, os.path.join(d, f"model_{i}.pt")),
    }


def timed(write, n: int, root: str, flush: bool) -> float:
    """Seconds per file for ``n`` writes into a fresh folder under ``root``."""
    real = os.fsync
    folder = tempfile.mkdtemp(prefix="bench_fsync.", dir=root)
    if not flush:
        os.fsync = lambda fd: None
    try:
        start = time.perf_counter()
        for i in range(n):
            write(folder, i)
        return (time.perf_counter() - start) / n
    finally:
        os.fsync = real
        shutil.rmtree(folder)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=50, help="files of each kind per run")
    p.add_argument("--repeats", type=int, default=3, help="runs of each variant; the fastest counts")
    p.add_argument("--points", type=int, default=40_000, help="points in a cache file")
    p.add_argument("--dir", default=".", help="where the temporary files go (on the disk to measure)")
    args = p.parse_args(argv)
    if args.n < 1 or args.repeats < 1 or args.points < 1:
        p.error("--n, --repeats and --points must be positive")
    print(f"load average {os.getloadavg()[0]:.2f}, writing under {os.path.abspath(args.dir)}", flush=True)
    rows = []
    for kind, write in writers(args.points).items():
        best = {True: float("inf"), False: float("inf")}
        for _ in range(args.repeats):
            for flush in (True, False):
                best[flush] = min(best[flush], timed(write, args.n, args.dir, flush))
        row = {"kind": kind, "n": args.n, "with": best[True], "without": best[False]}
        rows.append(row)
        print(
            f"{kind}: {args.n} files, {1e3 * row['with']:.2f} ms/file with fsync, "
            f"{1e3 * row['without']:.2f} ms/file without, +{1e3 * (row['with'] - row['without']):.2f} ms/file",
            flush=True,
        )
    return rows


if __name__ == "__main__":
    main()
