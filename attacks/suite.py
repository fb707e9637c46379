"""Every attack behind one interface, for run_lira_mia.py's --attack and --compare.

An attack here is ``run(data, rows, exclude, opts) -> scores``: ``data`` a
``challenges.scenario.ScenarioData`` (arrays only), ``rows`` (T,) the model rows to attack,
``exclude`` (T,) the shadow row each must leave out (-1: none), ``opts`` an
:class:`attacks.options.AttackOptions`; ``scores`` (T, 2m) in [0, 1]. Train models are the first
``data.n_shadows`` rows and serve as shadows. Attacks whose scores are min-max scaled (loss,
confidence, calibrated, entropy) are scaled once over all rows of a call: one affine map, so every
phase ranks exactly as if it had been scaled on its own.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, replace

import numpy as np
from sklearn.metrics import roc_auc_score

from . import order, stacked
from .auto import AutoAttack
from .baselines import calibrated, confidence_attack, entropy_attack, loss_attack, loss_from_phi, prob_from_phi
from .classifier import classifier_attack
from .folds import held_out, split_rows
from .lira import lira, signal_from_phi, signal_kind
from .neighbours import neighbourhood_lira
from .options import CALIBRATIONS, SIGNALS, AttackOptions
from .rmia import population, rmia
from .submitted import WINNER_CONFIG, mico_winner, reference_offline, runner_up_lira, runner_up_signal, winner_signal

RMIA_A_GRID = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))
RMIA_A_FOLDS = 2  # --rmia-a auto for leave-one-out targets: a chosen on the other fold (x2 the cost)


def fields_needed(o: AttackOptions, have_logits: bool = False) -> tuple:
    """Cache fields the attack of ``o`` reads; logits (where every model has them) make the
    classifier's features richer and the runner-up's as-submitted signal exact."""
    logits = ("logits",) if have_logits and uses_logits(o) else ()
    if o.attack in ("entropy", "classifier", "stacked", "auto"):  # stacked: entropy; auto: every row
        return ("phi", "mentr") + logits
    return ("phi",) + logits


# Query views beyond orig an attack needs to mean anything (save_preds.py --neighbours K, or
# cifar10's --augment); with one view the neighbourhood attack would be LiRA again.
MIN_VIEWS = {"neighbours": 2}


def views_missing(o: AttackOptions, n_views: int) -> str | None:
    """Why the attack of ``o`` does not run on a cache of ``n_views`` query views, or None."""
    need = MIN_VIEWS.get(o.attack, 1)
    if n_views >= need:
        return None
    return (
        f"needs {need - 1} or more query views beyond orig and the cache holds {n_views - 1}; "
        "run save_preds.py --neighbours K (cifar10: or --augment) first"
    )


def runnable(lineup, n_views: int) -> tuple[list, dict]:
    """(the rows of ``lineup`` [(label, options)] that run on a cache of ``n_views`` query views,
    {label: why not} of the others)."""
    why = {label: views_missing(o, n_views) for label, o in lineup}
    return [(label, o) for label, o in lineup if why[label] is None], {lb: w for lb, w in why.items() if w}


def needs_runner_up(o: AttackOptions) -> bool:
    """Whether the attack of ``o`` reads the runner-up's train-model membership (runner_up_in)."""
    return o.as_submitted or (o.attack == "auto" and any(row.as_submitted for _, row in AUTO_LINEUP))


def uses_logits(o: AttackOptions) -> bool:
    return o.attack in ("classifier", "auto") or o.as_submitted


def target_reads(runs):
    """What the attacks of ``runs`` (AttackOptions) read of a dev/final target besides its own
    challenge points: ``reads(n_pool, own) -> pool positions``, RMIA's population (a superset of
    the target's row of :func:`attacks.rmia.population` in any call); None when nothing else.
    save_preds.py caches these points, run_lira_mia.py requires them."""
    pops = sorted({(o.rmia_population, o.seed) for o in _expand(runs) if o.attack == "rmia"})
    if not pops:
        return None

    def reads(n_pool: int, own: np.ndarray) -> np.ndarray:
        if n_pool <= len(np.unique(own)):
            return np.empty(0, dtype=np.intp)
        return functools.reduce(np.union1d, [population(own[None], n_pool, n, seed)[0] for n, seed in pops])

    return reads


def _expand(runs) -> list[AttackOptions]:
    """``runs`` with auto and stacked replaced by the attacks they run (their line-ups)."""
    out = []
    for o in runs:
        if o.attack == "auto":
            out += _expand([row for _, row in with_shared(AUTO_LINEUP, o)])
        elif o.attack == "stacked":
            out += _expand([row for _, row in with_shared(STACK_BASE, o)])
        else:
            out.append(o)
    return out


def _own(arr, data, rows):
    """Each target's values on its own challenge points: [T, 2m, ...]."""
    return arr[rows[:, None], data.challenge[rows]]


