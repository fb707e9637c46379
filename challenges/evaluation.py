"""Running an attack over a scenario, writing predictions, and scoring where truth is known.

An attack is a callable ``attack(data, rows, exclude) -> scores``: ``rows`` (T,) are model rows
of ``data`` to attack, ``exclude`` (T,) the shadow row each must leave out of its statistics
(-1 for none: dev/final targets), and ``scores`` (T, 2m) membership scores in [0, 1] in
challenge order. Train models are attacked leave-one-out, so their scores estimate the score
of a submission before it is made.
"""
from __future__ import annotations

import csv
import io
import json
import os

import numpy as np

from . import scoring
from .fileio import write_text
from .scenario import ScenarioData
from .submission import write_prediction
from .tracks import TARGET_PHASES

PHASE_LABELS = {"train": "train (leave-one-out)", "dev": "dev", "final": "final"}


def attack_scenario(data: ScenarioData, attack, evaluate: bool) -> dict:
    """{phase: (rows, scores)} for dev and final, plus train (leave-one-out) if ``evaluate``."""
    phases = (("train",) if evaluate else ()) + TARGET_PHASES
    parts = {ph: data.phase_rows(ph) for ph in phases}
    rows = np.concatenate([parts[ph] for ph in phases])
    exclude = np.where(rows < data.n_train, rows, -1)
    if len(rows) == 0:
        return {}
    scores = attack(data, rows, exclude)
    out, start = {}, 0
    for ph in phases:
        n = len(parts[ph])
        if n:
            out[ph] = (parts[ph], scores[start:start + n])
        start += n
    return out


def write_predictions(models: list, results: dict) -> int:
    """prediction.csv of every dev/final model in ``results``; ``models``: the scenario's ModelDirs."""
    n = 0
    for ph in TARGET_PHASES:
        if ph in results:
            for row, s in zip(*results[ph]):
                write_prediction(models[row].prediction_file, s)
                n += 1
    return n


def score_results(data: ScenarioData, results: dict) -> dict:
    """{phase: MICO metrics} over every model of a phase pooled, where all truth is known."""
    out = {}
    for ph, (rows, scores) in results.items():
        truth = data.solutions[rows]
        if len(rows) and (truth >= 0).all():
            out[ph] = scoring.score(truth.ravel(), scores.ravel())
    return out


def save_report(report_dir: str, scores: dict) -> list[str]:
    """Write scores.json, scores.csv and one ROC PNG per scenario; return the paths.

    ``scores``: {scenario: {phase: metrics}}.
    """
    os.makedirs(report_dir, exist_ok=True)
    table = {sc: {ph: {k: v for k, v in m.items() if k in scoring.METRIC_KEYS} for ph, m in phs.items()}
             for sc, phs in scores.items()}
    paths = [os.path.join(report_dir, "scores.json"), os.path.join(report_dir, "scores.csv")]
    write_text(paths[0], json.dumps(table, indent=2) + "\n")
    rows = io.StringIO()
    w = csv.writer(rows)
    w.writerow(["scenario", "phase", *scoring.METRIC_KEYS])
    for sc, phs in table.items():
        for ph, m in phs.items():
            w.writerow([sc, ph, *(f"{m[k]:.6f}" for k in scoring.METRIC_KEYS)])
    write_text(paths[1], rows.getvalue())
    for sc, phs in scores.items():
        if phs:
            p = os.path.join(report_dir, f"roc_{sc}.png")
            scoring.plot_roc({PHASE_LABELS[ph]: (m["fpr"], m["tpr"]) for ph, m in phs.items()}, p,
                             title=sc)
            paths.append(p)
    return paths


def print_scores(scores: dict) -> str:
    """One table per phase (scenarios as rows) with MICO's ranking metric under each."""
    blocks = []
    for ph in ("train", "dev", "final"):
        by_sc = {sc: phs[ph] for sc, phs in scores.items() if ph in phs}
        if by_sc:
            blocks.append(f"== {PHASE_LABELS[ph]} ==\n{scoring.score_table(by_sc)}")
    return "\n\n".join(blocks)


COMPARE_COLUMNS = (("TPR_FPR_10", "TPR@0.1%"), ("TPR_FPR_100", "TPR@1%"), ("TPR_FPR_1000", "TPR@10%"),
                   ("AUC", "AUC"))


def _compare_table(scores: dict, phase: str) -> list[str]:
    """Markdown table (attacks ranked by the average TPR@10%FPR) for one phase; best per column bold."""
    labels = [lb for lb, by_sc in scores.items() if by_sc and all(phase in v for v in by_sc.values())]
    if not labels:
        return []
    scenarios = list(scores[labels[0]])
    cols = [(sc, key) for sc in scenarios for key, _ in COMPARE_COLUMNS]
    value = {lb: [scores[lb][sc][phase][key] for sc, key in cols] for lb in labels}
    avg = {lb: float(np.mean([scores[lb][sc][phase][scoring.RANKING_KEY] for sc in scenarios])) for lb in labels}
    best = [max(value[lb][j] for lb in labels) for j in range(len(cols))] + [max(avg.values())]
    head = ["rank", "attack"] + [f"{sc} {name}" for sc in scenarios for _, name in COMPARE_COLUMNS] + \
        ["avg TPR@10% (ranking metric)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rank, lb in enumerate(sorted(labels, key=lambda x: -avg[x]), 1):
        cells = [f"{v:.4f}" for v in value[lb] + [avg[lb]]]
        cells = [f"**{c}**" if np.isclose(v, b) else c for c, v, b in zip(cells, value[lb] + [avg[lb]], best)]
        lines.append("| " + " | ".join([str(rank), lb] + cells) + " |")
    return lines


def write_compare_report(report_dir: str, scores: dict, commands: dict) -> str:
    """report.md and one ROC overlay PNG per scenario (train phase, leave-one-out).

    ``scores``: {attack label: {scenario: {phase: metrics}}}; ``commands``: {label: command line}.
    """
    os.makedirs(report_dir, exist_ok=True)
    labels = list(scores)
    scenarios = list(next(iter(scores.values())))
    md = ["# Attack comparison", "",
          "Every attack is run on each scenario's train models leave-one-out (each target is left out "
          "of its own shadows) and scored with MICO's metric over all models of the scenario pooled; "
          "dev and final are scored too where ground truth exists. Best value per column in bold.", ""]
    for phase in ("train", "dev", "final"):
        table = _compare_table(scores, phase)
        if table:
            md += [f"## {PHASE_LABELS[phase]}", ""] + table + [""]
    md += ["## ROC curves (train, leave-one-out)", ""]
    for sc in scenarios:
        curves = {lb: (scores[lb][sc]["train"]["fpr"], scores[lb][sc]["train"]["tpr"])
                  for lb in labels if "train" in scores[lb][sc]}
        if curves:
            name = f"compare_roc_{sc}.png"
            scoring.plot_roc(curves, os.path.join(report_dir, name), title=f"{sc}: train, leave-one-out")
            md += [f"![{sc}]({name})", ""]
    md += ["## Commands", "", "Each row, as a run that also writes the prediction.csv files:", ""]
    md += [f"- {lb}: `{commands[lb]}`" for lb in labels]
    path = os.path.join(report_dir, "report.md")
    write_text(path, "\n".join(md) + "\n")
    return path
