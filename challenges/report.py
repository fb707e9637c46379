"""What a person reads: score tables, the --evaluate report, the --compare report, ROC plots.

Tables name metrics as :data:`challenges.scoring.METRIC_LABELS` (``TPR@10%FPR``); the files meant
for programs (``scores.json``, ``scores.csv``) keep MICO's keys (``TPR_FPR_1000``).
"""

from __future__ import annotations

import csv
import io
import json
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .fileio import atomic_path, write_text
from .scoring import METRIC_KEYS, METRIC_LABELS, RANKING_KEY, SE_FPRS, SE_SUFFIX, paired_se, ranking_metric
from .tracks import TARGETS

# --attack auto --evaluate: its train score made honest, and the in-sample one named as such
HONEST_PHASE, IN_SAMPLE_PHASE = "train honest", "train in-sample"
PHASE_LABELS = {
    "train": "train (leave-one-out)",
    HONEST_PHASE: "train, honest split-half estimate of auto's choice (each half scored with the attack chosen "
    "on the other half)",
    IN_SAMPLE_PHASE: "train, in-sample (auto chose its attack on these very scores, which flatters them)",
    "dev": "dev",
    "final": "final",
    TARGETS: "dev and final, each phase scored on its own, then their mean (± bootstrap SE over target models)",
}
# Phases (and the dev+final mean) in the order tables show them.
REPORT_PHASES = tuple(PHASE_LABELS)
SE_KEYS = tuple(k + SE_SUFFIX for k in SE_FPRS)
COMPARE_COLUMNS = ("TPR_FPR_10", "TPR_FPR_100", "TPR_FPR_1000", "AUC")
RANKING_LABEL = f"average {METRIC_LABELS[RANKING_KEY]} (ranking metric)"


def score_table(scores_by_scenario: dict) -> str:
    """Fixed-width text table: one row per scenario, then the ranking metric."""
    name_w = max([len("scenario")] + [len(str(n)) for n in scores_by_scenario])
    col_w = max(len(METRIC_LABELS[k]) for k in METRIC_KEYS) + 1
    head = "scenario".ljust(name_w) + "".join(METRIC_LABELS[k].rjust(col_w) for k in METRIC_KEYS)
    lines = [head, "-" * len(head)]
    for name, s in scores_by_scenario.items():
        lines.append(str(name).ljust(name_w) + "".join(f"{s[k]:{col_w}.4f}" for k in METRIC_KEYS))
    lines.append("-" * len(head))
    se = [s.get(RANKING_KEY + SE_SUFFIX) for s in scores_by_scenario.values()]
    # scenarios are resampled independently: the SE of their mean adds in quadrature
    spread = "" if None in se else f" ± {np.sqrt(np.sum(np.square(se))) / len(se):.4f}"
    lines.append(f"{RANKING_LABEL}: {ranking_metric(scores_by_scenario):.4f}{spread}")
    if not spread:
        return "\n".join(lines)
    key = METRIC_LABELS[RANKING_KEY]
    lines += [
        f"  {name}: {key} {s[RANKING_KEY]:.4f} ± {s[RANKING_KEY + SE_SUFFIX]:.4f}"
        for name, s in scores_by_scenario.items()
    ]
    return "\n".join(lines)


def scores_text(scores: dict, note: str | None = None) -> str:
    """One table per phase (scenarios as rows), ``scores``: {scenario: {phase: metrics}}; ``note``
    (a warning about the challenge itself) goes first."""
    blocks = [f"warning: {note}"] if note else []
    for ph in REPORT_PHASES:
        by_sc = {sc: phs[ph] for sc, phs in scores.items() if ph in phs}
        if by_sc:
            blocks.append(f"== {PHASE_LABELS[ph]} ==\n{score_table(by_sc)}")
    return "\n\n".join(blocks)


