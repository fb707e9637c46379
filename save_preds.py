"""Cache every model's outputs on its scenario's challenge points (see README: cache format).

Each model (train, dev, final) runs once over the union of the scenario's challenge points, in
large batches, on CUDA when present. Reruns skip models whose cache is current and only add the
points that new shadow models brought; an unreadable cache file, or one from another model.pt, is
recomputed. Runs sharing a cache wait for each other model by model and never redo each other's work.
"""

from __future__ import annotations

import collections
import functools

import numpy as np
import torch
from tqdm.auto import tqdm

from challenges import cache, cli, layout
from challenges.datasets import load_dataset, to_tensor
from challenges.scenario import scenario_points
from challenges.tracks import load_params
from models import load_model, resolve_device, set_threads
from models.query import query, view_names


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
    args = p.parse_args(argv)
    if args.shifts < 0 or (args.shifts and not args.augment):
        p.error("--shifts takes a non-negative k and needs --augment")
    if args.augment and args.challenge != "cifar10":
        p.error("--augment applies to cifar10 images only")
    return args


class UnionQuery:
    """Model outputs on a scenario's union of challenge points; the inputs for the whole union are
    built and moved to the device once, when the first model needs them."""

    def __init__(self, args, dataset, union: np.ndarray, views: list[str], device):
        self.args, self.dataset, self.union, self.views, self.device = args, dataset, union, views, device
        self.x = self.y = None

    def __call__(self, md, todo: np.ndarray, keep_logits: bool) -> dict:
        if self.x is None:
            self.x = to_tensor(self.args.challenge, self.dataset.x[self.union]).to(self.device)
            self.y = torch.from_numpy(self.dataset.y[self.union]).to(self.device)
        rows = torch.from_numpy(np.searchsorted(self.union, todo)).to(self.device)
        model = load_model(self.args.challenge, md.model_file, self.device)
        out = query(model, self.x[rows], self.y[rows], self.views, self.args.batch_size, keep_logits=keep_logits)
        return {k: v.numpy() for k, v in out.items()}


def main(argv=None) -> int:
    args = parse_args(argv)
    views = view_names(args.augment, args.shifts)
    set_threads(args.threads)
    device = resolve_device(args.device)
    params = load_params(args.data_dir, args.challenge)
    dataset = load_dataset(params)
    for scenario in layout.scenarios(args.data_dir, args.challenge, args.scenario):
        mds, _, union = scenario_points(args.data_dir, args.challenge, scenario, params, len(dataset))
        outputs = UnionQuery(args, dataset, union, views, device)
        done = collections.Counter()
        for md in tqdm(mds, desc=f"{scenario}: {len(union)} points x {len(views)} views", unit="model"):
            path = cache.cache_file(args.cache_dir, md)
            done[cache.update(path, md.model_file, union, views, args.save_logits, functools.partial(outputs, md))] += 1
        restamped = f", {done['restamped']} stamp(s) refreshed" if done["restamped"] else ""
        print(
            f"{scenario}: {done['computed']} model(s) queried, {len(mds) - done['computed']} already cached{restamped}"
        )
    return 0


if __name__ == "__main__":
    cli.run(main, "save_preds.py")
