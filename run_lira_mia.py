"""Attack every scenario of a challenge and write each dev/final model's prediction.csv.

Shadow models are the scenario's train models (plus any added by train_shadows.py); their
membership comes from their seeds. The default attack is offline LiRA, none of its four flags set;
--attack picks another; --attack auto picks, per scenario, the --compare row with the best
leave-one-out TPR@10%FPR on the train models and says why in <report-dir>/<track>/auto.md.
--evaluate also attacks every train model leave-one-out and scores it against its solution.csv
(and dev/final against a solutions/ tree, when present), so a submission's score is known before
it is made. --compare ranks every attack that way and writes report/<track>/report.md (no
prediction.csv is written then).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
import warnings

import numpy as np
from tqdm.auto import tqdm

from attacks import auto
from attacks.options import ATTACKS, CALIBRATIONS, MU_CHOICES, OFFLINE_TESTS, SIGNALS, STACK_OBJECTIVES, AttackOptions
from attacks.suite import (
    AUTO_LINEUP,
    COMPARE,
    COMPARE_SETS,
    MIN_VIEWS,
    REFERENCES,
    STACKED,
    WINNER,
    WINNER_CONFIGURATION,
    fields_needed,
    make_attack,
    needs_runner_up,
    runnable,
    target_reads,
    uses_logits,
    views_missing,
    with_shared,
)
from challenges import cache, cli, evaluation, layout, report, scoring, submission
from challenges.datasets import load_dataset
from challenges.fileio import write_text
from challenges.scenario import load_scenario, runner_up_note, target_truth
from challenges.tracks import TARGET_PHASES, TARGETS, load_params, secret_warning

# AttackOptions field -> the flag that sets it (filled by build_parser), to render commands.
OPTION_FLAGS: dict[str, str] = {}
AUTO = "Auto (best train leave-one-out TPR@10%FPR per scenario; its train score is in-sample)"
AUTO_HONEST = "Auto, honest estimate (each half scored with the choice made on the other half)"
BOOTSTRAP_REFERENCES = {WINNER: "winner as submitted", WINNER_CONFIGURATION: "winner's configuration"}


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
    _option(p, "--seed", type=cli.non_negative_int, help="seed for sampling in rmia and classifier")
    lira = p.add_argument_group("LiRA (the runner-up's flags; --online_attack also selects online RMIA and neighbours)")
    _option(
        lira,
        "--as_submitted",
        action="store_true",
        help="the runner-up's LiRA exactly as released, bugs included (docs/as_submitted.md); with its four flags",
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
    _option(rm, "--rmia-gamma", type=cli.positive_float, help="likelihood-ratio threshold gamma")
    _option(rm, "--rmia-population", type=cli.positive_int, help="population points z per target")
    cal = p.add_argument_group("calibrated")
    _option(cal, "--signal", choices=SIGNALS, help="signal to calibrate")
    _option(
        cal, "--calibration", choices=CALIBRATIONS, help="s - mu_in, s - (mu_in + mu_out)/2, or (s - mu_all)/sigma_all"
    )
    st = p.add_argument_group("stacked")
    _option(
        st,
        "--stack-objective",
        choices=STACK_OBJECTIVES,
        help="logloss, or low-fpr: refit with the rows above the non-members' 80%% quantile weighted 4x "
        "(docs/attacks_auto_stacked.md)",
    )
    order = p.add_argument_group("training order (no extra model query; docs/attacks.md#training-order)")
    _option(
        order,
        "--order-shift",
        action="store_true",
        help="online LiRA, online RMIA, calibrated in/mid, mico-winner-config: shift the IN side to a "
        "first-trained member's, by the shift the train models' own members measure",
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
    else:  # flags the chosen attack never reads would do nothing: refused, as --compare refuses its own
        config = " ".join(option_flags(options)) or f"--attack {options.attack}"
        cli.refuse_unused(p, {OPTION_FLAGS[k]: True for k in options.unused()}, f"{config} does not use")
    return args, options


def option_flags(options: AttackOptions) -> list[str]:
    """The command-line flags that reproduce ``options`` (those that differ from the defaults and that
    its attack reads)."""
    out = []
    unused = options.unused()
    for name, value in options.changed().items():
        if name in unused:
            continue
        out += [OPTION_FLAGS[name]] if isinstance(value, bool) else [OPTION_FLAGS[name], str(value)]
    return out


def cache_fields(args, options: AttackOptions) -> tuple:
    """Cache fields the attack reads; logits only where save_preds.py stored them for every model."""
    if not uses_logits(options):
        return fields_needed(options)
    mds = _all_models(args)
    return fields_needed(options, bool(mds) and all(cache.has_field(args.cache_dir, md, "logits") for md in mds))


def _all_models(args) -> list:
    return [
        md
        for sc in layout.scenarios(args.data_dir, args.challenge, args.scenario)
        for md in layout.models(args.data_dir, args.challenge, sc)
    ]


def cache_views(args) -> int:
    """The fewest query views any model's cache file holds (1 where none can be read: loading the
    scenario then names the problem). Attacks that need more are left out of the line-up."""
    return min((len(v) for md in _all_models(args) if (v := cache.views(args.cache_dir, md))), default=1)


def scenarios_data(args, fields, runs, runner_up: bool = False):
    """Yield each scenario's arrays for the attacks of ``runs``, loaded once (``runner_up``: with the
    runner-up's membership)."""
    params = load_params(args.data_dir, args.challenge)
    n_points = len(load_dataset(params)) if params.n_points is None else params.n_points
    if runner_up:
        print(runner_up_note(params, n_points))
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


