"""Train extra shadow models with a scenario's MICO recipe (DP-SGD for hi/lo), many at once.

--design mico (default): fresh MICO-random training sets, written as new train models with ids
--first-id .. and seeds derived from (--seed, scenario, id); each brings 200 new challenge points,
and an extra_shadow file marks it as ours (a balanced design leaves its challenge points out).

--design balanced: --n (even) shadows whose training sets are designed: every challenge point of
the scenario is IN for exactly the same number of them (--fraction of them, half by default, or
the nearest share that lets every shadow reach LEN_TRAINING), the rest drawn from outside the
challenge points, class balance kept. They go to <scenario>/shadow/model_<k>/ with their training
set stored explicitly; they are shadows only (never targets, never submitted, never evaluated). A
design can grow by whole groups: --n 64 after --n 32 (f = 1/2: pairs; f = 3/4: groups of 4) keeps
the first 32.

Both: models train --parallel at a time with the batched trainer (default: as many as the
device's memory holds), a folder appears only once complete, a rerun trains only what is missing,
--shard i/n trains every n-th model from the i-th (SLURM: --shard
$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT), and concurrent runs on one scenario split the work.
"""

from __future__ import annotations

import os

from challenges import cli
from challenges.datasets import load_dataset
from challenges.tracks import SHADOW_PHASE, load_params, scenario_suffix
from models.train import recipe_for
from production.design import designed_jobs, mico_jobs
from production.folders import train_with_progress


def parse_args(argv=None):
    p = cli.parser(__doc__, scenario=None)
    p.add_argument("--scenario", required=True, help="scenario whose recipe to use, e.g. purchase100_inf")
    p.add_argument("--n", type=int, required=True, help="number of extra shadow models")
    p.add_argument(
        "--design",
        choices=("mico", "balanced"),
        default="mico",
        help="MICO-random training sets (new train models) or a balanced design (shadow/)",
    )
    p.add_argument(
        "--fraction",
        type=float,
        default=0.5,
        help="--design balanced: share of the shadows each challenge point is IN for (MICO's targets: about 0.76)",
    )
    p.add_argument(
        "--first-id",
        type=int,
        default=1000,
        help="--design mico: id of the first extra model (MICO's own ids are 0-199)",
    )
    p.add_argument("--seed", type=int, default=0, help="seeds and designs are drawn from (seed, scenario)")
    p.add_argument("--shard", type=cli.parse_shard, default="0/1", help="i/n: train only models with index %% n == i")
    p.add_argument(
        "--parallel",
        type=int,
        default=None,
        help="models trained at once (default: as many as the device's free memory holds)",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, ...")
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    p.add_argument("--batch-size", type=int, default=None, help="override the recipe's batch size")
    p.add_argument("--lr", type=float, default=None, help="override the recipe's learning rate")
    args = p.parse_args(argv)
    if args.n < 1 or (args.design == "balanced" and args.n % 2):
        p.error("--n must be positive (and even with --design balanced)")
    if not 0 < args.fraction < 1:
        p.error("--fraction must be between 0 and 1")
    if args.parallel is not None and args.parallel < 1:
        p.error("--parallel must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    params = load_params(args.data_dir, args.challenge)
    dataset = load_dataset(params)
    if args.design == "balanced":
        jobs, design = designed_jobs(
            args.data_dir, args.challenge, args.scenario, params, dataset, args.n, args.seed, args.fraction
        )
        print(
            f"{args.scenario}: balanced design of {args.n} shadows over {len(design.pool)} challenge points, "
            f"each IN for {design.in_count} (f = {design.fraction:.3f}), {params.len_training} records each, "
            f"in {args.data_dir}/{args.challenge}/{args.scenario}/{SHADOW_PHASE}/"
        )
    else:
        jobs = mico_jobs(
            args.data_dir, args.challenge, args.scenario, params, len(dataset), args.n, args.seed, args.first_id
        )
    shard, n_shards = args.shard
    jobs = jobs[shard::n_shards]
    finished = sum(os.path.isdir(j.md.path) for j in jobs)
    print(f"{args.scenario}: {finished} of {len(jobs)} shadow model(s) of this shard already done")
    overrides = {
        k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size), ("lr", args.lr)) if v is not None
    }
    done = train_with_progress(
        jobs,
        params,
        dataset,
        f"{args.scenario}: shadows",
        device=args.device,
        parallel=args.parallel,
        recipe=recipe_for(args.challenge, scenario_suffix(args.scenario), **overrides),
    )
    print(f"{args.scenario}: {len(done)} shadow model(s) trained by this run")
    return 0


if __name__ == "__main__":
    cli.run(main, "train_shadows.py")
