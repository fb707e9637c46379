"""``--attack auto``: per scenario, the line-up attack with the best leave-one-out TPR@10%FPR on
the train models, and an honest estimate of what that choice scores.

The choice (A1). Every attack of the line-up scores each train model leave-one-out; the one with
the highest TPR@10%FPR over the train models pooled (MICO's metric, :func:`tpr_at_fpr`) writes the
scenario's predictions; ties go to the earlier attack in the line-up.

Why its own train score flatters it (A2). The best of n attacks on the same models is the maximum
of n noisy estimates: with 18 attacks whose train scores differ by less than their standard error,
the winner's train score is biased upward by about the spread of that noise.

The honest estimate (A3), split in halves. The train models are cut at random into halves H1 and
H2. For each half H, the choice (A1) is made on the *other* half only: a scenario whose shadows
are the other half (attacks.folds.held_out), each of its models attacked leave-one-out; H's
models then get the chosen attack's usual leave-one-out scores (every other shadow, H's included,
as every target of the real run has). Each half is scored on its own pooled ROC and the estimate
is the mean of the two: the halves may choose different attacks, whose scores are on different
scales and would share one threshold if pooled (on the demo that cost 0.08 in one scenario). A
target's own membership never enters the choice made for it (the choice sees neither its signal
nor its membership); its scores are the chosen attack's leave-one-out scores, which leave it out.

Pure array maths over a scenario (attacks.folds explains what "scenario" means here); no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import roc_curve

from .folds import held_out, split_rows

RANKING_FPR = 0.1


def tpr_at_fpr(truth, scores, fpr: float = RANKING_FPR) -> float:
    """MICO's TPR at ``fpr`` over all points pooled: max(tpr[fpr' < fpr]) on sklearn's roc_curve
    (the same expression as challenges.scoring, which this package may not import)."""
    f, t, _ = roc_curve(np.asarray(truth).ravel().astype(int), np.asarray(scores, dtype=np.float64).ravel())
    return float(np.max(t[f < fpr]))


def choose(train_scores: dict, truth) -> tuple[str, dict]:
    """(label, {label: TPR@10%FPR}) (A1): ``train_scores`` {label: (T, 2m)} leave-one-out scores of
    the train models, ``truth`` (T, 2m) their 0/1 membership; ties go to the earlier label."""
    if not train_scores:
        raise ValueError("auto: the line-up is empty")
    tprs = {label: tpr_at_fpr(truth, s) for label, s in train_scores.items()}
    best = max(tprs.values())
    return next(label for label, v in tprs.items() if v == best), tprs


def train_rows(data) -> np.ndarray:
    """The challenge's own train models (extra MICO-random shadows of ours are shadows only, as
    in every score: challenges.scenario.ScenarioData.own_rows), with known membership, which the
    choice is made on; at least 2."""
    train = data.own_rows("train")
    train = train[train < len(data.shadow_in)]
    truth = data.solutions[train]
    if len(train) < 2 or (truth < 0).any() or truth.min() == truth.max():
        raise ValueError(
            f"{data.scenario}: --attack auto chooses on the train models and needs at least 2 of them "
            "with known membership (solution.csv) as shadows"
        )
    return train


@dataclass
class Honest:
    """The honest estimate (A3) of one scenario."""

    scores: np.ndarray  # (T, 2m) every train model's score from the attack chosen without its half
    half: np.ndarray  # (T,) 0 or 1: the half of each train model
    tpr: float  # mean over the halves of each half's pooled TPR@10%FPR
    picks: list = field(default_factory=list)  # per half: (its train rows, the label chosen on the other half)
    skipped: dict = field(default_factory=dict)  # label -> why it could not run on a half's shadows


def honest_estimate(data, lineup: dict, train_scores: dict, *, seed: int = 0) -> Honest:
    """The honest estimate (A3).

    ``lineup``: {label: attack(data, rows, exclude) -> scores}; ``train_scores``: {label: (T, 2m)}
    the same attacks' leave-one-out scores of :func:`train_rows` (in that order), from the run
    being estimated. Each half's choice costs one run of every attack on half the models.
    """
    train = train_rows(data)
    honest = np.full(train_scores[next(iter(train_scores))].shape, np.nan)
    out = Honest(honest, np.zeros(len(train), dtype=np.int64), np.nan)
    tprs = []
    for i, (half, other) in enumerate(_halves(train, seed)):
        sub, new_row = held_out(data, half)
        rows = new_row[other]
        label, _ = choose(_runnable(lineup, sub, rows, out.skipped), sub.solutions[rows])
        where = np.searchsorted(train, half)
        honest[where] = train_scores[label][where]
        out.half[where] = i
        out.picks.append((half, label))
        tprs.append(tpr_at_fpr(data.solutions[half], honest[where]))
    out.tpr = float(np.mean(tprs))
    return out


def _runnable(lineup, sub, rows, skipped) -> dict:
    """{label: leave-one-out scores of ``rows``} of the attacks that run on half the shadows; an
    attack that refuses (too few shadows, e.g. LiRA without an OUT shadow at any challenge point)
    is left out of that choice and its reason kept in ``skipped``."""
    scores = {}
    for label, attack in lineup.items():
        try:
            scores[label] = attack(sub, rows, rows)
        except ValueError as e:
            skipped[label] = str(e)
    if not scores:
        raise ValueError(f"{sub.scenario}: no attack of the line-up runs on half of the train models as shadows")
    return scores


def _halves(train, seed):
    """((H1, H2), (H2, H1)): each half with the half its choice is made on."""
    h1, h2 = split_rows(train, 2, seed)
    return ((h1, h2), (h2, h1))


@dataclass
class Choice:
    """What --attack auto did in one scenario: the choice (A1), every candidate's train score, and
    the honest estimate (A3)."""

    label: str
    train_tpr: dict
    honest: Honest
    left_out: dict = field(default_factory=dict)  # label -> why it is not in this scenario's line-up


def choose_and_estimate(data, lineup: dict, train_scores: dict, *, seed: int = 0) -> Choice:
    """The choice (A1) from ``train_scores`` {label: (T, 2m)} (leave-one-out scores of
    :func:`train_rows`) and its honest estimate (A3), which runs ``lineup`` on halves."""
    label, tprs = choose(train_scores, data.solutions[train_rows(data)])
    return Choice(label, tprs, honest_estimate(data, lineup, train_scores, seed=seed))


def describe(scenario: str, c: Choice) -> list[str]:
    """Markdown lines saying what was chosen in ``scenario`` and why."""
    ranked = sorted(c.train_tpr.items(), key=lambda kv: -kv[1])
    runner = next(((lb, v) for lb, v in ranked if lb != c.label), None)
    lines = [
        f"- {scenario}: **{c.label}**, the best leave-one-out TPR@10%FPR on the train models "
        f"({c.train_tpr[c.label]:.4f}"
        + (f"; next {runner[0]}, {runner[1]:.4f})" if runner else ")")
        + ". Honest estimate (each half of the train models scored with the attack chosen on the other"
        + f" half, mean of the halves): {c.honest.tpr:.4f}"
        + f" (halves chose: {', '.join(lb for _, lb in c.honest.picks)})."
    ]
    if c.honest.skipped:
        lines.append(f"  Could not run on half the shadows: {', '.join(c.honest.skipped)}.")
    if c.left_out:
        why = next(iter(c.left_out.values()))
        lines.append(f"  Not in the line-up here: {', '.join(c.left_out)} ({why}).")
    return lines


class AutoAttack:
    """The auto attack behind attacks.suite's interface: ``auto(data, rows, exclude) -> scores``.

    Runs every line-up attack on the requested rows and on the train models leave-one-out,
    returns the chosen attack's scores (A1), and records a :class:`Choice` per scenario in
    ``choices`` (with the honest estimate, A3) for the report. ``skip``: {label: f(n_views) -> why
    not, or None}: such an attack is left out of a scenario whose signals have ``n_views`` query
    views where f says why (the neighbourhood attack on a cache with one view).
    """

    def __init__(self, lineup: dict, seed: int = 0, skip: dict | None = None):
        if not lineup:
            raise ValueError("auto: the line-up is empty")
        self.full = dict(lineup)
        self.lineup = self.full
        self.skip = dict(skip or {})
        self.seed = seed
        self.choices: dict[str, Choice] = {}

    def __call__(self, data, rows, exclude):
        n_views = data.fields["phi"].shape[2]
        left_out = {lb: why for lb, f in self.skip.items() if (why := f(n_views))}
        self.lineup = {lb: a for lb, a in self.full.items() if lb not in left_out}
        rows = np.asarray(rows, dtype=np.int64)
        exclude = np.asarray(exclude, dtype=np.int64)
        train = train_rows(data)
        # The train models leave-one-out, unless the caller asked for exactly that already.
        asked = {(r, e) for r, e in zip(rows.tolist(), exclude.tolist())}
        extra = np.array([t for t in train.tolist() if (t, t) not in asked], dtype=np.int64)
        all_rows = np.concatenate([rows, extra])
        all_excl = np.concatenate([exclude, extra])
        loo = {(r, e): i for i, (r, e) in enumerate(zip(all_rows.tolist(), all_excl.tolist())) if r == e}
        at = np.array([loo[t, t] for t in train.tolist()], dtype=np.int64)
        scores = {lb: attack(data, all_rows, all_excl) for lb, attack in self.lineup.items()}
        choice = choose_and_estimate(data, self.lineup, {lb: s[at] for lb, s in scores.items()}, seed=self.seed)
        choice.left_out = left_out
        self.choices[data.scenario] = choice
        return scores[choice.label][: len(rows)]
