"""--attack auto (attacks.auto): the choice, its honest estimate, and the script's report."""

import numpy as np
import pytest

import run_lira_mia
import save_preds
from attacks import auto, suite
from attacks.options import AttackOptions
from attacks.suite import AUTO_LINEUP, STACK_BASE, make_attack
from challenges import scoring
from production.synthetic import build_synthetic
from tests.conftest import run_script
from tests.fake_scenario import fake_scenario, permute_membership

# Attacks whose leave-one-out scores leave the target's membership out (RMIA's a fixed).
CLEAN = {label: make_attack(o) for label, o in STACK_BASE[:10]}


def _loss(data, rows, exclude):
    return make_attack(AttackOptions(attack="loss"))(data, rows, exclude)


def _anti_loss(data, rows, exclude):
    return 1.0 - _loss(data, rows, exclude)


def test_tpr_at_fpr_is_micos():
    rng = np.random.default_rng(0)
    truth = rng.random((30, 20)) < 0.5
    for s in (rng.random((30, 20)), np.round(rng.random((30, 20)), 1)):  # with and without ties
        s = s + 0.2 * truth
        s = s / s.max()
        m = scoring.score(truth.astype(int), s)
        assert auto.tpr_at_fpr(truth, s) == m["TPR_FPR_1000"]
        assert auto.tpr_at_fpr(truth, s, 0.01) == m["TPR_FPR_100"]


def test_choose_takes_the_best_and_the_first_of_equals():
    truth = np.array([[1, 0, 1, 0]] * 3)
    good, bad = truth * 0.5 + 0.25, 1.0 - (truth * 0.5 + 0.25)
    assert auto.choose({"bad": bad, "good": good}, truth)[0] == "good"
    label, tprs = auto.choose({"a": good, "b": good.copy(), "c": bad}, truth)
    assert label == "a" and tprs == {"a": 1.0, "b": 1.0, "c": 0.0}
    with pytest.raises(ValueError, match="empty"):
        auto.choose({}, truth)


def test_auto_attack_returns_the_chosen_attacks_scores():
    data = fake_scenario()
    rows = np.concatenate([data.phase_rows(p) for p in ("dev", "final")])
    attack = auto.AutoAttack({"anti": _anti_loss, "loss": _loss, **CLEAN})
    got = attack(data, rows, np.full(len(rows), -1))
    choice = attack.choices[data.scenario]
    train = data.phase_rows("train")
    expect = {lb: a(data, train, train) for lb, a in attack.lineup.items()}
    assert choice.label == auto.choose(expect, data.solutions[train])[0] != "anti"
    # one call over the targets and the train models (min-max attacks scale over the call)
    same = attack.lineup[choice.label](data, np.r_[rows, train], np.r_[np.full(len(rows), -1), train])
    assert np.array_equal(got, same[: len(rows)])
    assert "**" + choice.label + "**" in auto.describe(data.scenario, choice)[0]


def test_honest_choice_never_sees_the_half_it_scores():
    """Flipping every membership label of one half leaves the choice made for that half and its
    scores as they were, though the same flip changes the choice made on all train models (so a
    selection that looked at the scored half would fail here). The line-up's two attacks use no
    shadow, so the flip cannot reach them through the other models' statistics."""
    data = fake_scenario(n_train=12, effect=3.0)
    lineup = {"loss": _loss, "anti-loss": _anti_loss}
    train = auto.train_rows(data)
    train_scores = {lb: a(data, train, train) for lb, a in lineup.items()}
    before = auto.honest_estimate(data, lineup, train_scores, seed=5)
    half = before.picks[0][0]
    per_half = [auto.tpr_at_fpr(data.solutions[h], before.scores[np.searchsorted(train, h)]) for h, _ in before.picks]
    assert before.tpr == np.mean(per_half) and sorted(np.bincount(before.half)) == [6, 6]
    flipped = data
    for t in half:
        flipped = _flip(flipped, t)
    after = auto.honest_estimate(flipped, lineup, train_scores, seed=5)
    assert np.array_equal(after.picks[0][0], half) and after.picks[0][1] == before.picks[0][1]
    where = np.searchsorted(train, half)
    assert np.array_equal(after.scores[where], before.scores[where])
    in_sample = [auto.choose(train_scores, d.solutions[train])[0] for d in (data, flipped)]
    assert in_sample[0] != in_sample[1]


def _flip(data, t):
    shadow_in, solutions = data.shadow_in.copy(), data.solutions.copy()
    shadow_in[t] = ~shadow_in[t]
    solutions[t] = 1 - solutions[t]
    return type(data)(**{**data.__dict__, "shadow_in": shadow_in, "solutions": solutions})


def _unit(x):
    """A row rescaled to [0, 1]: the attacks that min-max their scores over a call rescale every
    row by one affine map, which depends on every row's scores and so on every shadow."""
    return (x - x.min()) / (x.max() - x.min())


