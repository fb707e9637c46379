"""Train extra shadow models with a scenario's MICO recipe (DP-SGD for hi/lo), many at once.

--design mico (default): fresh MICO-random training sets, written as new train models with ids
--first-id .. and seeds derived from (--seed, scenario, id); each brings 200 new challenge points,
and an extra_shadow file marks it as ours (a balanced design leaves its challenge points out).

--design balanced: --n shadows whose training sets are designed: every challenge point of the
scenario is IN for exactly the same number of them (--fraction of them, half by default, or the
nearest share that lets every shadow reach LEN_TRAINING; never all or none), the rest drawn from
outside the challenge points, class balance kept. --n is a multiple of the group (f = 1/2: pairs;
f = 3/4: groups of 4; a moved share keeps its own, e.g. 8 at 5/8, as the design grows). They go to
<scenario>/shadow/model_<k>/ with their training set stored explicitly; they are shadows only (never
targets, never submitted, never evaluated). A scenario holds one design (shadow/design.json, written
under a lock: a run with another --seed or --fraction is refused), which can grow by whole groups:
--n 64 after --n 32 keeps the first 32.

The recipe (--epochs, --batch-size, --lr over the scenario's MICO recipe, DP parameters included)
is recorded with the shadows: in design.json, and for --design mico in <scenario>/extra_shadows.json
and each extra's recipe.json. Growing either with another recipe is refused, naming the flag; a
record from before recipes were recorded counts as MICO's recipe.

Both: models train --parallel at a time with the batched trainer (default: as many as the
device's memory holds), a folder appears only once complete, a rerun trains only what is missing
(or incomplete: a model.pt deleted since), --shard i/n trains every n-th model from the i-th
(SLURM: --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT), and concurrent runs on one scenario
split the work.
"""

from __future__ import annotations

import os

from challenges import cli
from challenges.datasets import load_dataset
from challenges.tracks import SHADOW_PHASE, load_params, scenario_suffix
from models import set_threads
from models.train import recipe_for
from production.design import designed_jobs, mico_jobs, requested_in_count
from production.folders import complete, train_with_progress

DEFAULT_FIRST_ID = 1000  # MICO's own ids are 0-199


def parse_args(argv=None):
    p = cli.parser(__doc__, scenario=None)
    p.add_argument("--scenario", required=True, help="scenario whose recipe to use, e.g. purchase100_inf")
    p.add_argument("--n", type=cli.positive_int, required=True, help="number of extra shadow models")
    p.add_argument(
        "--design",
        choices=("mico", "balanced"),
        default="mico",
        help="MICO-random training sets (new train models) or a balanced design (shadow/)",
    )
    p.add_argument(
        "--fraction",
        type=float,
        default=None,
        help="--design balanced: share of the shadows each challenge point is IN for (default 0.5; "
        "--n a multiple of its denominator: 4 at 0.75; MICO's targets: about 0.76)",
    )
    p.add_argument(
        "--first-id",
        type=cli.non_negative_int,
        default=None,
        help="--design mico: id of the first extra model (default 1000; the challenge's own ids are refused)",
    )
    p.add_argument(
        "--seed", type=cli.non_negative_int, default=0, help="seeds and designs are drawn from (seed, scenario)"
    )
    p.add_argument("--shard", type=cli.parse_shard, default="0/1", help="i/n: train only models with index %% n == i")
    p.add_argument(
        "--parallel",
        type=cli.positive_int,
        default=None,
        help="models trained at once (default: as many as the device's free memory holds; "
        "on the CPU, within a container's or SLURM job's memory limit)",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, ...")
    cli.add_threads(p)
    p.add_argument("--epochs", type=cli.positive_int, default=None, help="override the recipe's epochs")
    p.add_argument("--batch-size", type=cli.positive_int, default=None, help="override the recipe's batch size")
    p.add_argument("--lr", type=cli.positive_float, default=None, help="override the recipe's learning rate")
    args = p.parse_args(argv)
    if args.design == "mico":
        cli.refuse_unused(p, {"--fraction": args.fraction}, "--design mico does not use")
        args.first_id = DEFAULT_FIRST_ID if args.first_id is None else args.first_id
    else:
        cli.refuse_unused(p, {"--first-id": args.first_id}, "--design balanced does not use")
        args.fraction = 0.5 if args.fraction is None else args.fraction
        if not 0 < args.fraction < 1:
            p.error(f"--fraction {args.fraction:g}: must be between 0 and 1")
        try:
            requested_in_count(args.n, args.fraction)
        except ValueError as e:
            p.error(str(e))
    return args


def plan(args, params, dataset, recipe) -> list:
    """Every job of the design (or of the MICO-random extras), said in one line for a design."""
    if args.design == "mico":
        return mico_jobs(
            args.data_dir,
            args.challenge,
            args.scenario,
            params,
            len(dataset),
            args.n,
            args.seed,
            args.first_id,
            recipe=recipe,
        )
    jobs, design = designed_jobs(
        args.data_dir, args.challenge, args.scenario, params, dataset, args.n, args.seed, args.fraction, recipe=recipe
    )
    moved = design.in_count != requested_in_count(args.n, args.fraction)
    why = f"; --fraction {args.fraction:g} cannot reach LEN_TRAINING here" if moved else ""
    print(
        f"{args.scenario}: balanced design of {args.n} shadows over {len(design.pool)} challenge points, "
        f"each IN for {design.in_count} (f = {design.fraction:.3f}{why}), {params.len_training} records each, "
        f"in {args.data_dir}/{args.challenge}/{args.scenario}/{SHADOW_PHASE}/"
    )
    return jobs


def main(argv=None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    params = load_params(args.data_dir, args.challenge)
    dataset = load_dataset(params)
    overrides = {
        k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size), ("lr", args.lr)) if v is not None
    }
    recipe = recipe_for(args.challenge, scenario_suffix(args.scenario), **overrides)
    jobs = plan(args, params, dataset, recipe)
    shard, n_shards = args.shard
    jobs = jobs[shard::n_shards]
    finished = sum(complete(j) for j in jobs)
    incomplete = sum(os.path.isdir(j.md.path) and not complete(j) for j in jobs)
    again = f"; {incomplete} incomplete folder(s) (a file deleted since) will be trained again" if incomplete else ""
    print(f"{args.scenario}: {finished} of {len(jobs)} shadow model(s) of this shard already done{again}")
    done = train_with_progress(
        jobs,
        params,
        dataset,
        f"{args.scenario}: shadows",
        device=args.device,
        parallel=args.parallel,
        recipe=recipe,
    )
    print(f"{args.scenario}: {len(done)} shadow model(s) trained by this run")
    return 0


if __name__ == "__main__":
    cli.run(main, "train_shadows.py")