def compare(args, options: AttackOptions, note: str | None = None) -> str:
    """Score every row of the line-up leave-one-out, then auto's rows and the paired bootstrap
    standard errors (train; dev and final where their truth is known); write report.md; return its path."""
    n_views = cache_views(args)
    runs, left_out = runnable(with_shared(COMPARE, options), n_views)
    lineup = runnable(with_shared(AUTO_LINEUP, options), n_views)[0]
    fields = tuple(sorted({f for _, o in runs for f in cache_fields(args, o)}))
    scores = {label: {} for label, _ in runs} | {AUTO: {}, AUTO_HONEST: {}}
    notes, replicates, target_reps, seconds = [], {}, {}, {}
    n_scenarios = len(layout.scenarios(args.data_dir, args.challenge, args.scenario))
    bar = tqdm(total=(len(runs) + 1) * n_scenarios, desc="compare", unit="run")
    rows = [o for _, o in runs]
    for i, data in enumerate(scenarios_data(args, fields, rows, runner_up=any(needs_runner_up(o) for o in rows))):
        train, targets = {}, {}
        for label, o in runs:
            bar.set_postfix_str(f"{data.scenario}: {label}")
            start = time.perf_counter()
            results = evaluation.attack_scenario(data, make_attack(o), evaluate=True)
            seconds[label] = seconds.get(label, 0.0) + time.perf_counter() - start
            # no per-row bootstrap: targets_replicates resamples every row together below
            scores[label][data.scenario] = evaluation.score_results(data, results, errors=False)
            train[label] = results["train"]
            targets[label] = results
            bar.update()
        bar.set_postfix_str(f"{data.scenario}: auto's honest estimate")
        train[AUTO], train[AUTO_HONEST], halves, choice, said = compare_auto(data, lineup, train, scores, options.seed)
        targets[AUTO] = targets[choice]
        notes += said
        rows = train[AUTO][0]
        replicates[data.scenario] = scoring.bootstrap_tpr(
            target_truth(data, rows),
            {lb: s for lb, (_, s) in train.items()},
            seed=i,
            strata=halves,
            by_stratum=(AUTO_HONEST,),
        )
        # auto's in-sample score is the best of the line-up: each resample makes the choice again
        replicates[data.scenario][AUTO] = np.max([replicates[data.scenario][lb] for lb, _ in lineup], axis=0)
        target_reps[data.scenario] = targets_replicates(data, targets, seed=i)
        bar.update()
    bar.close()
    sections = ["## Auto: the attack chosen per scenario", ""] + notes + [""]
    if left_out:
        why = next(iter(left_out.values()))
        sections += [f"Left out of this comparison and of auto's line-up: {', '.join(left_out)} ({why}).", ""]
    sections += bootstrap_section(scores, replicates, [lb for lb, o in runs if o.attack != "stacked"])
    if all(target_reps.values()):
        sections += targets_section(scores, target_reps)
    sections += cost_section(runs, seconds, n_views)
    rows = runs + with_shared(
        [(AUTO, AttackOptions(attack="auto")), (AUTO_HONEST, AttackOptions(attack="auto"))], options
    )
    commands = {label: " ".join(base_command(args) + option_flags(row)) for label, row in rows}
    return report.write_compare_report(
        os.path.join(args.report_dir, args.challenge),
        scores,
        commands,
        references=REFERENCES,
        sections=sections,
        note=note,
    )


