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
import dataclasses
import os

from tqdm.auto import tqdm

from attacks.options import ATTACKS, CALIBRATIONS, MU_CHOICES, OFFLINE_TESTS, SIGNALS, AttackOptions
from attacks.suite import COMPARE, COMPARE_SETS, REFERENCES, fields_needed, make_attack, target_reads, uses_logits
from challenges import cache, cli, evaluation, layout, report
from challenges.datasets import load_dataset
from challenges.scenario import load_scenario
from challenges.tracks import load_params

# AttackOptions field -> the flag that sets it (filled by build_parser), to render commands.
OPTION_FLAGS: dict[str, str] = {}


def rmia_a_value(text: str):
    """argparse type of --rmia-a: a number in [0, 1] or 'auto'."""
    if text == "auto":
        return text
    try:
        a = float(text)
    except ValueError:
        a = -1.0
    if not 0 <= a <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1] or 'auto', got {text!r}")
    return a


def _option(group, flag: str, **kwargs) -> None:
    """Add an AttackOptions flag, its default taken from AttackOptions."""
    action = group.add_argument(flag, **kwargs)
    action.default = getattr(AttackOptions(), action.dest)
    OPTION_FLAGS[action.dest] = flag


def build_parser() -> cli.Parser:
    p = cli.parser(__doc__)
    p.add_argument("--cache-dir", default="cache", help="signal cache written by save_preds.py")
    p.add_argument("--report-dir", default="report", help="scores, ROC plots and report.md go to <report-dir>/<track>/")
    _option(p, "--attack", choices=ATTACKS, help="attack to run")
    p.add_argument(
        "--evaluate",
        action="store_true",
        help="also score train models leave-one-out, and dev/final where ground truth exists",
    )
    p.add_argument(
        "--compare",
        action="store_true",
        help="run every attack leave-one-out and write a comparison report instead of predictions",
    )
    _option(p, "--seed", type=int, help="seed for sampling in rmia and classifier")
    lira = p.add_argument_group("LiRA (the runner-up's flags; --online_attack also selects online RMIA)")
    _option(
        lira,
        "--as_submitted",
        action="store_true",
        help="the runner-up's LiRA exactly as released, bugs included (see README); with its four flags",
    )
    _option(
        lira,
        "--global_variance",
        action="store_true",
        help="one sigma per target model from all pooled shadow signals, not one per point",
    )
    _option(
        lira,
        "--online_attack",
        action="store_true",
        help="use IN shadows too: likelihood ratio of IN vs OUT Gaussians instead of the one-sided OUT test",
    )
    _option(lira, "--logit_scaling", action="store_true", help="signal log(p/(1-p)) from the float32 probability p")
    _option(
        lira,
        "--stable_logit_scaling",
        action="store_true",
        help="signal log(p/(1-p)) computed stably from logits (wins over --logit_scaling)",
    )
    _option(lira, "--mu", choices=MU_CHOICES, help="per-point location of shadow signals")
    _option(
        lira,
        "--offline-test",
        choices=OFFLINE_TESTS,
        help="offline LiRA: the paper's one-sided Phi(z), or the LiRA reference code's two-sided -log N(s)",
    )
    _option(
        lira, "--min-shadows", type=int, help="fewer IN/OUT shadows than this at a point: use the documented fallback"
    )
    rm = p.add_argument_group("RMIA")
    _option(
        rm, "--rmia-a", type=rmia_a_value, help="offline coefficient a in [0,1], or 'auto' (best leave-one-out AUC)"
    )
    _option(rm, "--rmia-gamma", type=float, help="likelihood-ratio threshold gamma")
    _option(rm, "--rmia-population", type=int, help="population points z per target")
    cal = p.add_argument_group("calibrated")
    _option(cal, "--signal", choices=SIGNALS, help="signal to calibrate")
    _option(
        cal, "--calibration", choices=CALIBRATIONS, help="s - mu_in, s - (mu_in + mu_out)/2, or (s - mu_all)/sigma_all"
    )
    return p


def parse_args(argv=None) -> tuple[argparse.Namespace, AttackOptions]:
    """The command line, and the attack options it sets (validated once, here)."""
    p = build_parser()
    args = p.parse_args(argv)
    try:
        options = AttackOptions(**{f: getattr(args, f) for f in OPTION_FLAGS})
    except ValueError as e:
        p.error(str(e))
    if args.compare:
        fixed = [OPTION_FLAGS[k] for k in COMPARE_SETS if k in options.changed()]
        if fixed:  # each comparison row sets these itself
            p.error(f"--compare sets the attack options itself; drop {', '.join(fixed)}")
    return args, options


