"""Attack every scenario of a challenge and write each dev/final model's prediction.csv.

Shadow models are the scenario's train models (plus any added by train_shadows.py); their
membership comes from their seeds. The default attack is LiRA with the runner-up's four flags;
--attack picks another. --evaluate also attacks every train model leave-one-out and scores it
against its solution.csv (and dev/final against a solutions/ tree, when present), so a
submission's score is known before it is made. --compare ranks every attack that way and writes
report/<track>/report.md (no prediction.csv is written then).
"""
from __future__ import annotations

import argparse
import os
import sys

from tqdm.auto import tqdm

from attacks.suite import ATTACKS, COMPARE, fields_needed, make_attack
from challenges import cache, evaluation, layout
from challenges.datasets import load_dataset
from challenges.scenario import load_scenario
from challenges.tracks import TRACKS, load_params


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--challenge", required=True, choices=sorted(TRACKS), help="MICO track")
    p.add_argument("--data-dir", default="data", help="root of the challenge trees")
    p.add_argument("--cache-dir", default="cache", help="signal cache written by save_preds.py")
    p.add_argument("--report-dir", default="report", help="scores, ROC plots and report.md go to <report-dir>/<track>/")
    p.add_argument("--scenario", default=None, help="one scenario only, e.g. cifar10_hi; all when omitted")
    p.add_argument("--attack", choices=ATTACKS, default="lira", help="attack to run")
    p.add_argument("--evaluate", action="store_true",
                   help="also score train models leave-one-out, and dev/final where ground truth exists")
    p.add_argument("--compare", action="store_true",
                   help="run every attack leave-one-out and write a comparison report instead of predictions")
    p.add_argument("--seed", type=int, default=0, help="seed for sampling in rmia and classifier")
    lira = p.add_argument_group("LiRA (the runner-up's flags; --online_attack also selects online RMIA)")
    lira.add_argument("--global_variance", action="store_true",
                      help="one sigma per target model from all pooled shadow signals, not one per point")
    lira.add_argument("--online_attack", action="store_true",
                      help="use IN shadows too: likelihood ratio of IN vs OUT Gaussians instead of the one-sided OUT test")
    lira.add_argument("--logit_scaling", action="store_true", help="signal log(p/(1-p)) from the float32 probability p")
    lira.add_argument("--stable_logit_scaling", action="store_true",
                      help="signal log(p/(1-p)) computed stably from logits (wins over --logit_scaling)")
    lira.add_argument("--mu", choices=["mean", "median"], default="mean", help="per-point location of shadow signals")
    lira.add_argument("--min-shadows", type=int, default=2,
                      help="fewer IN/OUT shadows than this at a point: use the documented fallback")
    rm = p.add_argument_group("RMIA")
    rm.add_argument("--rmia-a", default="0.3", help="offline coefficient a in [0,1], or 'auto' (best leave-one-out AUC)")
    rm.add_argument("--rmia-gamma", type=float, default=1.0, help="likelihood-ratio threshold gamma")
    rm.add_argument("--rmia-population", type=int, default=5000, help="population points z per target")
    cal = p.add_argument_group("calibrated")
    cal.add_argument("--signal", choices=["loss", "confidence"], default="loss", help="signal to calibrate")
    cal.add_argument("--calibration", choices=["in", "mid", "z"], default="mid",
                     help="s - mu_in, s - (mu_in + mu_out)/2, or (s - mu_all)/sigma_all")
    return p


def parse_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    if args.rmia_a != "auto":
        try:
            if not 0 <= float(args.rmia_a) <= 1:
                raise ValueError
        except ValueError:
            p.error(f"--rmia-a must be a number in [0, 1] or 'auto', got {args.rmia_a!r}")
    return args


