"""Attack power on the faithful challenge: every attack of the line-up that matters, against the
number of designed shadows, at f = 1/2 and at the targets' own rate (issue 16, items 3 and 4).

Builds the synthetic purchase100 challenge of ``download_files.py --synthetic --preset mico``
(--size mico, the default: Purchase-100-like shoppers labelled by k-means, MICO's 100 train, 25 dev
and 25 final models per scenario, 100 + 100 challenge points per model, MICO's recipe; see
docs/faithful_challenge.md), or the earlier, easier one (--size small: N = 10,000, 7 members and
7 non-members per model, 10 epochs; --size full: MICO's N = 197,324, wants a GPU). Then, per
--fractions f, trains max(--shadows) designed shadows per scenario (train_shadows.py --design
balanced --fraction f, pool points first in an order of their own per shadow), in a view of the
challenge of its own (<out>/f<f>/data: the challenge's folders linked, its own shadow folder, its
own signal cache), and scores on dev and final against the ground truth, each phase on its own
pooled ROC (MICO ranked them apart; the winner as submitted min-max scales each phase apart) and
then their mean, with the first k designed shadows next to MICO's train models, k in --shadows:

- the MICO winner as submitted (train models only) and the winner's configuration (its
  per-scenario signal and formula on our calibrated attack, every shadow);
- LiRA offline and online, RMIA offline (a auto) and online, the classifier, the stacked attack;
- auto: per scenario the line-up attack (attacks.suite.AUTO_LINEUP, the rows that run on the cached views) with the best
  leave-one-out TPR@10%FPR on the train models; on dev + final that is an honest score (the choice
  never sees a target). Its honest split-half estimate on the train models (attacks.auto, as
  run_lira_mia.py --compare reports it) is printed next to it.

TPR at 10%, 1% and 0.1% FPR, each with its bootstrap standard error over the target models
(resampled within each phase); paired bootstrap standard errors (challenges.scoring.phase_replicates,
the same resamples for every attack) of each row's difference from both MICO references for the
scenario-average TPR@10%FPR and for purchase100_inf's TPR@1%FPR; the aim and how far each row is
from it. Every row is
printed as soon as it is measured. Writes <out>/attack_power.{json,md} and <out>/attack_power.png
(score against the number of shadows, per attack, with error bars). Every step resumes: models,
signals and each (scenario, f, k) cell's scores (<out>/scores/*.npz) are kept, and a rerun
continues where it stopped with the same models.

    python bench/bench_attack_power.py [--out report/attack_power] [--size mico|small|full]
        [--shadows 0,32,64,128] [--fractions 0.5,0.75] [--scenarios ...]

``--fractions 0.5,0.75:128 --shadows 0,32,64,128,256``: f:K scores at most K shadows at f (256
designed shadows at f = 1/2, 128 at 3/4). On a CPU host, the same command with ``--build-only``
started beside it (``OMP_NUM_THREADS=1`` in both) trains half the models: each is claimed under a
lock.

``--train-models``, ``--target-models`` and ``--scenarios`` shrink it (the smoke test in
tests/test_bench.py runs one scenario with a handful of models).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from fractions import Fraction

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import save_preds  # noqa: E402
from attacks import (
    auto,  # noqa: E402
    suite,  # noqa: E402
)
from attacks.options import AttackOptions  # noqa: E402
from challenges import scoring  # noqa: E402
from challenges.datasets import load_dataset  # noqa: E402
from challenges.fileio import atomic_path, write_text  # noqa: E402
from challenges.scenario import ScenarioData, load_scenario, target_truth  # noqa: E402
from challenges.tracks import load_params, scenario_names, scenario_suffix  # noqa: E402
from models.train import recipe_for  # noqa: E402
from production.design import MAX_GROUP, designed_jobs  # noqa: E402
from production.folders import train_with_progress  # noqa: E402
from production.synthetic import build_synthetic  # noqa: E402

TRACK = "purchase100"
MICO_RATIO = 150_000 / 197_324  # LEN_TRAINING / N
# --size: (n_points, len_challenge, epochs); None: the preset's or MICO's recipe.
SIZES = {
    "mico": (None, None, None),  # download_files.py --preset mico (docs/faithful_challenge.md)
    "small": (10_000, 7, 10),  # the earlier default: the old generator, N = 10,000
    "full": (197_324, 100, None),  # MICO's own N, the old generator; wants a GPU
}
MAX_SHADOWS = 256  # the aim allows at most 256 designed shadows per scenario
# (column, scoring key, FPR): MICO's TPR at 10%, 1% and 0.1% FPR
FPRS = (("TPR@10%", "TPR_FPR_1000", 0.1), ("TPR@1%", "TPR_FPR_100", 0.01), ("TPR@0.1%", "TPR_FPR_10", 0.001))
WINNER, CONFIG, AUTO = "MICO winner, as submitted", "MICO winner's configuration", "Auto"
# The table's rows: {label here: label in attacks.suite.AUTO_LINEUP}; auto comes after them.
BASE_ROWS = {
    WINNER: suite.WINNER,
    CONFIG: suite.WINNER_CONFIGURATION,
    "LiRA offline": "LiRA offline",
    "LiRA online": "LiRA online",
    "RMIA offline (a auto)": "RMIA offline (a auto)",
    "RMIA online": "RMIA online",
    "Classifier": "Classifier (ExtraTrees)",
    "Stacked": suite.STACKED,
    # issue 24: training order (no extra query) and a combiner matched to the metric
    "LiRA online (training order)": "LiRA online (training order)",
    "RMIA online (training order)": "RMIA online (training order)",
    "Stacked, low-FPR weights": suite.STACKED_LOW_FPR,
}
NEIGHBOUR_ROWS = {"Neighbourhood online": suite.NEIGHBOURS_ONLINE}  # with --neighbours K only
ROWS = dict(BASE_ROWS)
LABELS = (*ROWS, AUTO)


def use_rows(neighbours: int) -> None:
    """The rows scored and shown: the neighbourhood attack's only where its views are cached."""
    global ROWS, LABELS
    ROWS = BASE_ROWS | (NEIGHBOUR_ROWS if neighbours else {})
    LABELS = (*ROWS, AUTO)