def _runner_up(data, rows, exclude, o):
    """The runner-up's LiRA as released (attacks.submitted): the membership its code used, its
    float32 signal (exact from logits when cached), its 100 train models as the only shadows, and
    its processing order (dev, final, train), on which its online branch's carried value depends."""
    logits = data.fields.get("logits")
    flags = dict(logit_scaling=o.logit_scaling, stable_logit_scaling=o.stable_logit_scaling)
    train = data.phase_rows("train")
    needed = np.union1d(rows, train)
    sig = np.zeros((len(data.models), data.phi.shape[1]), dtype=np.float64)
    for k in needed:
        sig[k] = runner_up_signal(data.phi[k, :, 0], None if logits is None else logits[k, :, 0], **flags)
    rank = {"dev": 0, "final": 1, "train": 2}
    order = np.lexsort((rows, [rank.get(data.models[r].phase, 3) for r in rows]))
    r = rows[order]
    scores = runner_up_lira(
        np.take_along_axis(sig[r], data.challenge[r], axis=1),
        sig[train],
        data.runner_up_in,
        data.challenge[r],
        exclude[order],
        online_attack=o.online_attack,
        global_variance=o.global_variance,
        **flags,
    )
    out = np.empty_like(scores)
    out[order] = scores
    return out


def _winner(data, rows, exclude, o):
    """The MICO winner's submission (attacks.submitted): its per-scenario signal and calibration,
    the train models as the only shadows, min-max per phase."""
    track, suffix = data.scenario.rsplit("_", 1)
    choice = WINNER_CONFIG[track, suffix]
    train = data.phase_rows("train")
    sig = winner_signal(data.phi[:, :, 0], choice.metric)
    phase = np.array([data.models[r].phase for r in rows])
    return mico_winner(
        np.take_along_axis(sig[rows], data.challenge[rows], axis=1),
        sig[train],
        data.shadow_in[train],
        data.challenge[rows],
        exclude,
        formula=choice.formula,
        phase=phase,
    )


def _winner_config(data, rows, exclude, o):
    """The winner's configuration without its submission's quirks: our calibrated attack with the
    winner's per-scenario signal and formula, every shadow (designed ones too)."""
    track, suffix = data.scenario.rsplit("_", 1)
    choice = WINNER_CONFIG[track, suffix]
    return _calibrated(data, rows, exclude, replace(o, signal=choice.metric, calibration=choice.formula))


def _first(data, o, has_in_side: bool = True):
    """The shadows' first-trained members (ScenarioData.shadow_first) where ``o`` asks for the
    training-order shift and the attack has an IN side to shift; else None (attacks.order)."""
    if not (o.order_shift and has_in_side):
        return None
    return order.require(data.shadow_first, data.shadow_in.shape)


def _lira(data, rows, exclude, o):
    if o.as_submitted:
        return _runner_up(data, rows, exclude, o)
    sig = signal_from_phi(data.phi, signal_kind(o.logit_scaling, o.stable_logit_scaling))
    arrays = (_own(sig, data, rows), sig[: data.n_shadows], data.shadow_in, data.challenge[rows], exclude)
    if o.offline_test == "reference" and not o.online_attack:
        return reference_offline(*arrays, fix_variance=o.global_variance, no_out=0.5)
    return lira(
        *arrays,
        online=o.online_attack,
        global_variance=o.global_variance,
        mu_estimator=o.mu,
        min_shadows=o.min_shadows,
        shadow_first=_first(data, o, o.online_attack),
    )


def _neighbours(data, rows, exclude, o):
    """The query views scored jointly (attacks.neighbours) on the stable logit phi."""
    return neighbourhood_lira(
        _own(data.phi, data, rows),
        data.phi[: data.n_shadows],
        data.shadow_in,
        data.challenge[rows],
        exclude,
        online=o.online_attack,
        min_shadows=o.min_shadows,
    )


def _rmia_scores(data, rows, exclude, o, a):
    return rmia(
        data.phi[rows],
        data.phi[: data.n_shadows],
        data.shadow_in,
        data.challenge[rows],
        exclude,
        a=a,
        gamma=o.rmia_gamma,
        n_population=o.rmia_population,
        online=o.online_attack,
        seed=o.seed,
        from_phi=True,
        shadow_first=_first(data, o, o.online_attack),
    )


def choose_rmia_a(data, o) -> float:
    """The offline coefficient a with the best leave-one-out AUC on the train models."""
    train = data.phase_rows("train")  # train models are rows 0..n_train-1, so each leaves itself out
    truth = data.solutions[train].ravel()
    if len(train) < 2 or len(np.unique(truth)) < 2:
        raise ValueError("--rmia-a auto needs train models with known membership")
    aucs = {a: roc_auc_score(truth, _rmia_scores(data, train, train, o, a).ravel()) for a in RMIA_A_GRID}
    return max(aucs, key=aucs.get)


