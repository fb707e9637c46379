"""Training order (attacks.order, --order-shift): the IN side of per-point calibration moved to a
first-trained member's, measured on the train models' own members, never on a target's."""

import json
import os
import shutil
import sys

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import run_lira_mia
import save_preds
from attacks import folds, order
from attacks.lira import lira
from attacks.options import AttackOptions
from attacks.suite import COMPARE, STACK_BASE, STACKED, make_attack
from challenges.scenario import load_scenario
from challenges.tracks import load_params
from tests.conftest import ROOT, run_script
from tests.fake_scenario import fake_scenario, permute_membership

sys.path.insert(0, os.path.join(ROOT, "bench"))

import bench_attack_power as bench  # noqa: E402

ORDER_ROWS = [(label, o) for label, o in COMPARE if o.order_shift]
PLAIN = {
    "LiRA online (training order)": AttackOptions(online_attack=True),
    "RMIA online (training order)": AttackOptions(attack="rmia", online_attack=True),
    "MICO winner's configuration (training order)": AttackOptions(attack="mico-winner-config"),
}


def _rows(data):
    rows = np.concatenate([data.phase_rows(p) for p in ("train", "dev", "final")])
    return rows, np.where(rows < data.n_shadows, rows, -1)


def _unit(x):
    return (x - x.min()) / (x.max() - x.min())


def _sparse(first_effect, seed=0):
    """A scenario where, as in MICO, a point is first for few of its IN shadows (20 of 2000 points
    per model), so the mixed IN group is nearly all filler."""
    return fake_scenario(n_train=80, n_dev=4, n_final=4, P=2000, m=20, effect=1.0, first_effect=first_effect, seed=seed)


@pytest.mark.parametrize("first_effect", [0.0, 0.6, -0.4])
def test_the_shift_is_recovered_in_in_sds(first_effect):
    """Members trained first get a known extra effect; the noise has sd 1 and the filler IN group
    sd 1 too, so (O2) recovers that effect in IN sds, for any left-out row; (O3) scales it by the
    per-point IN sd."""
    data = _sparse(first_effect)
    x = data.phi[: data.n_shadows, :, 0].astype(np.float64)
    got = order.deltas(x, data.shadow_in, data.shadow_first, np.array([-1, 0, 17]))
    np.testing.assert_allclose(got, first_effect, atol=0.08)
    rows, exclude = _rows(data)
    shift = order.in_shift(x * 3.0, data.shadow_in, data.shadow_first, data.challenge[rows], exclude)
    assert shift.shape == data.challenge[rows].shape
    np.testing.assert_allclose(np.median(shift), 3.0 * first_effect, atol=0.3)


def test_the_attacks_gain_where_members_are_first():
    """Targets' members carry the first-trained effect the shadows' filler lacks: each order row
    ranks members above non-members better than its plain counterpart."""
    data = _sparse(0.8, seed=1)
    rows, exclude = _rows(data)
    truth = data.solutions[rows].ravel()
    for label, o in ORDER_ROWS:
        auc = roc_auc_score(truth, make_attack(o)(data, rows, exclude).ravel())
        plain = roc_auc_score(truth, make_attack(PLAIN[label])(data, rows, exclude).ravel())
        assert auc > plain + 0.005, label


def test_a_targets_own_row_never_enters_its_estimate():
    """Shuffling a train model's membership (and so its first-trained members) leaves its
    leave-one-out scores under every order row, and its delta, as they were; scored without
    leaving it out, they change, so the check can fail."""
    data = fake_scenario(n_train=10, first_effect=0.7)
    train = data.phase_rows("train")
    t = 4
    shuffled = permute_membership(data, t)
    assert not np.array_equal(shuffled.shadow_first[t], data.shadow_first[t])
    x = data.phi[: data.n_shadows, :, 0].astype(np.float64)
    before, after = (order.deltas(x, d.shadow_in, d.shadow_first, np.array([t, -1])) for d in (data, shuffled))
    assert abs(before[0] - after[0]) < 1e-12 and abs(before[1] - after[1]) > 1e-6
    for label, o in ORDER_ROWS:
        attack = make_attack(o)
        # equal but for the last bits of the leave-one-out downdate (attacks.stats), and for the
        # affine map of the winner's min-max over the call, which depends on every row
        kept = [_unit(attack(d, train, train)[t]) for d in (data, shuffled)]
        np.testing.assert_allclose(*kept, rtol=0, atol=1e-12, err_msg=label)
        leaky = [_unit(attack(d, train, np.full(len(train), -1))[t]) for d in (data, shuffled)]
        assert np.abs(leaky[0] - leaky[1]).max() > 1e-6, label


def test_no_first_member_is_refused_naming_the_flag():
    for data in (fake_scenario(first=False), fake_scenario()):
        if data.shadow_first is not None:
            data.shadow_first[:] = False  # designed shadows only: none is first
        rows, exclude = _rows(data)
        for _, o in ORDER_ROWS:
            with pytest.raises(ValueError, match="^--order-shift: no shadow holds"):
                make_attack(o)(data, rows, exclude)
    with pytest.raises(ValueError, match="online LiRA only"):
        x = data.phi[: data.n_shadows]
        lira(x[:, :6], x, data.shadow_in, np.tile(np.arange(6), (data.n_shadows, 1)), shadow_first=data.shadow_in)


def test_too_few_shadows_to_measure_shift_nothing():
    """Two train models: a first entry has at most one other IN shadow, no per-point IN sd; the
    shift is then 0 (no evidence), and each order row scores as its plain counterpart."""
    data = fake_scenario(n_train=2, first_effect=0.7)
    rows, exclude = _rows(data)
    x = data.phi[: data.n_shadows, :, 0].astype(np.float64)
    assert (order.deltas(x, data.shadow_in, data.shadow_first, exclude) == 0).all()
    for label, o in ORDER_ROWS:
        plain = make_attack(PLAIN[label])(data, rows, exclude)
        assert np.array_equal(make_attack(o)(data, rows, exclude), plain), label