INF = "purchase100_inf"
AIM = (
    "The aim (issue 16): on the faithful challenge, --attack auto with at most 256 designed shadows per "
    "scenario beats the MICO winner as submitted by at least 0.03 average TPR@10%FPR, the winner's "
    "configuration by more than twice the paired standard error, and at least doubles the winner's "
    "TPR@1%FPR on purchase100_inf."
)


def settings(args) -> list[tuple]:
    """(fraction, k) of every scored cell; k = 0 (MICO's train models only) once, its f None."""
    return [(None, 0)] + [(f, k) for f in args.fractions for k in shadows_at(args, f) if k]


def shadows_at(args, f: float) -> list[int]:
    """The numbers of designed shadows scored at fraction f: --shadows, up to f's cap if it has one."""
    return [k for k in args.shadows if k <= args.caps.get(f, MAX_SHADOWS)]


def setting_name(f, k) -> str:
    return "k0" if not k else f"f{f:g}_k{k}"


def view_dir(out: str, f: float) -> str:
    return os.path.join(out, f"f{f:g}")


def make_view(out: str, f: float, scenarios) -> str:
    """<out>/f<f>/data: the challenge in <out>/data linked entry by entry, with a shadow folder of
    its own per scenario (a shadow folder holds one design); returns its data dir."""
    base = os.path.abspath(os.path.join(out, "data", TRACK))
    view = os.path.join(view_dir(out, f), "data", TRACK)
    os.makedirs(view, exist_ok=True)
    for entry in sorted(os.listdir(base)):
        inside = [e for e in os.listdir(os.path.join(base, entry)) if e != "shadow"] if entry in scenarios else None
        if inside is None:
            _link(os.path.join(base, entry), os.path.join(view, entry))
            continue
        os.makedirs(os.path.join(view, entry), exist_ok=True)
        for e in inside:
            _link(os.path.join(base, entry, e), os.path.join(view, entry, e))
    return os.path.join(view_dir(out, f), "data")


def _link(src: str, dst: str) -> None:
    """``dst`` -> ``src``; a link another process (--build-only beside the full run) made first is kept."""
    try:
        os.symlink(src, dst)
    except FileExistsError:
        if os.path.realpath(dst) != os.path.realpath(src):
            raise


def build(args) -> None:
    """The challenge, then each fraction's designed shadows (each step resumes)."""
    n, m = args.n_points, args.len_challenge
    data_dir = os.path.join(args.out, "data")
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
    for f in args.fractions:
        k = max(shadows_at(args, f))
        view = make_view(args.out, f, args.scenarios)
        for scenario in args.scenarios:
            if not k:
                continue
            recipe = recipe_for(TRACK, scenario_suffix(scenario), **({"epochs": args.epochs} if args.epochs else {}))
            jobs, design = designed_jobs(view, TRACK, scenario, params, dataset, k, args.seed, f, recipe=recipe)
            if any(j % design.group for j in shadows_at(args, f)):
                sys.exit(f"--shadows: a balanced design at f = {design.fraction:.3f} grows in groups of {design.group}")
            print(f"{scenario}: balanced design, {len(design.pool)} challenge points, f = {design.fraction:.3f}")
            train_with_progress(jobs, params, dataset, f"{scenario}: f = {f:g}", device=args.device, recipe=recipe)


def subset(data: ScenarioData, extra: list[int]) -> ScenarioData:
    """The scenario with MICO's train models, the extra shadow rows ``extra`` and the targets."""
    train = [i for i, md in enumerate(data.models) if md.phase == "train"]
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
        shadow_first=None if data.shadow_first is None else data.shadow_first[shadows],
    )


