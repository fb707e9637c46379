"""Benchmark: save_preds.py's caching time for cifar10 at MICO size, on the CPU, before and after dev
and final models were queried only on the points the attacks read.

MICO's cifar10 track has 3 scenarios of 100 train models (shadows: the whole union of challenge
points, about 40,000) and 100 dev + final models (200 challenge points each). Before, every model
was queried on the whole union; now a dev/final model is queried on its own 200 points plus RMIA's
population (5,000 by default, ``--rmia-population``), or on its own points only
(``--rmia-population 0``). This runs save_preds.py's own per-model path (``UnionQuery`` and
``cache.update``: model loading, the forward pass, signals, the cache write) on MICO's CNN with
random weights (the time does not depend on them) and random images, for a sample of ``--models``
models of each kind, then extrapolates to the whole track. Each row is printed as it is measured.

    python bench/bench_save_preds.py [--models 2] [--union 40000] [--population 5000]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import save_preds  # noqa: E402
from attacks.options import AttackOptions  # noqa: E402
from attacks.suite import target_reads  # noqa: E402
from challenges import cache  # noqa: E402
from models import build_model  # noqa: E402

MICO = {"scenarios": 3, "train": 100, "targets": 100, "own": 200, "dataset": 60_000}


def time_models(outputs, model_files, cache_dir, points_of) -> float:
    """Mean seconds per model of save_preds' path for ``model_files``; ``points_of(k)``: what model k holds."""
    times = []
    for k, path in enumerate(model_files):
        md = SimpleNamespace(model_file=path)
        out = os.path.join(cache_dir, f"model_{k}.npz")
        if os.path.exists(out):
            os.remove(out)
        t = time.perf_counter()
        cache.update(out, path, points_of(k), outputs.views, False, functools.partial(outputs, md))
        times.append(time.perf_counter() - t)
    return float(np.mean(times))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", type=int, default=2, help="models timed per kind (the sample)")
    p.add_argument("--union", type=int, default=40_000, help="points in a scenario's union (MICO cifar10: ~40,000)")
    p.add_argument("--own", type=int, default=MICO["own"], help="challenge points per dev/final model (MICO: 200)")
    p.add_argument("--population", type=int, default=AttackOptions().rmia_population, help="RMIA's population")
    p.add_argument("--dataset", type=int, default=MICO["dataset"], help="images in the base dataset (CIFAR-10: 60,000)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    n = max(args.dataset, args.union)
    dataset = SimpleNamespace(
        x=rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), y=rng.integers(0, 10, n).astype(np.int64)
    )
    union = np.sort(rng.choice(n, args.union, replace=False))
    own = [np.sort(rng.choice(args.union, args.own, replace=False)) for _ in range(args.models)]
    reads = target_reads([AttackOptions(attack="rmia", rmia_population=args.population, seed=args.seed)])
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for k in range(args.models):
            files.append(os.path.join(tmp, f"model_{k}.pt"))
            torch.save(build_model("cifar10").state_dict(), files[-1])
        q_args = SimpleNamespace(challenge="cifar10", batch_size=4096)
        outputs = save_preds.UnionQuery(q_args, dataset, "cifar10_inf", union, ["orig"], torch.device("cpu"))
        t = time.perf_counter()
        outputs(SimpleNamespace(model_file=files[0]), union[:1], False)  # builds the union's inputs once
        setup = time.perf_counter() - t
        print(f"union inputs ({args.union} images) built once per scenario: {setup:.1f} s", flush=True)
        rows = {
            "whole union (train models; dev/final before)": lambda k: union,
            f"own {args.own} + RMIA population {args.population} (dev/final, default)": lambda k: union[
                np.union1d(own[k], reads(len(union), own[k]))
            ],
            f"own {args.own} only (dev/final, --rmia-population 0)": lambda k: union[own[k]],
        }
        per_model = {}
        for label, points_of in rows.items():
            per_model[label] = time_models(outputs, files, tmp, points_of)
            print(f"{label}: {len(points_of(0))} points, {per_model[label]:.2f} s per model", flush=True)
    whole, pop, bare = per_model.values()
    n_train, n_targets = MICO["scenarios"] * MICO["train"], MICO["scenarios"] * MICO["targets"]
    before = n_train * whole + n_targets * whole + MICO["scenarios"] * setup
    after = {
        "default": n_train * whole + n_targets * pop + MICO["scenarios"] * setup,
        "--rmia-population 0": n_train * whole + n_targets * bare + MICO["scenarios"] * setup,
    }
    print(
        f"cifar10 at MICO size, CPU ({torch.get_num_threads()} thread(s)), extrapolated from {args.models} model(s) "
        f"per kind: dev+final {n_targets * whole / 60:.0f} min before, {n_targets * pop / 60:.1f} min after "
        f"(default), {n_targets * bare / 60:.1f} min (--rmia-population 0); whole save_preds.py "
        f"{before / 3600:.2f} h before, {after['default'] / 3600:.2f} h after, "
        f"{after['--rmia-population 0'] / 3600:.2f} h with --rmia-population 0"
    )
    return {"setup_s": setup, "per_model_s": per_model, "before_s": before, "after_s": after}


if __name__ == "__main__":
    main()
