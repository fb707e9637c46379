"""Attack power at MICO's regime, and what extra shadow models (balanced vs MICO-random) add.

Builds the synthetic purchase100 challenge of ``download_files.py --synthetic --preset mico``
(--size mico, the default: Purchase-100-like shoppers labelled by k-means, MICO's 100 train, 25 dev
and 25 final models per scenario, 100 + 100 challenge points per model, MICO's recipe; see
docs/faithful_challenge.md), or the earlier, easier one (--size small: N = 10,000, 7 members and
7 non-members per model, 10 epochs, 8.5 minutes on 2 cores; --size full: MICO's N = 197,324,
wants a GPU). Then trains up to max(--shadows) extra shadows per scenario of each design
(train_shadows.py --design balanced / --design mico), caches every model's signals, and scores
each attack on dev + final against the ground truth with the first k extra shadows of one design
(the balanced design grows group by group, pairs at the default --fraction 0.5, so its first k
shadows are a balanced design of k):

- the MICO winner's configuration (calibrated, per-scenario signal and formula) and the runner-up's
  (offline LiRA, global variance), with extra shadows; and both as submitted (no extra shadows);
- offline and online LiRA, online LiRA with global variance, offline and online RMIA, the classifier.

Every score is printed with its bootstrap standard error over the 50 target models (--bootstrap
resamples). Prints a table, writes <out>/attack_power.{json,md} and <out>/attack_power.png
(TPR@10%FPR, the ranking metric averaged over the scenarios, and TPR@1%FPR on purchase100_inf,
against k). Every step resumes: rerunning continues where it stopped, with the same models (the
targets' training seeds come from the challenge's secret, kept in its solutions/ folder, so a
fresh run trains other models than an earlier fresh run).

    python bench/bench_attack_power.py [--out report/attack_power] [--device auto] [--size mico|small|full]

``--train-models``, ``--target-models`` and ``--scenarios`` shrink it further (the smoke test in
tests/test_bench.py runs one scenario with a handful of models).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import save_preds  # noqa: E402
from attacks.options import AttackOptions  # noqa: E402
from attacks.submitted import WINNER_CONFIG  # noqa: E402
from attacks.suite import make_attack  # noqa: E402
from challenges.datasets import load_dataset  # noqa: E402
from challenges.fileio import atomic_path, write_text  # noqa: E402
from challenges.scenario import ScenarioData, load_scenario  # noqa: E402
from challenges.tracks import load_params, scenario_names, scenario_suffix  # noqa: E402
from download_files import bootstrap_scores  # noqa: E402
from models.train import recipe_for  # noqa: E402
from production.design import designed_jobs, mico_jobs  # noqa: E402
from production.folders import train_with_progress  # noqa: E402
from production.synthetic import build_synthetic  # noqa: E402

TRACK = "purchase100"
MICO_RATIO = 150_000 / 197_324  # LEN_TRAINING / N
FIRST_MICO_ID = 1000
ALWAYS = ("MICO winner, as submitted", "Runner-up, as submitted")
METRICS = ("TPR_FPR_1000", "TPR_FPR_100", "TPR_FPR_10", "AUC")  # TPR@10%, 1%, 0.1%FPR
# --size: (n_points, len_challenge, epochs); None: the preset's or MICO's recipe.
SIZES = {
    "mico": (None, None, None),  # download_files.py --preset mico (docs/faithful_challenge.md)
    "small": (10_000, 7, 10),  # the earlier default: 8.5 minutes on 2 cores, the old generator
    "full": (197_324, 100, None),  # MICO's own N, the old generator; wants a GPU
}


def attacks_for(scenario: str) -> dict:
    """{label: AttackOptions}; the two as-submitted rows use the train models only."""
    w = WINNER_CONFIG[TRACK, scenario_suffix(scenario)]
    return {
        "MICO winner, as submitted": AttackOptions(attack="mico-winner"),
        "Runner-up, as submitted": AttackOptions(global_variance=True, as_submitted=True),
        "MICO winner's configuration": AttackOptions(attack="calibrated", signal=w.metric, calibration=w.formula),
        "Runner-up's configuration (LiRA offline, global variance)": AttackOptions(global_variance=True),
        "LiRA offline": AttackOptions(),
        "LiRA online": AttackOptions(online_attack=True),
        "LiRA online, global variance": AttackOptions(online_attack=True, global_variance=True),
        "RMIA offline": AttackOptions(attack="rmia"),
        "RMIA online": AttackOptions(attack="rmia", online_attack=True),
        "Classifier": AttackOptions(attack="classifier"),
    }


def build(args, data_dir: str) -> None:
    """The challenge, then the extra shadows of both designs (each step resumes)."""
    n, m = args.n_points, args.len_challenge
    build_synthetic(
        data_dir,
        TRACK,
        n_points=n,
        len_training=None if n is None else int(round(MICO_RATIO * n)),
        len_challenge=m,
        n_train=args.train_models,
        n_dev=args.target_models,
        n_final=args.target_models,
        seed=args.seed,
        device=args.device,
        epochs=args.epochs,
        scenarios=args.scenarios,
        preset="mico" if args.size == "mico" else None,
    )
    params = load_params(data_dir, TRACK)
    dataset = load_dataset(params)
    k = max(args.shadows)
    for scenario in args.scenarios:
        recipe = recipe_for(TRACK, scenario_suffix(scenario), **({"epochs": args.epochs} if args.epochs else {}))
        jobs, design = designed_jobs(data_dir, TRACK, scenario, params, dataset, k, args.seed, args.fraction)
        print(f"{scenario}: balanced design, {len(design.pool)} challenge points, f = {design.fraction:.3f}")
        if any(j % design.group for j in args.shadows):
            sys.exit(f"--shadows: a balanced design at f = {design.fraction:.3f} grows in groups of {design.group}")
        train_with_progress(jobs, params, dataset, f"{scenario}: balanced", device=args.device, recipe=recipe)
        mico = mico_jobs(data_dir, TRACK, scenario, params, len(dataset), k, args.seed, FIRST_MICO_ID)
        train_with_progress(mico, params, dataset, f"{scenario}: MICO-random", device=args.device, recipe=recipe)


def subset(data: ScenarioData, extra: list[int]) -> ScenarioData:
    """The scenario with MICO's train models, the extra shadow rows ``extra`` and the targets."""
    train = [i for i, md in enumerate(data.models) if md.phase == "train" and md.model_id < FIRST_MICO_ID]
    targets = [i for i, md in enumerate(data.models) if md.phase in ("dev", "final")]
    shadows = train + list(extra)
    rows = np.array(shadows + targets)
    return dataclasses.replace(
        data,
        models=[data.models[i] for i in rows],
        fields={k: v[rows] for k, v in data.fields.items()},
        challenge=data.challenge[rows],
        shadow_in=data.shadow_in[shadows],
        solutions=data.solutions[rows],
        runner_up_in=None if data.runner_up_in is None else data.runner_up_in[: len(train)],
    )