def errors(truth, scores: dict, phases, n_boot: int, seed: int) -> dict:
    """{column: {label: (n_boot,) paired bootstrap replicates}} at each FPR of FPRS: each phase's own
    pooled TPR, then their mean, target models resampled within each phase (MICO scored dev and final
    apart)."""
    return {
        col: scoring.phase_replicates(truth, scores, phases, fpr=fpr, n_boot=n_boot, seed=seed) for col, _, fpr in FPRS
    }


def row_text(truth, s, phases, n_boot: int, seed: int) -> str:
    m = scoring.phase_mean(truth, s, phases, n_boot=n_boot, seed=seed)
    return ", ".join(f"{col} {m[key]:.4f} ± {m[key + scoring.SE_SUFFIX]:.4f}" for col, key, _ in FPRS)


def score_cell(args, data: ScenarioData, pool: list, f, k: int, seed: int) -> dict:
    """One (scenario, f, k) cell: every line-up attack on dev + final and, leave-one-out, on the
    train models (which auto chooses on), auto's choice and its honest split-half estimate; each
    table row printed as soon as it is measured. Returns the arrays kept in the cell's .npz."""
    sub = subset(data, pool[:k])
    targets = np.concatenate([sub.phase_rows("dev"), sub.phase_rows("final")])
    train = auto.train_rows(sub)
    rows, excl = np.concatenate([targets, train]), np.concatenate([np.full(len(targets), -1), train])
    truth, phases = target_truth(sub, targets), np.array([sub.models[r].phase for r in targets])
    n_views = sub.phi.shape[2]  # the neighbourhood rows run only where their views are cached, as in --compare
    lineup = dict(suite.runnable(suite.with_shared(suite.AUTO_LINEUP, AttackOptions(seed=args.seed)), n_views)[0])
    attacks = {lb: suite.make_attack(o) for lb, o in lineup.items()}
    first = [ROWS[lb] for lb in ROWS]
    order = first + [lb for lb in lineup if lb not in first]
    where = f"{data.scenario} {'' if f is None else f'f={f:g} '}k={k}"
    scores = {}
    for lb in order:
        t = time.time()
        try:
            scores[lb] = attacks[lb](sub, rows, excl)
        except ValueError as e:  # too few shadows for it: auto chooses among the others, as a half does
            if lb in first:
                sys.exit(f"{where}: {lb} cannot run here ({e}); give it more --train-models or --shadows")
            print(f"{where}: {lb} left out of auto's choice: {e}", flush=True)
            del attacks[lb]
            continue
        if lb in first:
            name = next(n for n, v in ROWS.items() if v == lb)
            text = row_text(truth, scores[lb][: len(targets)], phases, args.bootstrap, seed)
            print(f"{where}: {name}: {text} ({time.time() - t:.0f} s)", flush=True)
    t = time.time()
    choice = auto.choose_and_estimate(sub, attacks, {lb: s[len(targets) :] for lb, s in scores.items()}, seed=args.seed)
    picked = scores[choice.label][: len(targets)]
    h = choice.honest
    print(
        f"{where}: {AUTO} (chose {choice.label}; train, in-sample {choice.train_tpr[choice.label]:.4f}, honest "
        f"split-half {h.tpr:.4f}): {row_text(truth, picked, phases, args.bootstrap, seed)} ({time.time() - t:.0f} s)",
        flush=True,
    )
    out = {f"score {name}": scores[v][: len(targets)] for name, v in ROWS.items()}
    return out | {
        f"score {AUTO}": picked,
        "truth": truth,
        "phase": phases,
        "auto_label": np.array(choice.label),
        "auto_train_tpr": np.array(choice.train_tpr[choice.label]),
        "honest_scores": h.scores,
        "honest_half": h.half,
        "honest_truth": sub.solutions[train],
        "honest_tpr": np.array(h.tpr),
        "honest_picks": np.array([lb for _, lb in h.picks]),
    }


def cell_path(out: str, scenario: str, f, k: int) -> str:
    return os.path.join(out, "scores", f"{scenario}_{setting_name(f, k)}.npz")


def score_all(args) -> None:
    """Every (scenario, f, k) cell not yet in <out>/scores: computed, printed, then kept."""
    params = load_params(os.path.join(args.out, "data"), TRACK)
    reads = suite.target_reads([o for _, o in suite.AUTO_LINEUP])
    fields = suite.fields_needed(AttackOptions(attack="auto"))
    for si, scenario in enumerate(args.scenarios):
        for f in args.fractions:
            todo = [
                k for k in shadows_at(args, f) if not os.path.exists(cell_path(args.out, scenario, f if k else None, k))
            ]
            todo = [k for k in todo if k or f == args.fractions[0]]
            if not todo:
                continue
            data_dir, cache_dir = (
                os.path.join(view_dir(args.out, f), "data"),
                os.path.join(view_dir(args.out, f), "cache"),
            )
            data = load_scenario(
                data_dir, cache_dir, TRACK, scenario, params, params.n_points, fields, runner_up=True, reads=reads
            )
            pool = [i for i, md in enumerate(data.models) if md.phase == "shadow"]
            for k in todo:
                cell = score_cell(args, data, pool, f if k else None, k, si)
                path = cell_path(args.out, scenario, f if k else None, k)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                    np.savez(fh, **cell)


