"""Cache every model's outputs on its scenario's challenge points (format: challenges/cache.py).

Shadow models (train, designed shadows) run once over the union of the scenario's challenge
points; dev and final models only over the points the attacks read of them: their own challenge
points and RMIA's population (--rmia-population, --seed: as run_lira_mia.py's; 0 for none). Large
batches, on CUDA when present. Reruns skip models whose cache is current and only add the points
a new need brought (new shadow models, another population); an unreadable cache file, or one from
another model.pt, is recomputed. --shard i/n caches only every n-th model of each scenario (SLURM:
--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT); shards never touch the same file, and runs
sharing a cache split the models between them (one another run holds is left for last).
--neighbours K adds K neighbourhood query views per point (purchase100: --flip-bits purchase bits
flipped; cifar10: Gaussian pixel noise of std --noise), each a fixed function of the record, the
same for every model; a cache file holding other views is recomputed with the new ones.
"""

from __future__ import annotations

import collections
import functools

import numpy as np
import torch
from tqdm.auto import tqdm

from attacks.options import AttackOptions
from attacks.suite import target_reads
from challenges import cache, cli, layout
from challenges.datasets import load_dataset, to_tensor
from challenges.scenario import cached_points, scenario_points
from challenges.tracks import load_params
from models import load_model, resolve_device, set_threads
from models.query import DEFAULT_FLIP_BITS, DEFAULT_NOISE, is_neighbour, neighbour_inputs, query, view_names