def _rmia(data, rows, exclude, o):
    """RMIA; with ``rmia_a='auto'``, a leave-one-out target's a is chosen on the other half of
    the shadows (attacks.folds), so its own membership never picks the a it is scored with."""
    if o.rmia_a != "auto":
        return _rmia_scores(data, rows, exclude, o, float(o.rmia_a))
    out = np.full((len(rows), data.challenge.shape[1]), np.nan)
    whole = exclude < 0
    if whole.any():
        out[whole] = _rmia_scores(data, rows[whole], exclude[whole], o, choose_rmia_a(data, o))
    for fold in split_rows(np.arange(data.n_shadows), RMIA_A_FOLDS, o.seed):
        which = np.isin(exclude, fold)
        if which.any():
            a = choose_rmia_a(held_out(data, fold)[0], o)
            out[which] = _rmia_scores(data, rows[which], exclude[which], o, a)
    return out


def _loss(data, rows, exclude, o):
    return loss_attack(loss_from_phi(_own(data.phi, data, rows)))


def _confidence(data, rows, exclude, o):
    return confidence_attack(prob_from_phi(_own(data.phi, data, rows)))


def _signal(phi, name):
    """Calibration signal, higher = more member-like."""
    return -loss_from_phi(phi) if name == "loss" else prob_from_phi(phi)


def _calibrated(data, rows, exclude, o):
    return calibrated(
        _signal(_own(data.phi, data, rows), o.signal),
        _signal(data.phi[: data.n_shadows], o.signal),
        data.shadow_in,
        data.challenge[rows],
        exclude,
        mode=o.calibration,
        shadow_first=_first(data, o, o.calibration != "z"),
    )


def _entropy(data, rows, exclude, o):
    mentr = data.fields["mentr"]
    return entropy_attack(_own(mentr, data, rows))


def _classifier(data, rows, exclude, o):
    logits = data.fields.get("logits")
    kw = {} if logits is None else dict(target_logits=_own(logits, data, rows), shadow_logits=logits[: data.n_shadows])
    mentr = data.fields["mentr"]
    return classifier_attack(
        _own(data.phi, data, rows),
        _own(mentr, data, rows),
        data.phi[: data.n_shadows],
        mentr[: data.n_shadows],
        data.shadow_in,
        data.challenge[rows],
        exclude,
        seed=o.seed,
        **kw,
    )


def _stacked(data, rows, exclude, o):
    base = {label: make_attack(row) for label, row in with_shared(STACK_BASE, o)}
    return stacked.stacked_attack(data, rows, exclude, base, seed=o.seed, objective=o.stack_objective)


_RUN = {
    "lira": _lira,
    "rmia": _rmia,
    "loss": _loss,
    "confidence": _confidence,
    "calibrated": _calibrated,
    "entropy": _entropy,
    "classifier": _classifier,
    "mico-winner": _winner,
    "mico-winner-config": _winner_config,
    "stacked": _stacked,
    "neighbours": _neighbours,
}


def make_attack(o: AttackOptions):
    """The ``attack(data, rows, exclude)`` callable for the options ``o`` (``o.attack`` names it)."""
    if not isinstance(o, AttackOptions):
        raise TypeError(f"attack options must be an AttackOptions, got {type(o).__name__}")
    if o.attack == "auto":  # an object: it records its choice per scenario (AutoAttack.choices)
        lineup = with_shared(AUTO_LINEUP, o)
        skip = {label: functools.partial(views_missing, row) for label, row in lineup if row.attack in MIN_VIEWS}
        return AutoAttack({label: make_attack(row) for label, row in lineup}, seed=o.seed, skip=skip)
    run = _RUN[o.attack]
    return lambda data, rows, exclude: np.clip(run(data, rows, exclude, o), 0.0, 1.0)