def aggregate(args) -> dict:
    """{setting: {label: row}} from the kept cells: each score ± its bootstrap SE, the scenario
    average of TPR@10%FPR, and paired differences from both MICO references (each scenario
    resampled on its own, seed = its place in --scenarios, the same draws in every setting)."""
    out, base = {}, None
    for f, k in settings(args):
        cells = {sc: load_cell(cell_path(args.out, sc, f, k)) for sc in args.scenarios}
        reps, rows = {}, {lb: {"scenarios": {}} for lb in LABELS}
        for si, (sc, c) in enumerate(cells.items()):
            scores = {lb: c[f"score {lb}"] for lb in LABELS}
            reps[sc] = errors(c["truth"], scores, c["phase"], args.bootstrap, si)
            for lb in LABELS:
                m = scoring.mean_over_groups(c["truth"], scores[lb], c["phase"])  # each phase, then their mean
                pooled = scoring.score(c["truth"], scores[lb])[scoring.RANKING_KEY]  # the old way, for the record
                rows[lb].setdefault("pooled TPR@10%", {})[sc] = pooled
                rows[lb]["scenarios"][sc] = {
                    col: [m[key], scoring.paired_se(reps[sc][col][lb])] for col, key, _ in FPRS
                }
            rows[AUTO]["scenarios"][sc] |= auto_cell(c, args.bootstrap, si)
        # the scenario average at each FPR: its replicates, point and SE
        avgs = {col: {lb: np.mean([reps[sc][col][lb] for sc in cells], axis=0) for lb in LABELS} for col, _, _ in FPRS}
        for lb in LABELS:
            for col, _, _ in FPRS:
                point = float(np.mean([v[col][0] for v in rows[lb]["scenarios"].values()]))
                rows[lb][f"avg {col}"] = [point, scoring.paired_se(avgs[col][lb])]
            rows[lb]["avg TPR@10% pooled"] = float(np.mean(list(rows[lb].pop("pooled TPR@10%").values())))
        avg = avgs["TPR@10%"]
        for lb in LABELS:
            r = rows[lb]
            for ref in (WINNER, CONFIG):
                d = r["avg TPR@10%"][0] - rows[ref]["avg TPR@10%"][0]
                r[f"avg TPR@10% - {ref}"] = [d, scoring.paired_se(avg[lb], avg[ref])]
                if INF in cells:
                    d = r["scenarios"][INF]["TPR@1%"][0] - rows[ref]["scenarios"][INF]["TPR@1%"][0]
                    r[f"inf TPR@1% - {ref}"] = [d, scoring.paired_se(reps[INF]["TPR@1%"][lb], reps[INF]["TPR@1%"][ref])]
            r["aim"] = aim_gaps(r, rows[WINNER], INF in cells)
        against_plain(rows, avgs, reps)
        if base is None:  # k = 0 comes first: what designed shadows add is measured against it
            base = rows, avgs, reps
        else:
            gains(rows, avgs, reps, *base)
        shares = {} if f is None else {sc: share_used(args.out, f, sc) for sc in args.scenarios}
        out[setting_name(f, k)] = {"fraction": f, "shares": shares, "shadows": k, "rows": rows}
    return out


def load_cell(path: str) -> dict:
    """A kept cell's arrays; one kept before the bench scored each phase on its own (no 'phase') is
    refused with the fix: its targets' phases were not recorded."""
    c = dict(np.load(path))
    missing = [lb for lb in LABELS if f"score {lb}" not in c]
    if missing:
        sys.exit(f"{path}: scored without {', '.join(missing)}; delete it and rerun (only the scores are recomputed)")
    if "phase" not in c:
        sys.exit(
            f"{path}: kept before each phase was scored on its own (no 'phase' array); delete "
            f"{os.path.dirname(path)} and rerun: the models and signals are kept, only the scores are recomputed"
        )
    return c


# issue 24's rows and what each is measured against: the same attack without the new signal
PLAIN = {
    "LiRA online (training order)": "LiRA online",
    "RMIA online (training order)": "RMIA online",
    "Stacked, low-FPR weights": "Stacked",
    "Neighbourhood online": "LiRA online",
}


def against_plain(rows: dict, avgs: dict, reps: dict) -> None:
    """Each issue-24 row's difference from its plain counterpart (PLAIN) in the same setting."""
    for lb, plain in PLAIN.items():
        if lb in rows:
            rows[lb]["vs plain"] = paired_gain((rows, avgs, reps), lb, (rows, avgs, reps), plain)


