"""Benchmark: every attack's wall time and peak memory at MICO's full size, without training.

Builds one scenario (``<track>_inf``) at MICO's sizes under ``--out``: model folders holding the
seed files, solution.csv (train models) and a placeholder model.pt, and the signal cache in
save_preds.py's exact format (challenges/cache.py) with the points save_preds.py would cache: the
scenario's union of challenge points for a train model, its own challenge points and RMIA's
population for a dev or final one. The signals are drawn, not computed by a model: logits from a
per-point difficulty plus a membership shift, phi and Mentr from those logits as save_preds.py
derives them (models.query). Sizes, per scenario: 100 train, 50 dev and 50 final models;
cifar10 N = 60,000 with the 18 query views of ``save_preds.py --augment --shifts 1`` and logits
(``--save-logits``); purchase100 N = 197,324, one view, logits too (``--no-logits`` leaves them
out, as save_preds.py does without --save-logits).

Then it runs, one at a time and each in a fresh subprocess, ``run_lira_mia.py --evaluate`` with
every attack of the --compare line-up (which is also --attack auto's), ``--attack auto
--evaluate`` and ``--compare``, and prints a row per run as soon as it ends:

    | <case> | <wall> s | <peak RSS> GiB | <result> |

Peak RSS is the child's own: its VmHWM, polled by the watchdog (``os.wait4``'s ru_maxrss would
also count the pages shared at fork, i.e. this process's RSS then). A watchdog polls the child's resident
memory and kills it past ``--kill-gib`` (result "over the limit: killed at <x> GiB") or when the
machine's available memory falls under ``--floor-gib`` (so a run cannot take the machine down);
a run is started only when at least ``--need-gib`` is available (it waits up to ``--wait`` s).
A run over ``--limit-gib`` is marked "over". A rerun with the same sizes reuses the cache
(``<out>/bench.json`` is written once the cache is complete).

    python bench/bench_memory.py --track purchase100 --out /tmp/memdata

The smaller sizes (``--n-points``, ``--len-training``, ``--len-challenge``, ``--train-models``,
``--target-models``) are for the smoke test (tests/test_bench.py) and for measuring at a fraction.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from typing import NamedTuple

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import run_lira_mia  # noqa: E402
from attacks.options import AttackOptions  # noqa: E402
from attacks.suite import AUTO_LINEUP, COMPARE, target_reads  # noqa: E402
from challenges import cache, cli  # noqa: E402
from challenges.fileio import write_text  # noqa: E402
from challenges.layout import ModelDir  # noqa: E402
from challenges.scenario import cached_points, scenario_points  # noqa: E402
from challenges.splits import reconstruct  # noqa: E402
from challenges.tracks import LEN_CHALLENGE, TRACKS, ChallengeParams, save_params  # noqa: E402
from models.query import signals_from_logits, view_names  # noqa: E402
from production.folders import model_seeds  # noqa: E402

# MICO's sizes: N (cifar10's from the track, purchase100's the dataset's), training-set size,
# and the query views save_preds.py caches (--augment --shifts 1 on cifar10)
SIZES = {
    "purchase100": (197_324, TRACKS["purchase100"].len_training, view_names(False, 0)),
    "cifar10": (TRACKS["cifar10"].n_points, TRACKS["cifar10"].len_training, view_names(True, 1)),
}
N_TRAIN, N_TARGET = 100, 50  # MICO: 100 train models, 50 dev and 50 final per scenario
EFFECT = 1.5  # a member's shift of its true-class margin


class Build(NamedTuple):
    """What the cache under ``--out`` was built with (``<out>/bench.json``)."""

    track: str
    n_points: int
    len_training: int
    len_challenge: int
    n_train: int
    n_target: int
    views: list
    logits: bool


def _write_folder(md, phase: str, seeds) -> None:
    os.makedirs(md.path, exist_ok=True)
    names = ("seed_challenge", "seed_training", "seed_membership")
    for name, seed in zip(names if phase == "train" else names[:1], seeds):
        write_text(os.path.join(md.path, name), f"{seed}\n")
    write_text(md.model_file, f"placeholder {md.key}\n")  # distinct bytes: each model its own stamp


def _signals(rng, margin: np.ndarray, labels: np.ndarray, n_views: int, n_classes: int) -> dict:
    """Logits [P, V, C] whose true class leads by about ``margin`` [P], with phi and Mentr from them."""
    p = len(margin)
    logits = rng.standard_normal((p, n_views, n_classes), dtype=np.float32)
    lead = margin[:, None] + np.log(n_classes) + rng.normal(0, 0.3, (p, n_views))
    logits[np.arange(p), :, labels] += lead.astype(np.float32)
    flat = torch.from_numpy(logits.reshape(p * n_views, n_classes))
    phi, mentr = signals_from_logits(flat, torch.from_numpy(np.repeat(labels, n_views)))
    return {"phi": phi.numpy().reshape(p, n_views), "mentr": mentr.numpy().reshape(p, n_views), "logits": logits}


def build(out: str, b: Build, scenario: str) -> bool:
    """Write the challenge tree and cache for ``b`` under ``out``; False if ``<out>/bench.json``
    says they are there already (it is written last, so a killed build is built again)."""
    data_dir, cache_dir = os.path.join(out, "data"), os.path.join(out, "cache")
    record = os.path.join(out, "bench.json")
    if os.path.exists(record):
        with open(record) as f:
            if json.load(f) == b._asdict():
                return False
        os.remove(record)
    for d in (data_dir, cache_dir, os.path.join(out, "report")):
        shutil.rmtree(d, ignore_errors=True)
    track_dir = os.path.join(data_dir, b.track)
    params = ChallengeParams(
        b.track, b.n_points, b.len_training, b.len_challenge, os.path.join(track_dir, TRACKS[b.track].dataset)
    )
    save_params(data_dir, params)  # N is in challenge.json: no base dataset is read
    counts = {"train": b.n_train, "dev": b.n_target, "final": b.n_target}
    phases = [ph for ph, n in counts.items() for _ in range(n)]
    seeds = [model_seeds(23, i) for i in range(len(phases))]  # dev/final folders get seed_challenge only
    for i, phase in enumerate(phases):
        _write_folder(ModelDir(data_dir, b.track, scenario, phase, i), phase, seeds[i])
    mds, _, union = scenario_points(data_dir, b.track, scenario, params, b.n_points)
    splits = [reconstruct(b.n_points, b.len_training, b.len_challenge, *seeds[md.model_id]) for md in mds]
    for md, s in zip(mds, splits):
        if md.phase == "train":
            write_text(os.path.join(md.path, "solution.csv"), ",".join(map(str, s.solutions())) + "\n")
    rng = np.random.default_rng(0)
    n_classes = TRACKS[b.track].num_classes
    labels = rng.integers(0, n_classes, b.n_points)
    difficulty = rng.normal(2.0, 1.5, b.n_points)
    reads = target_reads([o for _, o in COMPARE + AUTO_LINEUP] + [AttackOptions(attack="auto")])
    for md, s in zip(mds, splits):
        points = cached_points(md, s, union, reads)
        member = np.isin(points, s.train_indices())
        margin = difficulty[points] + EFFECT * member + rng.normal(0, 1.0, len(points))
        arrays = _signals(rng, margin, labels[points], len(b.views), n_classes)
        if not b.logits:
            del arrays["logits"]
        cache.write(cache.cache_file(cache_dir, md), points, b.views, cache.model_stamp(md.model_file), arrays)
    write_text(record, json.dumps(b._asdict()) + "\n")
    return True


def cases(track: str, scenario: str, out: str) -> list[tuple[str, list[str]]]:
    """(name, run_lira_mia.py arguments) of every run: each line-up attack with --evaluate, then
    --attack auto --evaluate and --compare."""
    run_lira_mia.build_parser()  # fills OPTION_FLAGS, which option_flags reads
    base = ["--challenge", track, "--scenario", scenario, "--data-dir", os.path.join(out, "data")]
    base += ["--cache-dir", os.path.join(out, "cache"), "--report-dir", os.path.join(out, "report")]
    rows = dict(COMPARE + AUTO_LINEUP)
    out_cases = [(label, base + ["--evaluate"] + run_lira_mia.option_flags(o)) for label, o in rows.items()]
    out_cases.append(("--attack auto", base + ["--attack", "auto", "--evaluate"]))
    return out_cases + [("--compare", base + ["--compare"])]


def _kib(path: str, key: str) -> int | None:
    """A ``key: <n> kB`` line of a /proc status or meminfo file, in KiB (None if unreadable)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def available_gib() -> float:
    return (_kib("/proc/meminfo", "MemAvailable") or 0) / 2**20