def plot_roc(curves: dict, path, title: str = "", highlight=()) -> None:
    """Write a PNG with the ROC curves on linear and on log-log axes, atomically.

    curves: {label: (fpr, tpr)}; labels in ``highlight`` are drawn thick, the others thin. The
    legend sits beside the axes, so an overlay of 15+ attacks leaves the curves visible. Uses
    matplotlib's Agg canvas directly (no pyplot state, no display needed).
    """
    fig = Figure(figsize=(14 if len(curves) > 4 else 11, 5))
    FigureCanvasAgg(fig)
    ax_lin, ax_log = fig.subplots(1, 2)
    lowest = 1.0
    # Ten colours, then the next ten dashed, and so on.
    styles = ["-", "--", ":", "-."]
    for i, (label, (fpr, tpr)) in enumerate(curves.items()):
        fpr = np.asarray(fpr, dtype=np.float64)
        tpr = np.asarray(tpr, dtype=np.float64)
        style = dict(
            color=f"C{i % 10}", ls=styles[i // 10 % 4], label=str(label), lw=2.4 if label in highlight else 1.1
        )
        ax_lin.plot(fpr, tpr, **style)
        ax_log.plot(fpr, tpr, **style)
        pos = fpr[fpr > 0]
        if pos.size:
            lowest = min(lowest, float(pos.min()))
    for ax in (ax_lin, ax_log):
        ax.plot([0, 1], [0, 1], ls="--", color="gray", lw=0.8)
        ax.axvline(0.1, ls=":", color="k", lw=0.8)  # the ranking FPR
        ax.set_xlabel("False Positive Rate")
        ax.set_ylabel("True Positive Rate")
        ax.grid(alpha=0.3)
    ax_lin.set(xlim=(0, 1), ylim=(0, 1), title="ROC (linear)")
    lo = min(1e-3, lowest / 2)  # log axes cannot show 0: start just below the smallest non-zero FPR
    ax_log.set(xscale="log", yscale="log", xlim=(lo, 1), ylim=(lo, 1), title="ROC (log-log)")
    if title:
        fig.suptitle(title)
    if len(curves) > 4:
        handles, labels = ax_log.get_legend_handles_labels()
        fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0, 0.72, 1))
    else:
        if curves:
            ax_log.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
    # format='png': savefig would otherwise infer the format from the temporary name
    with atomic_path(os.fspath(path)) as tmp, open(tmp, "wb") as fh:
        fig.savefig(fh, format="png", dpi=120)


def save_report(report_dir: str, scores: dict) -> list[str]:
    """Write scores.json, scores.csv and one ROC PNG per scenario; return the paths.

    ``scores``: {scenario: {phase: metrics}}.
    """
    os.makedirs(report_dir, exist_ok=True)
    table = {
        sc: {ph: {k: v for k, v in m.items() if k in METRIC_KEYS + SE_KEYS} for ph, m in phs.items()}
        for sc, phs in scores.items()
    }
    paths = [os.path.join(report_dir, "scores.json"), os.path.join(report_dir, "scores.csv")]
    write_text(paths[0], json.dumps(table, indent=2) + "\n")
    rows = io.StringIO()
    w = csv.writer(rows)
    w.writerow(["scenario", "phase", *METRIC_KEYS, *SE_KEYS])
    for sc, phs in table.items():
        for ph, m in phs.items():
            w.writerow([sc, ph, *(f"{m[k]:.6f}" if k in m else "" for k in METRIC_KEYS + SE_KEYS)])
    write_text(paths[1], rows.getvalue())
    for sc, phs in scores.items():
        if phs:
            p = os.path.join(report_dir, f"roc_{sc}.png")
            plot_roc({PHASE_LABELS[ph]: (m["fpr"], m["tpr"]) for ph, m in phs.items()}, p, title=sc)
            paths.append(p)
    return paths