def paired_gain(now: tuple, lb: str, then: tuple, lb0: str) -> dict:
    """Row ``lb`` of ``now`` minus row ``lb0`` of ``then`` (each (rows, avgs, reps) of a setting), ±
    the paired SE (the same targets and bootstrap draws): scenario averages at each FPR, and
    purchase100_inf's TPR@1%FPR."""
    (rows, avgs, reps), (rows0, avgs0, reps0), g = now, then, {}
    for col, _, _ in FPRS:
        d = rows[lb][f"avg {col}"][0] - rows0[lb0][f"avg {col}"][0]
        g[f"avg {col}"] = [d, scoring.paired_se(avgs[col][lb], avgs0[col][lb0])]
    if INF in reps:
        d = rows[lb]["scenarios"][INF]["TPR@1%"][0] - rows0[lb0]["scenarios"][INF]["TPR@1%"][0]
        g["inf TPR@1%"] = [d, scoring.paired_se(reps[INF]["TPR@1%"][lb], reps0[INF]["TPR@1%"][lb0])]
    return g


def plain_table(results: dict) -> list[str]:
    """Markdown: what each new signal adds over the same attack without it, at each setting; a gain
    (or loss) beyond twice its paired SE in bold."""
    lines = []
    for s in results.values():
        for lb, plain in PLAIN.items():
            g = s["rows"].get(lb, {}).get("vs plain")
            if not g:
                continue
            if not lines:
                lines = ["| row | against | setting | " + " | ".join(f"Δ {c}" for c in g) + " |"]
                lines.append("|" + "---|" * (3 + len(g)))
            cells = [f"**{dpm(v)}**" if abs(v[0]) > 2 * v[1] else dpm(v) for v in g.values()]
            lines.append(f"| {lb} | {plain} | {setting_text(s)} | " + " | ".join(cells) + " |")
    return lines


def share_used(out: str, f: float, scenario: str) -> str:
    """The share of shadows each challenge point is IN for in the scenario's design at --fractions f,
    as its design.json records it ('5/8'): where f cannot give training sets of LEN_TRAINING (f = 1/2
    on the faithful preset: its challenge points are 63% of the dataset) the design uses the nearest
    share that can (production.design.in_count)."""
    path = os.path.join(view_dir(out, f), "data", TRACK, scenario, "shadow", "design.json")
    with open(path) as fh:
        d = json.load(fh)
    return f"{int(d['in_per_group'])}/{int(d['group'])}"


def ftext(s: dict) -> str:
    """A setting's f as asked, and the share used where the design had to move it: '0.5 (5/8 used)'."""
    if s["fraction"] is None:
        return "—"
    used = sorted(set(s.get("shares", {}).values()))
    moved = [u for u in used if Fraction(u) != Fraction(s["fraction"]).limit_denominator(MAX_GROUP)]
    return f"{s['fraction']:g}" + (f" ({', '.join(used)} used)" if moved else "")


def gains(rows: dict, avgs: dict, reps: dict, rows0: dict, avgs0: dict, reps0: dict) -> None:
    """Each row's gain over the same attack with no designed shadow (k = 0), ± the paired SE: the
    targets are the same and each scenario's bootstrap draws are the same in every setting, so the
    replicates pair. Scenario averages at each FPR, and purchase100_inf's TPR@1%FPR."""
    for lb in LABELS:
        rows[lb]["gain over k=0"] = paired_gain((rows, avgs, reps), lb, (rows0, avgs0, reps0), lb)


def auto_cell(c: dict, n_boot: int, seed: int) -> dict:
    """Auto's choice in a cell and its honest split-half estimate on the train models ± its SE
    (each half resampled within itself, scored on its own pooled ROC, as attacks.auto scores it)."""
    h = scoring.bootstrap_tpr(
        c["honest_truth"],
        {"h": c["honest_scores"]},
        n_boot=n_boot,
        seed=seed,
        strata=c["honest_half"],
        by_stratum=("h",),
    )["h"]
    return {
        "chose": str(c["auto_label"]),
        "train, in-sample": float(c["auto_train_tpr"]),
        "honest split-half": [float(c["honest_tpr"]), scoring.paired_se(h)],
        "halves chose": [str(x) for x in c["honest_picks"]],
    }


def aim_gaps(r: dict, winner: dict, has_inf: bool) -> dict:
    """Each part of the aim: [how far the row is short of it (<= 0: none), whether it is met]."""
    d_win, (d_cfg, se_cfg) = r[f"avg TPR@10% - {WINNER}"][0], r[f"avg TPR@10% - {CONFIG}"]
    gaps = {
        "avg TPR@10% >= winner + 0.03": [0.03 - d_win, bool(d_win >= 0.03)],
        "avg TPR@10% > winner's config + 2 paired SE": [2 * se_cfg - d_cfg, bool(d_cfg > 2 * se_cfg)],
    }
    if has_inf:
        mine, theirs = r["scenarios"][INF]["TPR@1%"][0], winner["scenarios"][INF]["TPR@1%"][0]
        gaps["inf TPR@1% >= 2 x winner's"] = [2 * theirs - mine, bool(mine >= 2 * theirs)]
    return gaps


def pm(v) -> str:
    return f"{v[0]:.4f} ± {v[1]:.4f}"


def dpm(v) -> str:
    return f"{v[0]:+.4f} ± {v[1]:.4f}"


