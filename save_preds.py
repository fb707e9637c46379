"""Cache every model's outputs on its scenario's challenge points (see README: cache format).

Each model (train, dev, final) runs once over the union of the scenario's challenge points, in
large batches, on CUDA when present. Reruns skip models whose cache is current and only add the
points that new shadow models brought.
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from challenges import cache, cli, layout
from challenges.datasets import load_dataset, to_tensor
from challenges.scenario import scenario_points
from challenges.tracks import load_params
from models import load_model, resolve_device
from models.query import query, view_names


def parse_args(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("--cache-dir", default="cache", help="where the per-model signal files go")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    p.add_argument("--batch-size", type=int, default=4096, help="points per forward pass")
    p.add_argument("--save-logits", action="store_true",
                   help="also store full logits (the classifier attack then uses the sorted softmax as features)")
    p.add_argument("--augment", action="store_true", help="cifar10: add query views (horizontal flip, shifts)")
    p.add_argument("--shifts", type=int, default=0, help="with --augment: pixel shifts up to k (reflect padding)")
    args = p.parse_args(argv)
    if args.shifts < 0 or (args.shifts and not args.augment):
        p.error("--shifts takes a non-negative k and needs --augment")
    if args.augment and args.challenge != "cifar10":
        p.error("--augment applies to cifar10 images only")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    views = view_names(args.augment, args.shifts)
    device = resolve_device(args.device)
    params = load_params(args.data_dir, args.challenge)
    dataset = load_dataset(params)
    for scenario in layout.scenarios(args.data_dir, args.challenge, args.scenario):
        mds, _, union = scenario_points(args.data_dir, args.challenge, scenario, params, len(dataset))
        x = y = None
        bar = tqdm(mds, desc=f"{scenario}: {len(union)} points x {len(views)} views", unit="model")
        done = 0
        for md in bar:
            path = cache.cache_file(args.cache_dir, md)
            entry, todo = cache.pending(cache.read(path), md.model_file, union, views, args.save_logits)
            if len(todo) == 0:
                continue
            if x is None:  # inputs for the whole union, moved to the device once per scenario
                x = to_tensor(args.challenge, dataset.x[union]).to(device)
                y = torch.from_numpy(dataset.y[union]).to(device)
            rows = torch.from_numpy(np.searchsorted(union, todo)).to(device)
            # An entry that already holds logits keeps them, so merged rows stay complete.
            logits = args.save_logits or (entry is not None and "logits" in entry)
            model = load_model(args.challenge, md.model_file, device)
            out = query(model, x[rows], y[rows], views, args.batch_size, keep_logits=logits)
            points, arrays = cache.merge(entry, todo, {k: v.numpy() for k, v in out.items()})
            cache.write(path, points, views, cache.model_stamp(md.model_file), arrays)
            done += 1
        bar.close()
        print(f"{scenario}: {done} model(s) queried, {len(mds) - done} already cached")
    return 0


if __name__ == "__main__":
    cli.run(main, "save_preds.py")
