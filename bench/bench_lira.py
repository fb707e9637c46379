"""Benchmark: run_lira_mia's scoring against a straightforward per-point loop, at MICO size.

Builds a MICO-size synthetic cache (3 scenarios x 200 models x 200 challenge points: 100 train
shadows, 50 dev, 50 final; purchase100's N = 197,324, LEN_TRAINING = 150,000) in a temporary
folder, then times, in the same run and on the same arrays:

- ``scoring``: the vectorised LiRA, offline and online, each with and without global variance,
  for every scenario: dev + final targets and every train model leave-one-out;
- ``per-point loop``: the same computations written the obvious way, as the original did: for
  every target and challenge point, gather the IN/OUT shadows' signals in Python, then mean, std
  and ``scipy.stats.norm`` per point. (The original was slower still: it tested membership with
  ``point in list_of_150000_indices`` for every shadow and point.)

It checks both give the same scores, reports the whole ``run_lira_mia.py --evaluate`` run (cache
reading, splits, predictions, report) and peak memory, and times save_preds' forward pass per
model on this CPU for both tracks. The last line is
``scoring <s> s, per-point loop <s> s, speedup <ratio>x``.

    python bench/bench_lira.py [--scenarios 3] [--loop-targets N]

Smaller sizes (``--n-points``, ``--len-training``, ``--len-challenge``, ``--train-models``,
``--target-models``, ``--forward-points``) are for the smoke test (tests/test_bench.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import sys
import tempfile
import time

import numpy as np
import torch
from scipy.stats import norm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import run_lira_mia  # noqa: E402
from attacks.lira import SIGMA_FLOOR, lira, signal_from_phi, squash  # noqa: E402
from challenges import cache  # noqa: E402
from challenges.layout import ModelDir  # noqa: E402
from challenges.scenario import load_scenario  # noqa: E402
from challenges.splits import reconstruct  # noqa: E402
from challenges.tracks import ChallengeParams, save_params, scenario_names  # noqa: E402
from models import build_model  # noqa: E402
from models.query import query  # noqa: E402
from production.folders import model_seeds  # noqa: E402

# MICO's purchase100 sizes: N, LEN_TRAINING, members per model, train models, dev (= final) models
N, LEN_TRAINING, M, N_TRAIN, N_TARGET = 197_324, 150_000, 100, 100, 50


def build_cache(root: str, n_scenarios: int, params: ChallengeParams, counts: dict) -> tuple[str, str]:
    """A MICO-layout tree (seed files only) and a signal cache for it; phi is random with a
    membership shift so the attack has something to find. ``counts``: models per phase."""
    data_dir, cache_dir = os.path.join(root, "data"), os.path.join(root, "cache")
    params = dataclasses.replace(params, dataset=os.path.join(data_dir, "purchase100", "dataset_purchase"))
    save_params(data_dir, params)
    n = params.n_points
    rng = np.random.default_rng(0)
    difficulty = rng.normal(0, 2, n).astype(np.float32)
    for si, scenario in enumerate(scenario_names("purchase100")[:n_scenarios]):
        mds, splits, mid = [], [], 0
        for phase, count in counts.items():
            for _ in range(count):
                md = ModelDir(data_dir, "purchase100", scenario, phase, mid)
                seeds = model_seeds(7, si, mid)
                os.makedirs(md.path)
                names = ("seed_challenge", "seed_training", "seed_membership")
                for name, seed in zip(names if phase == "train" else names[:1], seeds):
                    with open(os.path.join(md.path, name), "w") as f:
                        f.write(str(seed))
                with open(md.model_file, "wb") as f:
                    f.write(b"placeholder")
                mds.append(md)
                splits.append(reconstruct(n, params.len_training, params.len_challenge, *seeds))
                mid += 1
        union = np.unique(np.concatenate([s.challenge for s in splits]))
        stamp = cache.model_stamp(mds[0].model_file)
        for md, s in zip(mds, splits):
            member = np.isin(union, s.train_indices(), assume_unique=True)
            phi = difficulty[union] + 1.5 * member + rng.normal(0, 1, len(union)).astype(np.float32)
            cache.write(
                cache.cache_file(cache_dir, md),
                union,
                ["orig"],
                stamp,
                {"phi": phi[:, None].astype(np.float32), "mentr": np.zeros((len(union), 1), np.float32)},
            )
            if md.phase == "train":
                with open(os.path.join(md.path, "solution.csv"), "w") as f:
                    f.write(",".join(map(str, s.solutions())))
    return data_dir, cache_dir


def loop_lira(sig, member, challenge, rows, n_shadows, online, global_variance):
    """The obvious per-target, per-point loop (one view, leave-one-out for train targets), as the
    original run_lira_mia.py was written: gather each point's IN/OUT shadow signals in Python,
    then mean, std and scipy.stats per point (or per target with global variance)."""
    out = np.empty((len(rows), challenge.shape[1]))
    for t, row in enumerate(rows):
        excl = row if row < n_shadows else -1
        pts = challenge[row]
        stats = {False: ([], [], []), True: ([], [], [])}  # in? -> (means, stds, pooled)
        for p in pts:
            for is_in in (False, True) if online else (False,):
                vals = [sig[s, p, 0] for s in range(n_shadows) if s != excl and member[s, p] == is_in]
                means, stds, pooled = stats[is_in]
                means.append(np.mean(vals))
                stds.append(max(np.std(vals), SIGMA_FLOOR))
                pooled.extend(vals)
        pooled_sd = {i: max(np.std(stats[i][2]), SIGMA_FLOOR) for i in stats if stats[i][0]}
        for k, p in enumerate(pts):
            s_t = sig[row, p, 0]
            sd = {i: pooled_sd[i] if global_variance else stats[i][1][k] for i in pooled_sd}
            if online:
                llr = norm.logpdf(s_t, stats[True][0][k], sd[True]) - norm.logpdf(s_t, stats[False][0][k], sd[False])
                out[t, k] = squash(llr)
            else:
                out[t, k] = norm.cdf(s_t, stats[False][0][k], sd[False])
    return out


def time_forward(track: str, n: int) -> float:
    model = build_model(track).eval()
    shape = (n, 3, 32, 32) if track == "cifar10" else (n, 600)
    x, y = torch.randn(shape), torch.randint(0, 10, (n,))
    query(model, x[:64], y[:64], ["orig"])  # warm-up
    t = time.perf_counter()
    query(model, x, y, ["orig"], batch_size=1024)
    return time.perf_counter() - t


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--scenarios", type=int, default=3, help="number of scenarios (MICO: 3)")
    p.add_argument(
        "--loop-targets",
        type=int,
        default=None,
        help="time the loop on this many targets per scenario and extrapolate (None: all)",
    )
    p.add_argument("--n-points", type=int, default=N, help="dataset size N")
    p.add_argument("--len-training", type=int, default=LEN_TRAINING, help="training-set size per model")
    p.add_argument("--len-challenge", type=int, default=M, help="members (= non-members) per model")
    p.add_argument("--train-models", type=int, default=N_TRAIN, help="train models (shadows) per scenario")
    p.add_argument("--target-models", type=int, default=N_TARGET, help="dev models (and as many final) per scenario")
    p.add_argument(
        "--forward-points", type=int, default=40_000, help="points of the timed forward pass (cifar10: 1/20 of it)"
    )
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads (this machine's cores)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    params = ChallengeParams("purchase100", args.n_points, args.len_training, args.len_challenge, "")
    counts = {"train": args.train_models, "dev": args.target_models, "final": args.target_models}
    with tempfile.TemporaryDirectory() as root:
        t = time.perf_counter()
        data_dir, cache_dir = build_cache(root, args.scenarios, params, counts)
        print(
            f"built cache ({args.scenarios} scenarios x {sum(counts.values())} models, N = {args.n_points}) "
            f"in {time.perf_counter() - t:.1f} s"
        )
        configs = [(online, gv) for online in (False, True) for gv in (False, True)]
        fast, slow = dict.fromkeys(configs, 0.0), dict.fromkeys(configs, 0.0)
        for scenario in scenario_names("purchase100")[: args.scenarios]:
            data = load_scenario(data_dir, cache_dir, "purchase100", scenario, params, args.n_points)
            sig = signal_from_phi(data.phi, "stable_logit")
            rows = np.arange(len(data.models))
            exclude = np.where(rows < data.n_shadows, rows, -1)
            idx = data.challenge[rows]
            k = len(rows) if args.loop_targets is None else min(args.loop_targets, len(rows))
            pick = np.linspace(0, len(rows) - 1, k).astype(int)
            for online, gv in configs:
                t = time.perf_counter()
                scores = lira(
                    sig[rows[:, None], idx],
                    sig[: data.n_shadows],
                    data.shadow_in,
                    idx,
                    exclude,
                    online=online,
                    global_variance=gv,
                )
                fast[online, gv] += time.perf_counter() - t
                t = time.perf_counter()
                ref = loop_lira(sig, data.shadow_in, data.challenge, rows[pick], data.n_shadows, online, gv)
                slow[online, gv] += (time.perf_counter() - t) * len(rows) / k
                np.testing.assert_allclose(scores[pick], ref, rtol=1e-6, atol=1e-9)
        for online, gv in configs:
            name = ("online" if online else "offline") + (" + global variance" if gv else "")
            print(
                f"  LiRA {name:28s} vectorised {fast[online, gv]:7.3f} s   per-point loop "
                f"{slow[online, gv]:8.1f} s   {slow[online, gv] / fast[online, gv]:6.0f}x"
            )
        fast, slow = sum(fast.values()), sum(slow.values())
        t = time.perf_counter()
        run_lira_mia.main(
            [
                "--challenge",
                "purchase100",
                "--data-dir",
                data_dir,
                "--cache-dir",
                cache_dir,
                "--report-dir",
                os.path.join(root, "report"),
                "--global_variance",
                "--evaluate",
            ]
        )
        whole = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"whole run_lira_mia.py --global_variance --evaluate (cache reading, splits, predictions, report): "
        f"{whole:.1f} s; peak memory {peak:.0f} MiB"
    )
    for track, n in (("purchase100", args.forward_points), ("cifar10", max(1, args.forward_points // 20))):
        s = time_forward(track, n)
        print(
            f"save_preds forward pass, {track}, CPU ({torch.get_num_threads()} threads): {s:.2f} s for {n} "
            f"points -> {s * 40_000 / n:.1f} s per model on a 40,000-point union"
        )
    note = "" if args.loop_targets is None else f" (loop extrapolated from {args.loop_targets} targets/scenario)"
    print(json.dumps({"scoring_s": fast, "loop_s": slow}) + note)
    print(f"scoring {fast:.2f} s, per-point loop {slow:.1f} s, speedup {slow / fast:.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