class Run:
    """One measured run: wall time, the child's own peak resident memory, its exit status, and
    why the watchdog killed it (None if it did not)."""

    def __init__(self):
        self.wall, self.peak_gib, self.rc, self.killed, self.hwm_gib = 0.0, 0.0, 0, None, 0.0


def _watch(pid: int, done: threading.Event, kill_gib: float, floor_gib: float, run: Run, poll: float) -> None:
    """Kill ``pid`` when its resident memory passes ``kill_gib`` or the machine's available memory
    falls under ``floor_gib``; the caller reaps the child only after this returns (so ``pid`` is
    never another process)."""
    while not done.wait(poll):
        rss = (_kib(f"/proc/{pid}/status", "VmRSS") or 0) / 2**20
        # the high-water mark of the child's own memory since its exec; ru_maxrss would also count
        # the pages it shared with this process when it was forked (this process's RSS then)
        run.hwm_gib = max(run.hwm_gib, (_kib(f"/proc/{pid}/status", "VmHWM") or 0) / 2**20)
        reason = None
        if rss > kill_gib:
            reason = f"over the limit: killed at {rss:.2f} GiB"
        elif available_gib() < floor_gib:
            reason = f"killed at {rss:.2f} GiB: the machine had under {floor_gib:g} GiB available"
        if reason:
            run.killed = reason
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
            return