# The two top MICO entries as submitted are the references every row is compared to.
RUNNER_UP = "Runner-up as submitted (LiRA offline, global variance)"
WINNER = "MICO winner as submitted (calibrated, per scenario)"
WINNER_CONFIGURATION = "MICO winner's configuration (calibrated, per scenario, every shadow)"
REFERENCES = {WINNER: "winner", WINNER_CONFIGURATION: "winner's config", RUNNER_UP: "runner-up"}  # short names
# The stacked attack's features: cheap attacks whose leave-one-out scores never use the target's
# membership (RMIA's a is fixed: 'auto' would run RMIA 11 more times per fold).
STACK_BASE = (
    ("LiRA offline", AttackOptions()),
    ("LiRA offline, global variance", AttackOptions(global_variance=True)),
    ("LiRA offline, stable logit", AttackOptions(stable_logit_scaling=True)),
    ("LiRA online", AttackOptions(online_attack=True)),
    ("LiRA online, global variance", AttackOptions(online_attack=True, global_variance=True)),
    ("LiRA online, stable logit", AttackOptions(online_attack=True, stable_logit_scaling=True)),
    ("RMIA offline", AttackOptions(attack="rmia")),
    ("RMIA online", AttackOptions(attack="rmia", online_attack=True)),
    *(
        (f"Calibrated {sig} ({mode})", AttackOptions(attack="calibrated", signal=sig, calibration=mode))
        for sig in SIGNALS
        for mode in CALIBRATIONS
    ),
    ("Modified entropy", AttackOptions(attack="entropy")),
    ("Loss", AttackOptions(attack="loss")),
    ("Confidence", AttackOptions(attack="confidence")),
    ("LiRA online (training order)", AttackOptions(online_attack=True, order_shift=True)),
    ("RMIA online (training order)", AttackOptions(attack="rmia", online_attack=True, order_shift=True)),
)
STACKED = f"Stacked (logistic regression over {len(STACK_BASE)} attacks' scores)"
STACKED_LOW_FPR = "Stacked, low-FPR weights (the top of the ranking weighted)"
# Need query views beyond orig (views_missing): left out of --compare and auto on a cache without.
NEIGHBOURS_OFFLINE = "Neighbourhood offline (query views jointly, one Gaussian)"
NEIGHBOURS_ONLINE = "Neighbourhood online (query views jointly, IN vs OUT Gaussians)"
# The --compare line-up. The runner-up submitted offline LiRA with global variance on the plain
# probability. "(training order)": the IN side shifted to a first-trained member's (attacks.order).
COMPARE = (
    (WINNER, AttackOptions(attack="mico-winner")),
    (WINNER_CONFIGURATION, AttackOptions(attack="mico-winner-config")),
    (RUNNER_UP, AttackOptions(global_variance=True, as_submitted=True)),
    ("LiRA offline", AttackOptions()),
    ("LiRA offline, reference code's two-sided test", AttackOptions(offline_test="reference")),
    ("LiRA offline, global variance (runner-up, corrected)", AttackOptions(global_variance=True)),
    ("LiRA offline, stable logit", AttackOptions(stable_logit_scaling=True)),
    ("LiRA online", AttackOptions(online_attack=True)),
    ("LiRA online, global variance", AttackOptions(online_attack=True, global_variance=True)),
    ("LiRA online, stable logit", AttackOptions(online_attack=True, stable_logit_scaling=True)),
    (
        "LiRA online, stable logit, global variance",
        AttackOptions(online_attack=True, stable_logit_scaling=True, global_variance=True),
    ),
    (NEIGHBOURS_OFFLINE, AttackOptions(attack="neighbours")),
    (NEIGHBOURS_ONLINE, AttackOptions(attack="neighbours", online_attack=True)),
    ("LiRA online (training order)", AttackOptions(online_attack=True, order_shift=True)),
    ("RMIA offline (a auto)", AttackOptions(attack="rmia", rmia_a="auto")),
    ("RMIA online", AttackOptions(attack="rmia", online_attack=True)),
    ("RMIA online (training order)", AttackOptions(attack="rmia", online_attack=True, order_shift=True)),
    ("Calibrated loss (mid)", AttackOptions(attack="calibrated", signal="loss", calibration="mid")),
    ("Calibrated loss (z)", AttackOptions(attack="calibrated", signal="loss", calibration="z")),
    (
        "MICO winner's configuration (training order)",
        AttackOptions(attack="mico-winner-config", order_shift=True),
    ),
    ("Classifier (ExtraTrees)", AttackOptions(attack="classifier")),
    ("Modified entropy", AttackOptions(attack="entropy")),
    ("Loss (starting kit)", AttackOptions(attack="loss")),
    ("Confidence", AttackOptions(attack="confidence")),
    (STACKED, AttackOptions(attack="stacked")),
    (STACKED_LOW_FPR, AttackOptions(attack="stacked", stack_objective="low-fpr")),
)
# --attack auto chooses among every row of the line-up.
AUTO_LINEUP = COMPARE
# What the rows choose; the other options (min_shadows, rmia_gamma, ...) come from the command line.
COMPARE_SETS = (
    "attack",
    "as_submitted",
    "global_variance",
    "online_attack",
    "logit_scaling",
    "stable_logit_scaling",
    "mu",
    "offline_test",
    "rmia_a",
    "signal",
    "calibration",
    "stack_objective",
    "order_shift",
)


def with_shared(lineup, o: AttackOptions) -> list:
    """``lineup``'s (label, options) with the options the rows do not choose (seed, rmia_gamma,
    min_shadows, ...) taken from ``o``."""
    shared = {k: v for k, v in asdict(o).items() if k not in COMPARE_SETS}
    return [(label, replace(row, **shared)) for label, row in lineup]