def cost_section(runs, seconds: dict, n_views: int) -> list[str]:
    """report.md's cost of each row: its wall time here (every scenario, train leave-one-out plus dev
    and final) and what it reads of the cache beyond the original query (extra forward passes)."""
    lines = ["## Cost of each row (wall time in this run, every scenario)", ""]
    lines += ["| attack | seconds | extra model queries it needs |", "|---|---|---|"]
    for label, o in runs:
        extra = f"query views: {n_views - 1} per point and model here" if o.attack in MIN_VIEWS else "none"
        lines.append(f"| {label} | {seconds.get(label, 0.0):.1f} | {extra} |")
    return lines + [""]


def targets_replicates(data, targets: dict, seed: int) -> dict:
    """{label: (B,)} paired bootstrap replicates of each row's dev+final TPR@10%FPR (each phase on
    its own pooled ROC, then their mean; target models resampled within each phase), or {} where a
    phase's truth is unknown (MICO's own challenge)."""
    known = {}
    for label, results in targets.items():
        parts = {ph: (target_truth(data, results[ph][0]), results[ph][1]) for ph in TARGET_PHASES if ph in results}
        if len(parts) < len(TARGET_PHASES) or any((t < 0).any() for t, _ in parts.values()):
            return {}
        known[label] = evaluation.targets_by_phase(parts)
    truth, _, phases = next(iter(known.values()))
    return scoring.phase_replicates(truth, {lb: s for lb, (_, s, _) in known.items()}, phases, seed=seed)


def compare_auto(data, lineup: list, train: dict, scores: dict, seed: int):
    """Auto's two rows from the results of its line-up [(label, options)]: (its train rows and
    scores, the honest estimate's, each train model's half, the label chosen, the report's lines);
    ``scores`` gets both rows for this scenario, the honest one scored half by half (attacks.auto)."""
    rows = auto.train_rows(data)
    choice = auto.choose_and_estimate(
        data,
        {label: make_attack(o) for label, o in lineup},
        {label: train[label][1] for label, _ in lineup},
        seed=seed,
    )
    scores[AUTO][data.scenario] = scores[choice.label][data.scenario]
    h = choice.honest
    scores[AUTO_HONEST][data.scenario] = {"train": honest_score(data, choice)}
    return train[choice.label], (rows, h.scores), h.half, choice.label, auto.describe(data.scenario, choice)


def honest_score(data, choice: auto.Choice) -> dict:
    """MICO's metrics of auto's honest split-half estimate: each half of the train models scored on
    its own pooled ROC, then their mean (as attacks.auto scores it)."""
    h = choice.honest
    return scoring.mean_over_groups(target_truth(data, auto.train_rows(data)), h.scores, h.half)


def bootstrap_section(scores: dict, replicates: dict, singles: list) -> list[str]:
    """report.md's standard errors: the train phase's average TPR@10%FPR of every row, and the
    stacked attack against the best of ``singles`` (the single attacks compared) per scenario;
    paired bootstrap over the train models of each scenario (``replicates``: {scenario: {label:
    (B,)}}, resampled independently)."""
    labels = list(next(iter(replicates.values())))
    by_sc = {sc: {lb: scores[lb][sc]["train"][scoring.RANKING_KEY] for lb in labels} for sc in replicates}
    point = {lb: float(np.mean([v[lb] for v in by_sc.values()])) for lb in labels}
    reps = {lb: np.mean([r[lb] for r in replicates.values()], axis=0) for lb in labels}
    n = len(reps[labels[0]])
    return [
        f"## Standard errors (train, leave-one-out; paired bootstrap over the train models, {n} resamples)",
        "",
        f"{AUTO}: each resample makes auto's choice again (the best row of the line-up on that resample), "
        f"so its ± includes the choice. {AUTO_HONEST}: each half's choice is held fixed over the resamples, "
        "so its ± leaves out the variability of the choice itself.",
        "",
        *report.bootstrap_table(point, reps, BOOTSTRAP_REFERENCES),
        "",
        "## The stacked attack against the best single attack per scenario (train, leave-one-out)",
        "",
        *report.versus_best_table(by_sc, replicates, STACKED, singles),
        "",
    ]