def measure(argv: list[str], log: str, kill_gib: float, floor_gib: float, poll: float = 0.05) -> Run:
    """Run ``run_lira_mia.py argv`` in a fresh process (output to ``log``) under the watchdog."""
    run = Run()
    with open(log, "w") as f:
        t = time.perf_counter()
        child = subprocess.Popen([sys.executable, os.path.join(ROOT, "run_lira_mia.py"), *argv], stdout=f, stderr=f)
        done = threading.Event()
        watchdog = threading.Thread(target=_watch, args=(child.pid, done, kill_gib, floor_gib, run, poll))
        watchdog.start()
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped
        run.wall = time.perf_counter() - t
        done.set()
        watchdog.join()
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = run.rc = os.waitstatus_to_exitcode(status)
    # VmHWM as last polled (it misses at most the last poll interval); ru_maxrss (KiB on Linux) where
    # the child ended before the first poll
    run.peak_gib = run.hwm_gib or usage.ru_maxrss / 2**20
    return run


def wait_for_memory(need_gib: float, wait: float) -> None:
    """Return once ``need_gib`` is available; SystemExit after ``wait`` seconds without it."""
    deadline = time.monotonic() + wait
    while available_gib() < need_gib:
        if time.monotonic() > deadline:
            raise SystemExit(
                f"bench_memory.py: only {available_gib():.1f} GiB available, --need-gib {need_gib:g} asked; "
                "wait for other work to finish or lower --need-gib"
            )
        time.sleep(5)


def result(run: Run, limit_gib: float, log: str) -> str:
    if run.killed:
        return run.killed
    if run.rc != 0:
        with open(log) as f:
            tail = [line.strip() for line in f.read().splitlines() if line.strip()][-1:]
        return f"failed (exit {run.rc}): {tail[0] if tail else 'no output'}"
    return "over" if run.peak_gib > limit_gib else "ok"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=cli.Formatter)
    p.add_argument("--track", choices=sorted(SIZES), default="purchase100", help="which MICO track's sizes")
    p.add_argument("--out", required=True, help="folder of the tree, cache, reports and logs (kept; a rerun reuses it)")
    p.add_argument("--n-points", type=int, default=None, help="dataset size N (MICO's when omitted)")
    p.add_argument("--len-training", type=int, default=None, help="training-set size (MICO's when omitted)")
    p.add_argument("--len-challenge", type=int, default=LEN_CHALLENGE, help="members (= non-members) per model")
    p.add_argument("--train-models", type=int, default=N_TRAIN, help="train models (shadows)")
    p.add_argument("--target-models", type=int, default=N_TARGET, help="dev models, and as many final ones")
    p.add_argument("--no-logits", action="store_true", help="cache phi and Mentr only (no --save-logits)")
    p.add_argument(
        "--only",
        action="append",
        help="run only the cases whose name contains this (repeatable; --only=--compare for a name with a dash first)",
    )
    p.add_argument("--limit-gib", type=float, default=16.0, help="a run with a higher peak RSS is marked 'over'")
    p.add_argument("--kill-gib", type=float, default=16.5, help="the watchdog kills a run past this RSS")
    p.add_argument("--floor-gib", type=float, default=1.0, help="... or when the machine has less available")
    p.add_argument("--need-gib", type=float, default=18.0, help="start a run only with this much available")
    p.add_argument("--wait", type=float, default=600.0, help="seconds to wait for --need-gib before giving up")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    n, len_training, views = SIZES[args.track]
    b = Build(
        args.track,
        args.n_points or n,
        args.len_training or len_training,
        args.len_challenge,
        args.train_models,
        args.target_models,
        views,
        not args.no_logits,
    )
    scenario = f"{args.track}_inf"
    t = time.perf_counter()
    built = build(args.out, b, scenario)
    how = f"built in {time.perf_counter() - t:.0f} s" if built else "reused"
    print(
        f"cache: {scenario}, {b.n_train} + {b.n_target} + {b.n_target} models, N = {b.n_points:,}, "
        f"{len(b.views)} view(s), logits {'kept' if b.logits else 'not kept'} ({how})"
    )
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print("| case | wall | peak RSS | result |\n|---|---|---|---|", flush=True)
    os.makedirs(os.path.join(args.out, "logs"), exist_ok=True)
    worst = 0.0
    for i, (name, cmd) in enumerate(cases(args.track, scenario, args.out)):
        if args.only and not any(s in name for s in args.only):
            continue
        wait_for_memory(args.need_gib, args.wait)
        log = os.path.join(args.out, "logs", f"{i:02d}.log")
        run = measure(cmd, log, args.kill_gib, args.floor_gib)
        worst = max(worst, run.peak_gib)
        verdict = result(run, args.limit_gib, log)
        print(f"| {name} | {run.wall:.0f} s | {run.peak_gib:.2f} GiB | {verdict} |", flush=True)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"peak RSS of the worst run: {worst:.2f} GiB (limit {args.limit_gib:g} GiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