def option_flags(options: AttackOptions) -> list[str]:
    """The command-line flags that reproduce ``options`` (only those that differ from the defaults)."""
    out = []
    for name, value in options.changed().items():
        out += [OPTION_FLAGS[name]] if isinstance(value, bool) else [OPTION_FLAGS[name], str(value)]
    return out


def cache_fields(args, options: AttackOptions) -> tuple:
    """Cache fields the attack reads; logits only where save_preds.py stored them for every model."""
    if not uses_logits(options):
        return fields_needed(options)
    mds = [
        md
        for sc in layout.scenarios(args.data_dir, args.challenge, args.scenario)
        for md in layout.models(args.data_dir, args.challenge, sc)
    ]
    return fields_needed(options, bool(mds) and all(cache.has_field(args.cache_dir, md, "logits") for md in mds))


def scenarios_data(args, fields, runs, runner_up: bool = False):
    """Yield each scenario's arrays for the attacks of ``runs``, loaded once (``runner_up``: with the
    runner-up's membership)."""
    params = load_params(args.data_dir, args.challenge)
    n_points = len(load_dataset(params)) if params.n_points is None else params.n_points
    for scenario in layout.scenarios(args.data_dir, args.challenge, args.scenario):
        data = load_scenario(
            args.data_dir,
            args.cache_dir,
            args.challenge,
            scenario,
            params,
            n_points,
            fields,
            runner_up=runner_up,
            reads=target_reads(runs),
        )
        if data.n_shadows == 0:
            raise layout.LayoutError(f"{args.data_dir}/{args.challenge}/{scenario}/train: no shadow models")
        yield data


def compare(args, options: AttackOptions) -> str:
    """Score every row of the line-up leave-one-out; write report.md; return its path."""
    shared = {k: v for k, v in dataclasses.asdict(options).items() if k not in COMPARE_SETS}
    runs = [(label, dataclasses.replace(row, **shared)) for label, row in COMPARE]
    shared_flags = option_flags(dataclasses.replace(AttackOptions(), **shared))
    fields = tuple(sorted({f for _, o in runs for f in cache_fields(args, o)}))
    scores = {label: {} for label, _ in runs}
    n_scenarios = len(layout.scenarios(args.data_dir, args.challenge, args.scenario))
    bar = tqdm(total=len(runs) * n_scenarios, desc="compare", unit="run")
    rows = [o for _, o in runs]
    for data in scenarios_data(args, fields, rows, runner_up=any(o.as_submitted for o in rows)):
        for label, o in runs:
            bar.set_postfix_str(f"{data.scenario}: {label}")
            results = evaluation.attack_scenario(data, make_attack(o), evaluate=True)
            scores[label][data.scenario] = evaluation.score_results(data, results)
            bar.update()
    bar.close()
    base = [
        "python run_lira_mia.py",
        "--challenge",
        args.challenge,
        "--data-dir",
        args.data_dir,
        "--cache-dir",
        args.cache_dir,
        "--report-dir",
        args.report_dir,
    ]
    if args.scenario:
        base += ["--scenario", args.scenario]
    commands = {label: " ".join(base + ["--evaluate"] + option_flags(row) + shared_flags) for label, row in COMPARE}
    return report.write_compare_report(
        os.path.join(args.report_dir, args.challenge), scores, commands, references=REFERENCES
    )


def main(argv=None) -> int:
    args, options = parse_args(argv)
    if args.compare:
        path = compare(args, options)
        with open(path) as f:
            print(f.read())
        print(f"report: {path}")
        return 0
    attack = make_attack(options)
    scores, done = {}, []
    n_scenarios = len(layout.scenarios(args.data_dir, args.challenge, args.scenario))
    data_iter = scenarios_data(args, cache_fields(args, options), [options], runner_up=options.as_submitted)
    for data in tqdm(data_iter, desc=options.attack, unit="scenario", total=n_scenarios):
        results = evaluation.attack_scenario(data, attack, args.evaluate)
        done.append((data.models, results))  # the signals themselves are not kept
        if args.evaluate:
            scores[data.scenario] = evaluation.score_results(data, results)
    # Every scenario is attacked before any prediction.csv is replaced, so a failure part-way never
    # leaves one attack's predictions beside another's.
    written = sum(evaluation.write_predictions(models, results) for models, results in done)
    print(f"wrote {written} prediction.csv files under {os.path.join(args.data_dir, args.challenge)}")
    if args.evaluate:
        print(report.scores_text(scores))
        paths = report.save_report(os.path.join(args.report_dir, args.challenge), scores)
        print("report: " + ", ".join(paths))
    return 0


if __name__ == "__main__":
    cli.run(main, "run_lira_mia.py")