def cache_fields(args, attack: str) -> tuple:
    """Cache fields ``attack`` reads; logits only where save_preds.py stored them for every model."""
    if attack != "classifier":
        return fields_needed(attack)
    mds = [md for sc in layout.scenarios(args.data_dir, args.challenge, args.scenario)
           for md in layout.models(args.data_dir, args.challenge, sc)]
    return fields_needed(attack, bool(mds) and all(cache.has_field(args.cache_dir, md, "logits") for md in mds))


def scenarios_data(args, fields):
    """Yield each scenario's arrays, loaded once."""
    params = load_params(args.data_dir, args.challenge)
    n_points = len(load_dataset(params)) if params.n_points is None else params.n_points
    for scenario in layout.scenarios(args.data_dir, args.challenge, args.scenario):
        data = load_scenario(args.data_dir, args.cache_dir, args.challenge, scenario, params, n_points, fields)
        if data.n_train == 0:
            raise layout.LayoutError(f"{args.data_dir}/{args.challenge}/{scenario}/train: no shadow models")
        yield data


# Options the comparison rows set themselves (flag names as argparse stores them).
COMPARE_SETS = ("attack", "global_variance", "online_attack", "logit_scaling", "stable_logit_scaling", "mu",
                "rmia_a", "signal", "calibration")


def compare(args, argv) -> int:
    base = [a for a in argv if a != "--compare"]
    defaults = vars(parse_args(["--challenge", args.challenge]))
    fixed = [k for k in COMPARE_SETS if getattr(args, k) != defaults[k]]
    if fixed:  # each comparison row sets these itself
        parser = build_parser()
        flag = {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings}
        parser.error(f"--compare sets the attack options itself; drop {', '.join(flag[k] for k in fixed)}")
    runs = [(label, flags, parse_args(base + flags.split())) for label, flags in COMPARE]
    fields = tuple(sorted({f for _, _, o in runs for f in cache_fields(args, o.attack)}))
    scores = {label: {} for label, _, _ in runs}
    n_scenarios = len(layout.scenarios(args.data_dir, args.challenge, args.scenario))
    bar = tqdm(total=len(runs) * n_scenarios, desc="compare", unit="run")
    for data in scenarios_data(args, fields):
        for label, _, o in runs:
            bar.set_postfix_str(f"{data.scenario}: {label}")
            results = evaluation.attack_scenario(data, make_attack(o), evaluate=True)
            scores[label][data.scenario] = evaluation.score_results(data, results)
            bar.update()
    bar.close()
    command = " ".join(["python run_lira_mia.py", *(a for a in base if a != "--evaluate"), "--evaluate"])
    commands = {label: f"{command} {flags}".strip() for label, flags, _ in runs}
    path = evaluation.write_compare_report(os.path.join(args.report_dir, args.challenge), scores, commands)
    print(open(path).read())
    print(f"report: {path}")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.compare:
        return compare(args, argv)
    attack = make_attack(args)
    scores, done = {}, []
    n_scenarios = len(layout.scenarios(args.data_dir, args.challenge, args.scenario))
    for data in tqdm(scenarios_data(args, cache_fields(args, args.attack)), desc=args.attack, unit="scenario",
                     total=n_scenarios):
        results = evaluation.attack_scenario(data, attack, args.evaluate)
        done.append((data.models, results))  # the signals themselves are not kept
        if args.evaluate:
            scores[data.scenario] = evaluation.score_results(data, results)
    # Every scenario is attacked before any prediction.csv is replaced, so a failure part-way never
    # leaves one attack's predictions beside another's.
    written = sum(evaluation.write_predictions(models, results) for models, results in done)
    print(f"wrote {written} prediction.csv files under {os.path.join(args.data_dir, args.challenge)}")
    if args.evaluate:
        print(evaluation.print_scores(scores))
        paths = evaluation.save_report(os.path.join(args.report_dir, args.challenge), scores)
        print("report: " + ", ".join(paths))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, OSError) as e:
        sys.exit(f"run_lira_mia.py: {e}")