def score_all(args, data_dir: str, cache_dir: str) -> dict:
    """{scenario: {design: {k: {attack: metrics}}}} on dev + final."""
    params = load_params(data_dir, TRACK)
    out = {}
    for scenario in args.scenarios:
        data = load_scenario(
            data_dir, cache_dir, TRACK, scenario, params, params.n_points, ("phi", "mentr"), runner_up=True
        )
        pools = {
            "balanced": [i for i, md in enumerate(data.models) if md.phase == "shadow"],
            "mico": [i for i, md in enumerate(data.models) if md.phase == "train" and md.model_id >= FIRST_MICO_ID],
        }
        out[scenario] = {}
        for design, pool in pools.items():
            out[scenario][design] = {}
            for k in args.shadows:
                sub = subset(data, pool[:k])
                rows = np.concatenate([sub.phase_rows("dev"), sub.phase_rows("final")])
                res = {}
                for label, o in attacks_for(scenario).items():
                    if label in ALWAYS and k:
                        continue
                    scores = make_attack(o)(sub, rows, np.full(len(rows), -1))
                    m = bootstrap_scores(sub.solutions[rows], scores, args.bootstrap)
                    res[label] = {key: m[key][0] for key in METRICS} | {f"{key}_se": m[key][1] for key in METRICS}
                out[scenario][design][k] = res
                print(
                    f"{scenario} {design:8s} k={k:3d}: "
                    + ", ".join(f"{lb.split(' (')[0]} {cell(v, 'TPR_FPR_1000', 3)}" for lb, v in res.items()),
                    flush=True,
                )
    return out


def cell(m: dict, key: str, digits: int = 4) -> str:
    """A score with its bootstrap standard error over target models."""
    return f"{m[key]:.{digits}f} ± {m[key + '_se']:.{digits}f}"


