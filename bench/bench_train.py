"""Benchmark: batched training (models/batched.py) against models.train.train_model, one model
at a time, on the same data, seeds and recipe.

Cases: purchase100_inf, purchase100_lo, cifar10_inf, cifar10_lo (MICO's recipes; 'lo' is DP-SGD
at epsilon 4). Each model has its own random training set drawn from random data (binary rows
for purchase100, normal images for cifar10). The default size finishes in a few minutes on two
CPU cores: purchase100 5,000 rows, 4,000 per model, 8 models, all 30 epochs; cifar10 300
images, 256 per model, 4 models, 1 epoch. ``--full`` runs MICO's sizes (purchase100: 197,324
rows, 150,000 per model; cifar10: 60,000 images, 50,000 per model; 100 models each, full
epochs), meant for ``--device cuda``. The sequential trainer is timed on ``--seq-models`` models.
Both trainers are warmed up first (imports, kernels, the noise multiplier search, which both
cache), so the times are those of training and the final train-accuracy pass; each is timed
``--repeats`` times, alternating, and the fastest run counts, because other work on the machine
(the load average is printed) slows runs at random.

Models trained by both are compared: the trainers follow the same maths and, on the CPU, draw
the same random numbers, so the largest parameter difference shows float rounding only (DP-SGD
over many epochs can amplify it); with device streams (CUDA's default, see models/batched.py)
DP models draw other random numbers, so no difference is reported for them. Each case prints a
detail line and then, as soon as it is measured, its row
``<case>: sequential <s> s/model, batched <s> s/model, speedup <r>x (K=<k>, <device>)``;
``--json PATH`` also writes the rows (and models per minute, also scaled to the recipe's full
epochs when ``--epochs`` cut them) to PATH.

    python bench/bench_train.py [--device cpu] [--epochs N] [--cases purchase100_inf ...]
    python bench/bench_train.py --device cuda --full
    python bench/bench_train.py --device cuda --full --cases cifar10_lo --epochs 1 --json row.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from challenges.fileio import write_text
from models.batched import auto_parallel, resolve_streams, train_many
from models.loading import resolve_device
from models.privacy import find_noise_multiplier
from models.train import recipe_for, train_model

CASES = ("purchase100_inf", "purchase100_lo", "cifar10_inf", "cifar10_lo")
# track -> (records, training-set size per model, models, epochs or None for the recipe's)
SMALL = {"purchase100": (5_000, 4_000, 8, None), "cifar10": (300, 256, 4, 1)}
FULL = {"purchase100": (197_324, 150_000, 100, None), "cifar10": (60_000, 50_000, 100, None)}


def make_data(track: str, n_points: int, n_train: int, n_models: int, seed: int = 0):
    """Random inputs and labels, and one random training set (indices) per model."""
    g = torch.Generator().manual_seed(seed)
    if track == "purchase100":
        x = (torch.rand(n_points, 600, generator=g) < 0.1).float()
        y = torch.randint(0, 100, (n_points,), generator=g)
    else:
        x = torch.randn(n_points, 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (n_points,), generator=g)
    rng = np.random.default_rng(seed)
    return x, y, [rng.permutation(n_points)[:n_train] for _ in range(n_models)]


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def warm_up(track: str, recipe, x, y, dev: torch.device) -> None:
    """A short run of both trainers: imports, first-call kernels and allocations."""
    small = recipe_for(track, "lo" if recipe.private else "inf", epochs=1, batch_size=8)
    train_model(track, small, x[:16], y[:16], device=dev, seed=0)
    list(train_many(track, small, x, y, [np.arange(16)] * 2, [0, 1], device=dev))


def run_case(case: str, args, dev: torch.device) -> dict:
    """One case's row: seconds per model, sequential and batched, the group size K and the rest."""
    track, suffix = case.rsplit("_", 1)
    n_points, n_train, n_models, epochs = (FULL if args.full else SMALL)[track]
    n_models = args.models or n_models
    epochs = args.epochs or epochs
    recipe = recipe_for(track, suffix, **({"epochs": epochs} if epochs else {}))
    full_epochs = recipe_for(track, suffix).epochs
    x, y, sets = make_data(track, n_points, n_train, n_models)
    x, y = x.to(dev), y.to(dev)
    seeds = list(range(1, n_models + 1))
    warm_up(track, recipe, x, y, dev)
    if recipe.private:
        steps = -(-n_train // recipe.batch_size)
        find_noise_multiplier(recipe.epsilon, recipe.delta, 1.0 / steps, steps * recipe.epochs)
    n_seq = min(args.seq_models or (2 if args.full else 4), n_models)
    k = min(args.parallel or auto_parallel(track, recipe, dev, n_train), n_models)  # as train_many

    def timed(fn, n):  # seconds per model, and the results
        sync(dev)
        start = time.perf_counter()
        out = fn()
        sync(dev)
        return (time.perf_counter() - start) / n, out

    t_seq = t_batched = float("inf")
    for _ in range(
        args.repeats or (1 if args.full else 3)
    ):  # alternate, keep the fastest: other work on the machine adds noise
        t, seq = timed(
            lambda: [
                train_model(track, recipe, x[s], y[s], device=dev, seed=seed) for s, seed in zip(sets[:n_seq], seeds)
            ],
            n_seq,
        )
        t_seq = min(t_seq, t)
        t, res = timed(
            lambda: [
                r for _, r in train_many(track, recipe, x, y, sets, seeds, parallel=k, device=dev, streams=args.streams)
            ],
            n_models,
        )
        t_batched = min(t_batched, t)

    same_numbers = not recipe.private or resolve_streams(args.streams, dev) == "exact"
    diff = (
        max(
            (a - b).abs().max().item()
            for r, s in zip(res, seq)
            for a, b in zip(r.model.parameters(), s.model.parameters())
        )
        if same_numbers
        else None
    )
    acc = np.mean([r.train_accuracy for r in res[:n_seq]]), np.mean([s.train_accuracy for s in seq])
    shown = f"{diff:.2e}" if same_numbers else "not compared (device streams: other random numbers)"
    print(
        f"  {case}: {n_models} models x {n_train} records, {recipe.epochs} of {full_epochs} epochs; largest "
        f"parameter difference {shown} over {n_seq} models; train accuracy {acc[0]:.3f} batched, "
        f"{acc[1]:.3f} sequential; load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    scale = full_epochs / recipe.epochs  # per-model time grows linearly with the epochs
    return dict(
        case=case,
        device=str(dev),
        models=n_models,
        records=n_points,
        train_size=n_train,
        epochs=recipe.epochs,
        recipe_epochs=full_epochs,
        parallel=k,
        sequential_models=n_seq,
        sequential_s_per_model=t_seq,
        batched_s_per_model=t_batched,
        speedup=t_seq / t_batched,
        batched_models_per_minute=60 / t_batched,
        batched_models_per_minute_full_epochs=60 / (t_batched * scale),
        sequential_models_per_minute_full_epochs=60 / (t_seq * scale),
        largest_parameter_difference=diff,
        train_accuracy_batched=float(acc[0]),
        train_accuracy_sequential=float(acc[1]),
        load_average=os.getloadavg()[0],
    )


def row_line(row: dict) -> str:
    line = (
        f"{row['case']}: sequential {row['sequential_s_per_model']:.3f} s/model, batched "
        f"{row['batched_s_per_model']:.3f} s/model, speedup {row['speedup']:.2f}x "
        f"(K={row['parallel']}, {row['device'].split(':')[0]})"
    )
    if row["epochs"] != row["recipe_epochs"]:
        line += (
            f"; {row['epochs']} of {row['recipe_epochs']} epochs: "
            f"{row['batched_models_per_minute_full_epochs']:.1f} models/min at full epochs"
        )
    return line


def write_json(path: str, rows: list[dict]) -> None:
    write_text(path, json.dumps(rows, indent=1) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, ...")
    p.add_argument("--full", action="store_true", help="MICO's sizes (for a GPU)")
    p.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES), help="cases to run")
    p.add_argument("--epochs", type=int, default=None, help="override the epochs of every case")
    p.add_argument("--models", type=int, default=None, help="models per case (default by size)")
    p.add_argument("--seq-models", type=int, default=None, help="models timed sequentially (default: 4; 2 with --full)")
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="time each trainer this often, keep the fastest (default: 3; 1 with --full)",
    )
    p.add_argument("--parallel", type=int, default=None, help="models per group (default: auto_parallel)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--streams", default="auto", help="batched trainer's random streams: auto, exact or device")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    print(f"device {dev}, {torch.get_num_threads()} threads, torch {torch.__version__}", flush=True)
    rows = []
    for case in args.cases:
        row = run_case(case, args, dev)
        rows.append({**row, "line": row_line(row)})
        print(rows[-1]["line"], flush=True)
        if args.json:
            write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
