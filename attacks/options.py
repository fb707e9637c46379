"""Every attack option in one typed record, as the attacks receive them.

The scripts build one :class:`AttackOptions` from their command line; the attacks never see an
argparse namespace.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

ATTACKS = (
    "lira",
    "rmia",
    "loss",
    "confidence",
    "calibrated",
    "entropy",
    "classifier",
    "mico-winner",
    "mico-winner-config",
    "stacked",
    "auto",
    "neighbours",
)
MU_CHOICES = ("mean", "median")
OFFLINE_TESTS = ("one-sided", "reference")  # the paper's Phi(z) / the LiRA reference code's two-sided test
SIGNALS = ("loss", "confidence")
CALIBRATIONS = ("in", "mid", "z")
STACK_OBJECTIVES = ("logloss", "low-fpr")  # attacks.stacked: log-loss, or the top of the ranking weighted (S4)
# The options each attack reads besides ``attack``; setting any other does nothing (unused()).
READS = {
    "lira": (
        "as_submitted",
        "global_variance",
        "online_attack",
        "logit_scaling",
        "stable_logit_scaling",
        "mu",
        "min_shadows",
        "offline_test",
        "order_shift",
    ),
    "rmia": ("online_attack", "rmia_a", "rmia_gamma", "rmia_population", "seed", "order_shift"),
    "loss": (),
    "confidence": (),
    "calibrated": ("signal", "calibration", "order_shift"),
    "entropy": (),
    "classifier": ("seed",),
    "mico-winner": (),
    "mico-winner-config": ("order_shift",),
    # Both run a line-up of the attacks above with the options the rows do not set themselves.
    "stacked": ("min_shadows", "rmia_gamma", "rmia_population", "seed", "stack_objective"),
    "auto": ("min_shadows", "rmia_gamma", "rmia_population", "seed"),
    "neighbours": ("online_attack", "min_shadows"),
}


@dataclass(frozen=True)
class AttackOptions:
    """Options of every attack; each attack reads the ones it needs.

    LiRA takes the runner-up's four flags plus ``mu`` and ``min_shadows``; ``online_attack`` also
    selects online RMIA. ``as_submitted`` (LiRA only) runs the runner-up's code as it was released,
    bugs included (attacks.submitted); ``attack='mico-winner'`` is the winner's submission and
    ``'mico-winner-config'`` its per-scenario signal and formula on our calibrated attack.
    ``'stacked'`` fits a logistic regression over several attacks' scores (attacks.stacked);
    ``'auto'`` runs the --compare line-up and keeps, per scenario, the attack with the best
    leave-one-out TPR@10%FPR on the train models (attacks.auto). ``'neighbours'`` scores a point's
    query views jointly, a multivariate Gaussian per point (attacks.neighbours), offline or online.
    ``rmia_a`` is a number in [0, 1] or ``'auto'`` (best leave-one-out AUC on the train phase).
    ``seed`` drives sampling in RMIA and the classifier. ``stack_objective`` (stacked only):
    ``'logloss'``, or ``'low-fpr'``: the fit refitted with the top of the ranking weighted.
    ``order_shift`` moves the IN side of online LiRA, online RMIA and the calibrated attack's 'in'
    and 'mid' formulas (the winner's configuration's too) from "IN as filler" to "IN as a
    first-trained member", by the shift the train models' own members measure (attacks.order).
    """

    attack: str = "lira"
    stack_objective: str = "logloss"  # first after attack: a row's command names it before shared flags
    as_submitted: bool = False
    global_variance: bool = False
    online_attack: bool = False
    logit_scaling: bool = False
    stable_logit_scaling: bool = False
    order_shift: bool = False  # declared here so a row's flags stay together in its command
    mu: str = "mean"
    min_shadows: int = 2
    offline_test: str = "one-sided"
    rmia_a: float | str = 0.3
    rmia_gamma: float = 1.0
    rmia_population: int = 5000
    signal: str = "loss"
    calibration: str = "mid"
    seed: int = 0

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("attack", self.attack, ATTACKS),
            ("mu", self.mu, MU_CHOICES),
            ("offline_test", self.offline_test, OFFLINE_TESTS),
            ("signal", self.signal, SIGNALS),
            ("calibration", self.calibration, CALIBRATIONS),
            ("stack_objective", self.stack_objective, STACK_OBJECTIVES),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}: choose one of {', '.join(allowed)}")
        if self.rmia_a != "auto" and not (isinstance(self.rmia_a, (int, float)) and 0 <= self.rmia_a <= 1):
            raise ValueError(f"rmia_a must be a number in [0, 1] or 'auto', got {self.rmia_a!r}")
        if self.as_submitted and self.attack != "lira":
            raise ValueError("as_submitted reproduces the runner-up's LiRA; it applies to --attack lira only")
        if self.as_submitted and self.online_attack and (self.logit_scaling or self.stable_logit_scaling):
            raise ValueError("the runner-up's code refuses online attacks with logit scaling (as_submitted)")
        if isinstance(self.min_shadows, bool) or int(self.min_shadows) != self.min_shadows or self.min_shadows < 1:
            raise ValueError(f"min_shadows must be an integer >= 1, got {self.min_shadows!r}")

    def unused(self) -> list[str]:
        """Options set away from their defaults that the attack never reads: flags that would do
        nothing. The runner-up's code as submitted has no mu, min_shadows, offline test or order
        shift; online LiRA has no offline test; the reference code's offline test has no mu or
        min_shadows; offline LiRA and RMIA, and the calibrated 'z' formula, have no IN side to shift."""
        reads = set(READS[self.attack])
        no_in_side = (self.attack in ("lira", "rmia") and not self.online_attack) or (
            self.attack == "calibrated" and self.calibration == "z"
        )
        if no_in_side:
            reads.discard("order_shift")
        if self.as_submitted:
            reads -= {"mu", "min_shadows", "offline_test", "order_shift"}
        elif self.online_attack:
            reads.discard("offline_test")
        elif self.offline_test == "reference":
            reads -= {"mu", "min_shadows"}
        return [name for name in self.changed() if name != "attack" and name not in reads]

    def changed(self) -> dict:
        """{field: value} of the options that differ from the defaults, in declaration order."""
        default = AttackOptions()
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != getattr(default, f.name)
        }