def parse_args(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("--cache-dir", default="cache", help="where the per-model signal files go")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    p.add_argument("--batch-size", type=cli.positive_int, default=4096, help="points per forward pass")
    cli.add_threads(p)
    p.add_argument(
        "--save-logits",
        action="store_true",
        help="also store full logits (the classifier attack then uses the sorted softmax as features)",
    )
    p.add_argument("--augment", action="store_true", help="cifar10: add query views (horizontal flip, shifts)")
    p.add_argument("--shifts", type=int, default=0, help="with --augment: pixel shifts up to k (reflect padding)")
    p.add_argument(
        "--neighbours",
        type=cli.non_negative_int,
        default=0,
        help="add K neighbourhood query views per point (for --attack neighbours; K+1 forward passes per point)",
    )
    p.add_argument(
        "--flip-bits",
        type=cli.positive_int,
        default=None,
        help=f"purchase100, with --neighbours: purchase bits flipped per neighbour (default {DEFAULT_FLIP_BITS})",
    )
    p.add_argument(
        "--noise",
        type=cli.positive_float,
        default=None,
        help=f"cifar10, with --neighbours: std of the Gaussian pixel noise, pixels in [0, 1] (default {DEFAULT_NOISE})",
    )
    p.add_argument(
        "--rmia-population",
        type=int,
        default=AttackOptions().rmia_population,
        help="dev/final models: also cache RMIA's population points (as run_lira_mia.py's flag; 0: own points only)",
    )
    p.add_argument(
        "--seed",
        type=cli.non_negative_int,
        default=AttackOptions().seed,
        help="RMIA's population seed (run_lira_mia.py's)",
    )
    p.add_argument("--shard", type=cli.parse_shard, default="0/1", help="i/n: cache only models with index %% n == i")
    args = p.parse_args(argv)
    if args.rmia_population < 0:
        p.error("--rmia-population takes a non-negative count")
    if args.shifts < 0 or (args.shifts and not args.augment):
        p.error("--shifts takes a non-negative k and needs --augment")
    if args.augment and args.challenge != "cifar10":
        p.error("--augment applies to cifar10 images only")
    given = {"--flip-bits": args.flip_bits, "--noise": args.noise}
    own = "--flip-bits" if args.challenge == "purchase100" else "--noise"
    other = next(flag for flag in given if flag != own)
    if given[other] is not None:
        p.error(f"{other} does not apply to {args.challenge} (its neighbours take {own})")
    if given[own] is not None and not args.neighbours:
        p.error(f"{own} needs --neighbours K")
    return args


def query_views(args) -> list[str]:
    """The views every model of this run is queried on (models.query.view_names)."""
    bits = DEFAULT_FLIP_BITS if args.flip_bits is None else args.flip_bits
    noise = DEFAULT_NOISE if args.noise is None else args.noise
    try:
        return view_names(args.augment, args.shifts, args.neighbours, args.challenge, bits, noise)
    except ValueError as e:
        raise ValueError(f"--flip-bits: {e}") from None


class UnionQuery:
    """Model outputs on a scenario's union of challenge points; the inputs for the whole union are
    built and moved to the device once, when the first model needs them."""

    def __init__(self, args, dataset, scenario: str, union: np.ndarray, views: list[str], device):
        self.args, self.dataset, self.scenario, self.union = args, dataset, scenario, union
        self.views, self.device = views, device
        self.x = self.y = None
        self.neighbours = {}  # view name -> its inputs for the whole union, built once

    def __call__(self, md, todo: np.ndarray, keep_logits: bool) -> dict:
        if self.x is None:
            self.x = to_tensor(self.args.challenge, self.dataset.x[self.union]).to(self.device)
            self.y = torch.from_numpy(self.dataset.y[self.union]).to(self.device)
            for name in filter(is_neighbour, self.views):
                self.neighbours[name] = neighbour_inputs(self.x, self.union, name)
        pos = np.searchsorted(self.union, todo)
        rows = torch.from_numpy(pos).to(self.device)
        model = load_model(self.args.challenge, md.model_file, self.device)
        out = query(
            model,
            self.x[rows],
            self.y[rows],
            self.views,
            self.args.batch_size,
            keep_logits=keep_logits,
            points=self.union[pos],
            view_inputs={name: x[rows] for name, x in self.neighbours.items()},
        )
        return {k: v.numpy() for k, v in out.items()}


def cache_models(args, outputs: UnionQuery, work: list) -> collections.Counter:
    """Bring each (model, points) of ``work`` up to date; a model another run holds is left for
    last, then waited for. Returns the count of each outcome ('computed', 'current', ...)."""
    done, busy = collections.Counter(), []
    points = sum(len(p) for _, p in work)
    bar = tqdm(
        total=len(work), desc=f"{outputs.scenario}: {points} model-points x {len(outputs.views)} views", unit="model"
    )
    for wait, todo in ((False, work), (True, busy)):
        for md, need in todo:
            path = cache.cache_file(args.cache_dir, md)
            views, logits = outputs.views, args.save_logits
            outcome = cache.update(path, md.model_file, need, views, logits, functools.partial(outputs, md), wait)
            if outcome == "busy":
                busy.append((md, need))
                continue
            done[outcome] += 1
            bar.update()
    bar.close()
    return done


def main(argv=None) -> int:
    args = parse_args(argv)
    views = query_views(args)
    set_threads(args.threads)
    device = resolve_device(args.device)
    params = load_params(args.data_dir, args.challenge)
    dataset = load_dataset(params)
    rmia = [AttackOptions(attack="rmia", rmia_population=args.rmia_population, seed=args.seed)]
    reads = target_reads(rmia) if args.rmia_population else None
    shard, n_shards = args.shard
    for scenario in layout.scenarios(args.data_dir, args.challenge, args.scenario):
        mds, splits, union = scenario_points(args.data_dir, args.challenge, scenario, params, len(dataset))
        work = [(md, cached_points(md, s, union, reads)) for md, s in zip(mds, splits)][shard::n_shards]
        outputs = UnionQuery(args, dataset, scenario, union, views, device)
        done = cache_models(args, outputs, work)
        restamped = f", {done['restamped']} stamp(s) refreshed" if done["restamped"] else ""
        print(
            f"{scenario}: {done['computed']} model(s) queried, {len(work) - done['computed']} already cached{restamped}"
        )
    return 0


if __name__ == "__main__":
    cli.run(main, "save_preds.py")