def targets_section(scores: dict, target_reps: dict) -> list[str]:
    """report.md's standard errors on dev and final (where their truth is known): each row's
    average over the scenarios of the dev+final TPR@10%FPR (each phase on its own, then their mean),
    ± the paired bootstrap SE over the target models, resampled within each phase."""
    labels = list(next(iter(target_reps.values())))
    point = {lb: float(np.mean([scores[lb][sc][TARGETS][scoring.RANKING_KEY] for sc in target_reps])) for lb in labels}
    reps = {lb: np.mean([r[lb] for r in target_reps.values()], axis=0) for lb in labels}
    return [
        f"## Standard errors ({report.PHASE_LABELS[TARGETS]}; paired bootstrap, {len(reps[labels[0]])} resamples)",
        "",
        f"{AUTO} here is the attack it chose on the train models: the choice never saw a target and is held "
        "fixed over the resamples.",
        "",
        *report.bootstrap_table(point, reps, BOOTSTRAP_REFERENCES),
        "",
    ]


def base_command(args) -> list[str]:
    """The command line of a --compare row, up to its attack flags."""
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
    return base + ["--evaluate"]


def auto_train_scores(data, choice: auto.Choice, scores: dict) -> dict:
    """--attack auto --evaluate: the train phase's in-sample score (auto chose on it) renamed as such,
    and the honest split-half estimate beside it, scored half by half (attacks.auto)."""
    out = dict(scores)
    out[report.HONEST_PHASE] = honest_score(data, choice)
    if "train" in out:
        out[report.IN_SAMPLE_PHASE] = out.pop("train")
    return {ph: out[ph] for ph in report.REPORT_PHASES if ph in out}


def write_auto_report(args, attack: auto.AutoAttack) -> str:
    """Print and write <report-dir>/<track>/auto.md: what --attack auto chose per scenario and why."""
    lines = ["# --attack auto: the attack chosen per scenario", ""]
    for scenario, choice in attack.choices.items():
        lines += auto.describe(scenario, choice)
    text = "\n".join(lines) + "\n"
    print(text)
    path = os.path.join(args.report_dir, args.challenge, "auto.md")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_text(path, text)
    return path


def main(argv=None) -> int:
    args, options = parse_args(argv)
    # Reports of a challenge built with the test secret say that its targets are not private.
    warning = secret_warning(args.data_dir, args.challenge, load_params(args.data_dir, args.challenge))
    missing = None if args.scenario else layout.missing_scenarios_note(args.data_dir, args.challenge)
    if missing:
        warnings.warn(missing, layout.LayoutWarning, stacklevel=1)
    if args.compare:
        path = compare(args, options, note=warning)
        with open(path) as f:
            print(f.read())
        print(f"report: {path}")
        return 0
    missing = views_missing(options, cache_views(args)) if options.attack in MIN_VIEWS else None
    if missing:
        raise cache.CacheError(f"--attack {options.attack} {missing}")
    attack = make_attack(options)
    scores, done = {}, []
    n_scenarios = len(layout.scenarios(args.data_dir, args.challenge, args.scenario))
    data_iter = scenarios_data(args, cache_fields(args, options), [options], runner_up=needs_runner_up(options))
    for i, data in enumerate(tqdm(data_iter, desc=options.attack, unit="scenario", total=n_scenarios)):
        results = evaluation.attack_scenario(data, attack, args.evaluate)
        done.append((data.models, results))  # the signals themselves are not kept
        if args.evaluate:
            scores[data.scenario] = evaluation.score_results(data, results, seed=i)
            if isinstance(attack, auto.AutoAttack):
                scores[data.scenario] = auto_train_scores(data, attack.choices[data.scenario], scores[data.scenario])
    # Every scenario is attacked before any prediction.csv is replaced, and the run's record is
    # written last, so save_zip.py refuses a set that a run failing part-way (a full disk) mixed.
    command = shlex.join(["run_lira_mia.py", *(sys.argv[1:] if argv is None else argv)])
    run = evaluation.write_run(args.data_dir, args.challenge, done, command)
    print(
        f"wrote {len(run['files'])} prediction.csv files under {os.path.join(args.data_dir, args.challenge)} "
        f"(run {run['run_id']}, recorded in {submission.manifest_path(args.data_dir, args.challenge)})"
    )
    if isinstance(attack, auto.AutoAttack):
        print(f"auto's choices: {write_auto_report(args, attack)}")
    if args.evaluate:
        print(report.scores_text(scores, note=warning))
        paths = report.save_report(os.path.join(args.report_dir, args.challenge), scores)
        print("report: " + ", ".join(paths))
    return 0


if __name__ == "__main__":
    cli.run(main, "run_lira_mia.py")