def table(results: dict, shadows: list[int]) -> list[str]:
    """Markdown: one row per (attack, design, k); TPR@10%/1%/0.1%FPR and AUC per scenario, and the
    average, each ± its bootstrap standard error over target models (the average's: the scenarios'
    errors combined as independent)."""
    scenarios = list(results)
    head = (
        ["attack", "extra shadows"]
        + [f"{sc} {lbl}" for sc in scenarios for lbl in ("TPR@10%", "TPR@1%", "TPR@0.1%", "AUC")]
        + ["avg TPR@10%FPR"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    labels = list(results[scenarios[0]]["balanced"][shadows[0]])
    for label in labels:
        for design in ("balanced", "mico"):
            for k in shadows:
                if (k == 0 and design == "mico") or label not in results[scenarios[0]][design][k]:
                    continue
                ms = [results[sc][design][k][label] for sc in scenarios]
                cells = [cell(m, key) for m in ms for key in METRICS]
                avg = {
                    "TPR_FPR_1000": np.mean([m["TPR_FPR_1000"] for m in ms]),
                    "TPR_FPR_1000_se": np.sqrt(np.sum([m["TPR_FPR_1000_se"] ** 2 for m in ms])) / len(ms),
                }
                lines.append(
                    "| "
                    + " | ".join([label, "0" if k == 0 else f"{k} {design}"] + cells + [cell(avg, "TPR_FPR_1000")])
                    + " |"
                )
    return lines


def plot(results: dict, shadows: list[int], path: str) -> None:
    fig = Figure(figsize=(13, 5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    scenarios = list(results)
    labels = [lb for lb in results[scenarios[0]]["balanced"][shadows[0]] if lb not in ALWAYS]
    metric = [
        ("TPR_FPR_1000", scenarios, "TPR@10%FPR", "average over the scenarios (ranking metric)"),
        ("TPR_FPR_100", [s for s in scenarios if s.endswith("_inf")], "TPR@1%FPR", "purchase100_inf"),
    ]
    for ax, (key, scs, name, where) in zip(axes, metric):
        for i, label in enumerate(labels):
            for design, ls in (("balanced", "-"), ("mico", "--")):
                y = [np.mean([results[sc][design if k else "balanced"][k][label][key] for sc in scs]) for k in shadows]
                ax.plot(
                    shadows,
                    y,
                    ls=ls,
                    color=f"C{i}",
                    marker="o",
                    ms=3,
                    label=f"{label}" if design == "balanced" else None,
                )
        for j, label in enumerate(ALWAYS):
            y0 = np.mean([results[sc]["balanced"][0][label][key] for sc in scs])
            ax.axhline(y0, color="k", ls=[":", "-."][j], lw=1, label=label)
        ax.set(xlabel="extra shadow models", ylabel=name, title=f"{name}, {where}", xticks=shadows)
        ax.grid(alpha=0.3)
    handles, lbls = axes[0].get_legend_handles_labels()
    for ls, design in (("-", "balanced design"), ("--", "MICO-random design")):
        handles.append(Line2D([], [], color="0.4", ls=ls))
        lbls.append(f"extra shadows: {design}")
    fig.legend(handles, lbls, loc="center right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 0.75, 1))
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="report/attack_power", help="work folder: data, cache and results")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--size",
        choices=sorted(SIZES),
        default="mico",
        help="mico: the --preset mico challenge (default); small: N = 10,000, 7 + 7 challenge points per "
        "model, 10 epochs, the old generator (the earlier default); full: MICO's N = 197,324 (GPU)",
    )
    p.add_argument("--n-points", type=int, help="override the size's base dataset size")
    p.add_argument("--len-challenge", type=int, help="override the size's members (= non-members) per model")
    p.add_argument("--epochs", type=int, help="override the size's training epochs (MICO's recipe: 30)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples of the target models per score")
    p.add_argument("--shadows", default="0,16,32,64,128", help="numbers of extra shadows to score")
    p.add_argument("--train-models", type=int, default=100, help="train models per scenario (MICO: 100)")
    p.add_argument("--target-models", type=int, default=25, help="dev models (and as many final) per scenario")
    p.add_argument("--scenarios", nargs="+", choices=scenario_names(TRACK), default=scenario_names(TRACK))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fraction", type=float, default=0.5, help="balanced design: share of shadows a point is IN for")
    args = p.parse_args(argv)
    for name, value in zip(("n_points", "len_challenge", "epochs"), SIZES[args.size]):
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.size == "mico" and args.n_points is not None:
        p.error("--n-points: the mico size is the preset's; use --size small or full to choose N")
    args.shadows = sorted({int(v) for v in args.shadows.split(",")} | {0})
    if any(k % 2 for k in args.shadows):
        p.error("--shadows: even numbers (the balanced design comes in pairs)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    data_dir, cache_dir = os.path.join(args.out, "data"), os.path.join(args.out, "cache")
    t0 = time.time()
    build(args, data_dir)
    t1 = time.time()
    save_preds.main(["--challenge", TRACK, "--data-dir", data_dir, "--cache-dir", cache_dir, "--device", args.device])
    results = score_all(args, data_dir, cache_dir)
    t2 = time.time()
    lines = table(results, args.shadows)
    print("\n".join(lines))
    write_text(os.path.join(args.out, "attack_power.json"), json.dumps(results, indent=1) + "\n")
    write_text(os.path.join(args.out, "attack_power.md"), "\n".join(lines) + "\n")
    plot(results, args.shadows, os.path.join(args.out, "attack_power.png"))
    print(f"models {t1 - t0:.0f} s, signals and attacks {t2 - t1:.0f} s; {args.out}/attack_power.{{md,json,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
