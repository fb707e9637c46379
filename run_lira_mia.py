"""Run LiRA on every scenario of a challenge and write each dev/final model's prediction.csv.

Shadow models are the scenario's train models (plus any added by train_shadows.py); their
membership comes from their seeds. --evaluate also attacks every train model leave-one-out and
scores it against its solution.csv (and dev/final against a solutions/ tree, when present), so
a submission's score is known before it is made.
"""
from __future__ import annotations

import argparse
import os
import sys

from tqdm.auto import tqdm

from attacks.lira import lira, signal_from_phi, signal_kind
from challenges import evaluation, layout
from challenges.datasets import load_dataset
from challenges.scenario import load_scenario
from challenges.tracks import TRACKS, load_params


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--challenge", required=True, choices=sorted(TRACKS), help="MICO track")
    p.add_argument("--data-dir", default="data", help="root of the challenge trees")
    p.add_argument("--cache-dir", default="cache", help="signal cache written by save_preds.py")
    p.add_argument("--report-dir", default="report", help="scores and ROC plots go to <report-dir>/<track>/")
    p.add_argument("--scenario", default=None, help="one scenario only (default: all)")
    lira_opts = p.add_argument_group("LiRA (the runner-up's flags)")
    lira_opts.add_argument("--global_variance", action="store_true",
                           help="one sigma per target model from all pooled shadow signals, not one per point")
    lira_opts.add_argument("--online_attack", action="store_true",
                           help="likelihood ratio of IN vs OUT Gaussians (default: one-sided OUT test)")
    lira_opts.add_argument("--logit_scaling", action="store_true",
                           help="signal log(p/(1-p)) from the float32 probability p")
    lira_opts.add_argument("--stable_logit_scaling", action="store_true",
                           help="signal log(p/(1-p)) computed stably from logits (wins over --logit_scaling)")
    lira_opts.add_argument("--mu", choices=["mean", "median"], default="mean",
                           help="per-point location estimate of the shadow signals")
    lira_opts.add_argument("--min-shadows", type=int, default=2,
                           help="fewer IN/OUT shadows than this at a point: use the documented fallback")
    p.add_argument("--evaluate", action="store_true",
                   help="also score train models leave-one-out, and dev/final where ground truth exists")
    return p.parse_args(argv)


def make_lira(args):
    kind = signal_kind(args.logit_scaling, args.stable_logit_scaling)

    def attack(data, rows, exclude):
        sig = signal_from_phi(data.phi, kind)  # [models, P, V]
        idx = data.challenge[rows]
        return lira(sig[rows[:, None], idx], sig[:data.n_train], data.shadow_in, idx, exclude,
                    online=args.online_attack, global_variance=args.global_variance,
                    mu_estimator=args.mu, min_shadows=args.min_shadows)
    return attack


def main(argv=None) -> int:
    args = parse_args(argv)
    params = load_params(args.data_dir, args.challenge)
    n_points = len(load_dataset(params)) if params.n_points is None else params.n_points
    attack = make_lira(args)
    scores, written = {}, 0
    scenarios = layout.scenarios(args.data_dir, args.challenge, args.scenario)
    for scenario in tqdm(scenarios, desc="LiRA", unit="scenario"):
        data = load_scenario(args.data_dir, args.cache_dir, args.challenge, scenario, params, n_points)
        if data.n_train == 0:
            raise layout.LayoutError(f"{args.data_dir}/{args.challenge}/{scenario}/train: no shadow models")
        results = evaluation.attack_scenario(data, attack, args.evaluate)
        written += evaluation.write_predictions(data, results)
        if args.evaluate:
            scores[scenario] = evaluation.score_results(data, results)
    print(f"wrote {written} prediction.csv files under {os.path.join(args.data_dir, args.challenge)}")
    if args.evaluate:
        print(evaluation.print_scores(scores))
        paths = evaluation.save_report(os.path.join(args.report_dir, args.challenge), args.challenge, scores)
        print("report: " + ", ".join(paths))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, OSError) as e:
        sys.exit(f"run_lira_mia.py: {e}")