def test_a_targets_membership_never_enters_its_honest_scores():
    """With attacks that use shadows: shuffling one train model's membership changes neither the
    attack chosen for it nor its honest scores (but for the affine map of a min-max, which no
    pooled metric sees)."""
    data = fake_scenario(n_train=10)
    train = auto.train_rows(data)
    train_scores = {lb: a(data, train, train) for lb, a in CLEAN.items()}
    before = auto.honest_estimate(data, CLEAN, train_scores, seed=0)
    t = int(before.picks[1][0][0])
    shuffled = permute_membership(data, t)
    new_scores = {lb: a(shuffled, train, train) for lb, a in CLEAN.items()}
    for lb in CLEAN:  # leave-one-out
        np.testing.assert_allclose(_unit(new_scores[lb][t]), _unit(train_scores[lb][t]), rtol=0, atol=1e-12)
    after = auto.honest_estimate(shuffled, CLEAN, new_scores, seed=0)
    assert after.picks[1][1] == before.picks[1][1]
    np.testing.assert_allclose(_unit(after.scores[t]), _unit(before.scores[t]), rtol=0, atol=1e-12)


def test_rmia_a_auto_never_uses_a_targets_membership(monkeypatch):
    """--rmia-a auto (a line-up row) picks a leave-one-out target's a without that target: every
    choice sees fewer shadows than there are, and shuffling a target's membership leaves its scores."""
    data = fake_scenario(n_train=8)
    train = data.phase_rows("train")
    seen, real = [], suite.choose_rmia_a
    monkeypatch.setattr(suite, "choose_rmia_a", lambda d, o: seen.append(len(d.shadow_in)) or real(d, o))
    attack = make_attack(AttackOptions(attack="rmia", rmia_a="auto"))
    before = attack(data, train, train)
    assert len(seen) == suite.RMIA_A_FOLDS and max(seen) < len(train)
    after = attack(permute_membership(data, 2), train, train)
    assert np.array_equal(before[2], after[2])


def test_auto_needs_train_membership():
    data = fake_scenario()
    data.solutions[0] = -1
    with pytest.raises(ValueError, match="known membership"):
        auto.train_rows(data)


def test_the_line_up_includes_stacked_and_both_references():
    labels = [lb for lb, _ in AUTO_LINEUP]
    attacks = [o.attack for _, o in AUTO_LINEUP]
    assert "stacked" in attacks and "mico-winner" in attacks and "mico-winner-config" in attacks
    assert "auto" not in attacks and len(set(labels)) == len(labels)


@pytest.mark.slow
def test_auto_end_to_end(small_copy, tmp_path, capsys):
    data_dir, cache_dir = small_copy
    argv = ["--challenge", "purchase100", "--data-dir", data_dir, "--cache-dir", cache_dir]
    assert save_preds.main(argv + ["--device", "cpu"]) == 0
    report_dir = str(tmp_path / "report")
    code, err = run_script(
        run_lira_mia.main,
        "run_lira_mia.py",
        argv + ["--report-dir", report_dir, "--attack", "auto", "--evaluate", "--rmia-population", "200"],
        capsys,
    )
    assert code == 0, err
    text = (tmp_path / "report" / "purchase100" / "auto.md").read_text()
    assert "purchase100_inf: **" in text and "Honest estimate" in text
    assert run_lira_mia.main(argv + ["--report-dir", report_dir, "--compare", "--rmia-population", "200"]) == 0
    report = (tmp_path / "report" / "purchase100" / "report.md").read_text()
    for row in (run_lira_mia.AUTO, run_lira_mia.AUTO_HONEST, "Stacked"):
        assert row in report
    assert "Δ vs winner's configuration ± SE" in report and " ± " in report


@pytest.mark.slow
def test_auto_and_stacked_on_cifar10(tmp_path, capsys):
    """The other track: a small cifar10 scenario (6 train models, the CNN, one epoch)."""
    data_dir, cache_dir = str(tmp_path / "data"), str(tmp_path / "cache")
    build_synthetic(
        data_dir,
        "cifar10",
        n_points=400,
        len_training=200,
        n_train=6,
        n_dev=1,
        n_final=1,
        epochs=1,
        seed=2,
        scenarios=["cifar10_inf"],
        device="cpu",
    )
    argv = ["--challenge", "cifar10", "--data-dir", data_dir, "--cache-dir", cache_dir]
    assert save_preds.main(argv + ["--device", "cpu"]) == 0
    argv += ["--report-dir", str(tmp_path / "report"), "--evaluate", "--rmia-population", "200"]
    for attack in ("stacked", "auto"):
        code, err = run_script(run_lira_mia.main, "run_lira_mia.py", argv + ["--attack", attack], capsys)
        assert code == 0, err
    assert "cifar10_inf: **" in (tmp_path / "report" / "cifar10" / "auto.md").read_text()