def table(results: dict, scenarios: list) -> list[str]:
    """Markdown: one row per (attack, f, extra shadows): TPR@10/1/0.1%FPR per scenario, the average
    TPR@10%FPR, and its paired difference from both references (and inf's TPR@1%FPR's)."""
    refs = ("winner", "winner's config")
    head = ["attack", "f", "extra shadows"] + [f"{sc} {col}" for sc in scenarios for col, _, _ in FPRS]
    head += ["avg TPR@10%"] + [f"Δ avg TPR@10% vs {r}" for r in refs]
    if INF in scenarios:
        head += [f"Δ inf TPR@1% vs {r}" for r in refs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for lb in LABELS:
        for s in results.values():
            if lb == WINNER and s["shadows"]:
                continue  # the winner as submitted uses the train models only: its k = 0 row says it
            r = s["rows"][lb]
            cells = [lb, ftext(s), str(s["shadows"])]
            cells += [pm(r["scenarios"][sc][col]) for sc in scenarios for col, _, _ in FPRS]
            cells += [pm(r["avg TPR@10%"])] + [dpm(r[f"avg TPR@10% - {ref}"]) for ref in (WINNER, CONFIG)]
            if INF in scenarios:
                cells += [dpm(r[f"inf TPR@1% - {ref}"]) for ref in (WINNER, CONFIG)]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def setting_text(s: dict) -> str:
    return "k = 0" if not s["shadows"] else f"f = {ftext(s)}, k = {s['shadows']}"


def summary_table(results: dict) -> list[str]:
    """Markdown: the average TPR@10%FPR (the ranking metric) of each attack against the number of
    designed shadows k per scenario, one column per (f, k)."""
    head = ["attack"] + [setting_text(s) for s in results.values()]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for lb in LABELS:
        # the winner as submitted reads the train models only: its k = 0 cell says it
        cells = [
            pm(s["rows"][lb]["avg TPR@10%"]) if not (lb == WINNER and s["shadows"]) else "—" for s in results.values()
        ]
        lines.append(f"| {lb} | " + " | ".join(cells) + " |")
    return lines


def pooled_lines(results: dict) -> list[str]:
    """How far scoring each phase on its own moved each row at k = 0 from one ROC over dev and final
    pooled (what this bench did before), and the gap between auto and the winner both ways."""
    rows = results["k0"]["rows"]
    lines = [
        "| attack | avg TPR@10%, each phase on its own | dev + final pooled (before) | moved |",
        "|---|---|---|---|",
    ]
    for lb in LABELS:
        new, old = rows[lb]["avg TPR@10%"][0], rows[lb]["avg TPR@10% pooled"]
        lines.append(f"| {lb} | {new:.4f} | {old:.4f} | {new - old:+.4f} |")
    per_phase = rows[AUTO]["avg TPR@10%"][0] - rows[WINNER]["avg TPR@10%"][0]
    pooled = rows[AUTO]["avg TPR@10% pooled"] - rows[WINNER]["avg TPR@10% pooled"]
    lines += ["", f"Auto minus the winner as submitted: {per_phase:+.4f} per phase, {pooled:+.4f} pooled."]
    return lines


def paying(g: list) -> bool:
    """A gain more than twice its paired standard error."""
    return g[0] > 2 * g[1]


def gains_table(results: dict) -> list[str]:
    """Markdown: what designed shadows add to each attack, against the same attack with none, at
    10%, 1% and 0.1% FPR (scenario averages) and in purchase100_inf at 1%; a gain more than twice its
    paired SE is in bold."""
    cells = [s for s in results.values() if s["shadows"]]
    if not cells:
        return ["(no designed shadows were scored: --shadows 0)"]
    cols = list(cells[0]["rows"][LABELS[1]]["gain over k=0"])
    lines = ["| attack | f | extra shadows | " + " | ".join(f"Δ {c}" for c in cols) + " |"]
    lines.append("|" + "---|" * (3 + len(cols)))
    for lb in LABELS:
        if lb == WINNER:  # as submitted it reads the train models only: shadows change nothing
            continue
        for s in cells:
            g = s["rows"][lb]["gain over k=0"]
            text = [f"**{dpm(g[c])}**" if paying(g[c]) else dpm(g[c]) for c in cols]
            lines.append(f"| {lb} | {ftext(s)} | {s['shadows']} | " + " | ".join(text) + " |")
    return lines


def paying_lines(results: dict) -> list[str]:
    """Where designed shadows pay: for each FPR, the (attack, f, k) whose gain over k = 0 is more
    than twice its paired SE, and the cheapest such budget per attack."""
    lines = []
    cells = [s for s in results.values() if s["shadows"]]
    if not cells:
        return lines
    for c in cells[0]["rows"][LABELS[1]]["gain over k=0"]:
        found = []
        for lb in LABELS[1:]:
            hits = [s for s in cells if paying(s["rows"][lb]["gain over k=0"][c])]
            if hits:
                s = min(hits, key=lambda s: (s["shadows"], s["fraction"]))
                found.append(f"{lb} from {setting_text(s)} ({dpm(s['rows'][lb]['gain over k=0'][c])})")
        lines.append(f"- {c}: " + ("; ".join(found) if found else "no attack gains more than twice its paired SE"))
    return lines


def auto_table(results: dict, scenarios: list) -> list[str]:
    """Markdown: what auto chose per cell, its in-sample train score, the honest split-half
    estimate on the train models and its honest score on dev + final."""
    lines = [
        "| f | extra shadows | scenario | auto chose | train TPR@10% (in-sample) | honest split-half (train) "
        "| halves chose | dev, final TPR@10% (mean of the phases) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in results.values():
        for sc in scenarios:
            a = s["rows"][AUTO]["scenarios"][sc]
            f = ftext(s)
            lines.append(
                f"| {f} | {s['shadows']} | {sc} | {a['chose']} | {a['train, in-sample']:.4f} | "
                f"{pm(a['honest split-half'])} | {'; '.join(a['halves chose'])} | {pm(a['TPR@10%'])} |"
            )
    return lines


def aim_lines(results: dict) -> list[str]:
    """The aim, and how far auto's best cell and the best row of all are from it."""
    rows = [(name, lb, s["rows"][lb]) for name, s in results.items() for lb in LABELS]
    best_auto = max((x for x in rows if x[1] == AUTO), key=lambda x: x[2]["avg TPR@10%"][0])
    best = max(rows, key=lambda x: x[2]["avg TPR@10%"][0])
    autos = [r["avg TPR@10%"][0] for _, lb, r in rows if lb == AUTO]
    lines = [AIM, ""]
    lines.append(
        f"Auto scores {min(autos):.4f} to {max(autos):.4f} avg TPR@10% over the {len(autos)} settings; the "
        "best cell and the best row are picked on the targets' scores, which flatters them."
    )
    lines.append("")
    for what, (name, lb, r) in (("auto's best cell", best_auto), ("the best row of all", best)):
        gaps = r["aim"]
        met = all(ok for _, ok in gaps.values())
        parts = "; ".join(f"{k}: {'met' if ok else f'short by {g:.4f}'}" for k, (g, ok) in gaps.items())
        lines.append(
            f"- {what} ({lb}, {name}): avg TPR@10% {pm(r['avg TPR@10%'])}, "
            f"{dpm(r[f'avg TPR@10% - {WINNER}'])} vs the winner as submitted, "
            f"{dpm(r[f'avg TPR@10% - {CONFIG}'])} vs the winner's configuration. "
            f"{'Aim met' if met else 'Aim not met'}: {parts}."
        )
    return lines


def _metric(r: dict, where: str, col: str) -> list:
    """[score, SE] of a row: the scenario average of TPR@10%FPR (where 'avg') or one scenario's ``col``."""
    return r["avg TPR@10%"] if where == "avg" else r["scenarios"][where][col]


def plot(results: dict, scenarios: list, path: str) -> None:
    """Score against the number of extra shadows, per attack (solid f = 1/2, dashed other f), with
    bootstrap error bars: the scenario-average TPR@10%FPR and purchase100_inf's TPR@1%FPR."""
    fig = Figure(figsize=(13, 5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    panels = [("avg", "TPR@10%", f"TPR@10%FPR, average over {len(scenarios)} scenario(s) (ranking metric)")]
    panels.append(
        (INF, "TPR@1%", f"{INF} TPR@1%FPR")
        if INF in scenarios
        else (scenarios[0], "TPR@1%", f"{scenarios[0]} TPR@1%FPR")
    )
    k0 = results["k0"]["rows"]
    fractions = sorted({s["fraction"] for s in results.values() if s["fraction"] is not None})
    names = {s["fraction"]: ftext(s) for s in results.values() if s["fraction"] is not None}
    ks = sorted({s["shadows"] for s in results.values()})  # evenly spaced: 0, 32, ..., 256 read alike
    for ax, (where, col, title) in zip(axes, panels):
        for i, lb in enumerate(LABELS):
            if lb == WINNER:
                ax.axhline(_metric(k0[lb], where, col)[0], color="k", ls=":", lw=1, label=WINNER)
                continue
            for j, f in enumerate(fractions or [None]):
                cells = [s for s in results.values() if s["shadows"] == 0 or s["fraction"] == f]
                x = [ks.index(s["shadows"]) + 0.06 * j for s in cells]
                y = np.array([_metric(s["rows"][lb], where, col) for s in cells])
                ax.errorbar(
                    x,
                    y[:, 0],
                    yerr=y[:, 1],
                    color=f"C{i}",
                    ls=["-", "--", ":"][j % 3],
                    marker="o",
                    ms=3,
                    capsize=2,
                    label=lb if j == 0 else None,
                )
        ax.set(xlabel="designed shadows per scenario (besides MICO's train models)", ylabel=col, title=title)
        ax.set_xticks(range(len(ks)), [str(k) for k in ks])
        ax.grid(alpha=0.3)
    handles, lbls = axes[0].get_legend_handles_labels()
    fig.legend(
        handles,
        lbls,
        loc="center right",
        fontsize=8,
        frameon=False,
        title="\n".join(f"{['solid', 'dashed', 'dotted'][j % 3]}: f = {names[f]}" for j, f in enumerate(fractions)),
    )
    fig.tight_layout(rect=(0, 0, 0.78, 1))
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)


def parse_list(p, flag: str, text: str, kind):
    try:
        return [kind(v) for v in text.split(",")]
    except ValueError:
        example = "0,32,64,128" if flag == "--shadows" else "0.5,0.75 or 0.5,0.75:128"
        p.error(f"{flag}: a comma-separated list of numbers, e.g. {example}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="report/attack_power", help="work folder: data, caches, scores and results")
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
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the target models")
    p.add_argument(
        "--shadows", default="0,32,64,128", help=f"designed shadows per scenario to score (<= {MAX_SHADOWS})"
    )
    p.add_argument(
        "--fractions",
        default="0.5,0.75",
        help="designs: share of shadows a challenge point is IN for; f:K scores at most K shadows at f "
        "(e.g. 0.5,0.75:128 with --shadows 0,32,64,128,256: 256 at f = 1/2 only)",
    )
    p.add_argument("--train-models", type=int, default=100, help="train models per scenario (MICO: 100)")
    p.add_argument("--target-models", type=int, default=25, help="dev models (and as many final) per scenario")
    p.add_argument("--scenarios", nargs="+", choices=scenario_names(TRACK), default=scenario_names(TRACK))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--neighbours",
        type=int,
        default=0,
        help="cache K neighbourhood query views per point (save_preds.py --neighbours, K more forward passes "
        "per point and model) and score the neighbourhood attack; 0: orig only, that row left out",
    )
    p.add_argument(
        "--build-only",
        action="store_true",
        help="train the challenge and the shadows, then stop: run it beside the full command (the same "
        "flags, OMP_NUM_THREADS=1 in each) and the two split the models, each claimed under a lock",
    )
    args = p.parse_args(argv)
    for name, value in zip(("n_points", "len_challenge", "epochs"), SIZES[args.size]):
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.size == "mico" and args.n_points is not None:
        p.error("--n-points: the mico size is the preset's; use --size small or full to choose N")
    args.shadows = sorted(set(parse_list(p, "--shadows", args.shadows, int)) | {0})
    if args.shadows[0] < 0 or args.shadows[-1] > MAX_SHADOWS:
        p.error(f"--shadows: numbers from 0 to {MAX_SHADOWS}")
    caps = {}
    for item in args.fractions.split(","):
        f, _, cap = item.partition(":")
        (f,) = parse_list(p, "--fractions", f, float)
        caps[f] = parse_list(p, "--fractions", cap, int)[0] if cap else MAX_SHADOWS
        if not 0 < f < 1:
            p.error("--fractions: shares strictly between 0 and 1, e.g. 0.5,0.75")
        if caps[f] < 1:
            p.error(f"--fractions: {item}: at most how many shadows at f, at least 1")
    args.fractions, args.caps = sorted(caps), caps
    if args.bootstrap < 2:
        p.error("--bootstrap: at least 2 resamples")
    args.scenarios = [s for s in scenario_names(TRACK) if s in args.scenarios]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    use_rows(args.neighbours)
    t0 = time.time()
    build(args)
    t1 = time.time()
    if args.build_only:
        print(f"models {t1 - t0:.0f} s; --build-only: nothing scored")
        return 0
    for f in args.fractions:
        v = view_dir(args.out, f)
        argv_sp = ["--challenge", TRACK, "--data-dir", os.path.join(v, "data"), "--cache-dir", os.path.join(v, "cache")]
        views = ["--neighbours", str(args.neighbours)] if args.neighbours else []
        save_preds.main(argv_sp + ["--device", args.device, "--seed", str(args.seed), *views])
    score_all(args)
    t2 = time.time()
    results = aggregate(args)
    lines = ["## Average TPR@10%FPR against designed shadows", "", *summary_table(results), ""]
    lines += ["## Each phase on its own against dev + final pooled (k = 0)", "", *pooled_lines(results), ""]
    lines += ["## What each new signal adds over the same attack without it (paired SE)", "", *plain_table(results), ""]
    lines += ["## Attack power", "", *table(results, args.scenarios), ""]
    lines += ["## What designed shadows add (gain over k = 0, paired SE; bold: > 2 SE)", "", *gains_table(results), ""]
    lines += ["Where shadows pay (the cheapest budget with a gain > 2 paired SE):", "", *paying_lines(results), ""]
    lines += ["## Auto: its choice and honest estimate", "", *auto_table(results, args.scenarios)]
    lines += ["", "## The aim", "", *aim_lines(results)]
    print("\n".join(lines))
    write_text(os.path.join(args.out, "attack_power.json"), json.dumps(results, indent=1) + "\n")
    write_text(os.path.join(args.out, "attack_power.md"), "\n".join(lines) + "\n")
    plot(results, args.scenarios, os.path.join(args.out, "attack_power.png"))
    print(f"models {t1 - t0:.0f} s, signals and attacks {t2 - t1:.0f} s; {args.out}/attack_power.{{md,json,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