def test_winner_config_shifts_only_where_its_formula_has_an_in_side():
    """The winner's configuration is 'mid' in purchase100_inf, 'z' (no IN side) in purchase100_hi."""
    for scenario, moves in (("purchase100_inf", True), ("purchase100_hi", False)):
        data = fake_scenario(first_effect=0.7, scenario=scenario)
        rows, exclude = _rows(data)
        plain, shifted = (
            make_attack(AttackOptions(attack="mico-winner-config", order_shift=s))(data, rows, exclude)
            for s in (False, True)
        )
        assert np.array_equal(plain, shifted) != moves


def test_options_read_it_only_where_there_is_an_in_side():
    assert AttackOptions(order_shift=True).unused() == ["order_shift"]  # offline LiRA
    assert AttackOptions(attack="rmia", order_shift=True).unused() == ["order_shift"]
    assert AttackOptions(attack="calibrated", calibration="z", order_shift=True).unused() == ["order_shift"]
    assert AttackOptions(online_attack=True, global_variance=True, as_submitted=True, order_shift=True).unused() == [
        "order_shift"
    ]
    for o in (
        AttackOptions(online_attack=True, order_shift=True),
        AttackOptions(attack="rmia", online_attack=True, order_shift=True),
        AttackOptions(attack="calibrated", calibration="in", order_shift=True),
        AttackOptions(attack="mico-winner-config", order_shift=True),
    ):
        assert o.unused() == []


def test_the_line_up_and_the_stacked_attack_carry_the_order_rows():
    assert [label for label, _ in ORDER_ROWS] == list(PLAIN)
    stacked = [label for label, o in STACK_BASE if o.order_shift]
    assert stacked == ["LiRA online (training order)", "RMIA online (training order)"]
    assert f"over {len(STACK_BASE)} attacks" in STACKED


def test_holding_shadows_out_carries_their_first_rows():
    data = fake_scenario(n_train=6)
    sub, _ = folds.held_out(data, [4, 1])
    assert np.array_equal(sub.shadow_first, data.shadow_first[[0, 2, 3, 5]])
    assert folds.held_out(fake_scenario(n_train=6, first=False), [1])[0].shadow_first is None
    models = list(data.models)
    models[2] = models[2].__class__(models[2].path, "purchase100", data.scenario, "shadow", 100)
    data.models = models
    sub = bench.subset(data, [2])  # a shadow row kept as an extra: its first row goes with it
    assert np.array_equal(sub.shadow_first, data.shadow_first[[0, 1, 3, 4, 5, 2]])


@pytest.fixture(scope="module")
def inf_cached(tiny_challenges, tmp_path_factory):
    """A writable copy of the tiny purchase100 challenge, purchase100_inf cached."""
    root = tmp_path_factory.mktemp("order")
    data_dir, cache_dir = str(root / "data"), str(root / "cache")
    shutil.copytree(tiny_challenges, data_dir)
    argv = ["--challenge", "purchase100", "--data-dir", data_dir, "--cache-dir", cache_dir]
    assert save_preds.main(argv + ["--scenario", "purchase100_inf", "--device", "cpu"]) == 0
    return data_dir, cache_dir


def test_load_scenario_marks_each_train_models_own_members(inf_cached):
    data_dir, cache_dir = inf_cached
    params = load_params(data_dir, "purchase100")
    data = load_scenario(data_dir, cache_dir, "purchase100", "purchase100_inf", params, params.n_points)
    train = data.phase_rows("train")
    assert data.shadow_first.shape == data.shadow_in.shape == (len(train), len(data.points))
    for r in train:
        split = data.models[r].splits(params, params.n_points)
        assert np.array_equal(data.shadow_first[r], np.isin(data.points, split.member))
        assert data.shadow_first[r].sum() == params.len_challenge
        members = data.challenge[r][data.solutions[r] == 1]  # solution.csv agrees
        assert np.array_equal(np.flatnonzero(data.shadow_first[r]), np.sort(members))
    assert not (data.shadow_first & ~data.shadow_in).any()


def test_order_shift_on_the_command_line(inf_cached, tmp_path, capsys):
    data_dir, cache_dir = inf_cached
    argv = ["--challenge", "purchase100", "--data-dir", data_dir, "--cache-dir", cache_dir]
    argv += ["--scenario", "purchase100_inf", "--evaluate", "--online_attack"]
    train = {}
    for extra in ([], ["--order-shift"]):
        report_dir = str(tmp_path / ("order" if extra else "plain"))
        code, err = run_script(
            run_lira_mia.main, "run_lira_mia.py", argv + ["--report-dir", report_dir] + extra, capsys
        )
        assert code == 0, err
        scores = json.load(open(os.path.join(report_dir, "purchase100", "scores.json")))
        train[bool(extra)] = scores["purchase100_inf"]["train"]
    assert train[True] != train[False]  # the shift moved the leave-one-out scores
    code, err = run_script(
        run_lira_mia.main, "run_lira_mia.py", argv[:-1] + ["--attack", "rmia", "--order-shift"], capsys
    )
    assert code == 2 and err[-1].endswith("--attack rmia does not use --order-shift; drop it")
    for _, o in ORDER_ROWS:  # each row's reproduce command is accepted and gives the row back
        flags = run_lira_mia.option_flags(o)
        assert "--order-shift" in flags and run_lira_mia.parse_args(["--challenge", "purchase100", *flags])[1] == o