def _compare_table(scores: dict, phase: str, references: dict | None = None) -> list[str]:
    """Markdown table (attacks ranked by the average TPR@10%FPR) for one phase; best per column bold.

    With ``references`` ({label: short name}), a column per reference gives each row's average minus
    the reference's.
    """
    labels = [lb for lb, by_sc in scores.items() if by_sc and all(phase in v for v in by_sc.values())]
    if not labels:
        return []
    scenarios = list(scores[labels[0]])
    cols = [(sc, key) for sc in scenarios for key in COMPARE_COLUMNS]
    value = {lb: [scores[lb][sc][phase][key] for sc, key in cols] for lb in labels}
    avg = {lb: float(np.mean([scores[lb][sc][phase][RANKING_KEY] for sc in scenarios])) for lb in labels}
    best = [max(value[lb][j] for lb in labels) for j in range(len(cols))] + [max(avg.values())]
    references = references or {}
    refs = [r for r in references if r in avg]
    head = ["rank", "attack"] + [f"{sc} {METRIC_LABELS[key]}" for sc, key in cols] + [RANKING_LABEL]
    head += [f"Δ vs {dict(references)[r]}" for r in refs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rank, lb in enumerate(sorted(labels, key=lambda x: -avg[x]), 1):
        cells = [f"{v:.4f}" for v in value[lb] + [avg[lb]]]
        cells = [f"**{c}**" if np.isclose(v, b) else c for c, v, b in zip(cells, value[lb] + [avg[lb]], best)]
        cells += [f"{avg[lb] - avg[r]:+.4f}" for r in refs]
        lines.append("| " + " | ".join([str(rank), lb] + cells) + " |")
    return lines


def write_compare_report(
    report_dir: str, scores: dict, commands: dict, references: dict | None = None, sections=(), note=None
) -> str:
    """report.md and one ROC overlay PNG per scenario (train phase, leave-one-out).

    ``scores``: {attack label: {scenario: {phase: metrics}}}; ``commands``: {label: command line};
    ``references``: {label: short name} of the rows everything is compared against (drawn thick);
    ``sections``: more markdown lines, placed after the tables; ``note``: a warning about the
    challenge itself (a test secret), placed first.
    """
    os.makedirs(report_dir, exist_ok=True)
    labels = list(scores)
    scenarios = list(next(iter(scores.values())))
    md = [
        "# Attack comparison",
        "",
        "Every attack is run on each scenario's train models leave-one-out (each target is left out "
        "of its own shadows) and scored with MICO's metric over all models of the scenario pooled; "
        "dev and final are scored too where ground truth exists, each phase on its own (MICO ranked them "
        "apart), then their mean. Best value per column in bold.",
        "",
    ]
    if note:
        md[1:1] = ["", f"**Warning:** {note}"]
    for phase in REPORT_PHASES:
        table = _compare_table(scores, phase, references)
        if table:
            md += [f"## {PHASE_LABELS[phase]}", ""] + table + [""]
    md += list(sections)
    md += ["## ROC curves (train, leave-one-out)", ""]
    for sc in scenarios:
        curves = {
            lb: (scores[lb][sc]["train"]["fpr"], scores[lb][sc]["train"]["tpr"])
            for lb in labels
            if "train" in scores[lb][sc]
        }
        if curves:
            name = f"compare_roc_{sc}.png"
            plot_roc(
                curves,
                os.path.join(report_dir, name),
                title=f"{sc}: train, leave-one-out",
                highlight=tuple(references or ()),
            )
            md += [f"![{sc}]({name})", ""]
    md += ["## Commands", "", "Each row, as a run that also writes the prediction.csv files:", ""]
    md += [f"- {lb}: `{commands[lb]}`" for lb in labels if lb in commands]
    path = os.path.join(report_dir, "report.md")
    write_text(path, "\n".join(md) + "\n")
    return path


def bootstrap_table(point: dict, replicates: dict, references: dict, metric: str = RANKING_LABEL) -> list[str]:
    """Markdown table: each attack's score ± its bootstrap standard error and, per reference, the
    difference ± the paired standard error (challenges.scoring.bootstrap_tpr, paired_se).

    point: {label: score}; replicates: {label: (B,)} bootstrap replicates of the same score, every
    label on the same resamples; references: {label: short name}, e.g. the winner as submitted and
    the winner's configuration. Rows ranked by score; a reference missing from ``point`` is skipped.
    """
    refs = [r for r in references if r in point]
    head = ["attack", f"{metric} ± SE"] + [f"Δ vs {references[r]} ± SE" for r in refs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label in sorted(point, key=lambda lb: -point[lb]):
        cells = [label, f"{point[label]:.4f} ± {paired_se(replicates[label]):.4f}"]
        cells += [
            f"{point[label] - point[r]:+.4f} ± {paired_se(replicates[label], replicates[r]):.4f}" if r != label else "—"
            for r in refs
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def versus_best_table(point: dict, replicates: dict, label: str, others) -> list[str]:
    """Markdown table, one row per scenario: ``label``'s score against the best of ``others`` there
    (chosen in hindsight, which flatters it), the difference ± its paired bootstrap SE.

    point: {scenario: {label: score}}; replicates: {scenario: {label: (B,) replicates}}.
    """
    lines = [f"| scenario | {label} | best other attack | its score | Δ ± SE |", "|---|---|---|---|---|"]
    for sc, by_label in point.items():
        best = max(others, key=lambda lb: by_label[lb])
        diff, se = by_label[label] - by_label[best], paired_se(replicates[sc][label], replicates[sc][best])
        lines.append(f"| {sc} | {by_label[label]:.4f} | {best} | {by_label[best]:.4f} | {diff:+.4f} ± {se:.4f} |")
    return lines
