"""Train extra shadow models with a scenario's MICO recipe, written as new train models.

Models get ids --first-id .. --first-id+N-1 and fresh seeds derived from (--seed, scenario, id),
so save_preds.py and run_lira_mia.py use them as shadows with no other change. A model folder
appears only once complete; a rerun skips finished ids and continues. --shard i/n trains the ids
with index % n == i, so several GPUs or hosts can split one run without collisions (then copy
the folders together).
"""
from __future__ import annotations

import argparse
import os

from tqdm.auto import tqdm

from challenges import cli
from challenges.datasets import load_dataset
from challenges.layout import ModelDir
from challenges.tracks import SCENARIO_SUFFIXES, load_params, scenario_suffix
from production.folders import model_seeds, train_model_folder


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: expected i/n, e.g. 0/4") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: need 0 <= i < n")
    return i, n


def parse_args(argv=None):
    p = cli.parser(__doc__, scenario=None)
    p.add_argument("--scenario", required=True, help="scenario whose recipe to use, e.g. purchase100_inf")
    p.add_argument("--n", type=int, required=True, help="number of extra shadow models (ids --first-id..)")
    p.add_argument("--first-id", type=int, default=1000, help="id of the first extra model (MICO's own ids are 0-199)")
    p.add_argument("--seed", type=int, default=0, help="seeds are drawn from (seed, scenario, id)")
    p.add_argument("--shard", type=parse_shard, default=(0, 1), help="i/n: train only ids with index %% n == i")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, ...")
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    p.add_argument("--batch-size", type=int, default=None, help="override the recipe's batch size")
    p.add_argument("--lr", type=float, default=None, help="override the recipe's learning rate")
    args = p.parse_args(argv)
    if args.n < 1:
        p.error("--n must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    params = load_params(args.data_dir, args.challenge)
    scenario_dir = os.path.join(args.data_dir, args.challenge, args.scenario)
    if not os.path.isdir(scenario_dir):
        raise ValueError(f"{scenario_dir}: no such scenario; download it first (download_files.py)")
    shard, n_shards = args.shard
    ids = [args.first_id + j for j in range(args.n) if j % n_shards == shard]
    todo = [ModelDir(args.data_dir, args.challenge, args.scenario, "train", i) for i in ids]
    todo = [md for md in todo if not os.path.isdir(md.path)]
    print(f"{args.scenario}: {len(ids) - len(todo)} of {len(ids)} shadow model(s) of this shard already done")
    if not todo:
        return 0
    dataset = load_dataset(params)
    overrides = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size), ("lr", args.lr))
                 if v is not None}
    suffix = SCENARIO_SUFFIXES.index(scenario_suffix(args.scenario))
    bar = tqdm(todo, desc=f"{args.scenario}: shadows", unit="model")
    for md in bar:
        def progress(epoch, n_epochs, loss, acc, md=md):
            bar.set_postfix(model=md.model_id, epoch=f"{epoch}/{n_epochs}", loss=f"{loss:.3f}", acc=f"{acc:.3f}")
        info = train_model_folder(md, params, dataset, model_seeds(args.seed, 100 + suffix, md.model_id),
                                  reveal=True, device=args.device, progress=progress, **overrides)
        tqdm.write(f"{md.key}: eval accuracy {info['accuracy']:.4f}"
                   + (f", epsilon {info['epsilon']:.3f}" if info["epsilon"] is not None else ""))
    return 0


if __name__ == "__main__":
    cli.run(main, "train_shadows.py")
