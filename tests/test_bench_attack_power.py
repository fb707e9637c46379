"""bench/bench_attack_power.py: its flags, the aim's arithmetic, the per-fraction views, and (slow) a
tiny run with both designs."""

import json
import os
import sys

import numpy as np
import pytest

from tests.conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))

import bench_attack_power as bench  # noqa: E402


def test_size_defaults_to_the_preset():
    args = bench.parse_args([])
    assert args.size == "mico" and args.n_points is None and args.len_challenge is None
    small = bench.parse_args(["--size", "small"])
    assert (small.n_points, small.len_challenge, small.epochs) == (10_000, 7, 10)


def test_shadows_and_fractions_default_to_the_issue():
    args = bench.parse_args([])
    assert args.shadows == [0, 32, 64, 128] and args.fractions == [0.5, 0.75]
    assert bench.parse_args(["--shadows", "256,16", "--fractions", "0.75"]).shadows == [0, 16, 256]
    assert bench.settings(bench.parse_args(["--shadows", "0,8", "--fractions", "0.5,0.75"])) == [
        (None, 0),
        (0.5, 8),
        (0.75, 8),
    ]


def test_a_fraction_can_cap_its_shadows():
    args = bench.parse_args(["--shadows", "0,32,64,128,256", "--fractions", "0.75:128,0.5"])
    assert args.fractions == [0.5, 0.75] and bench.shadows_at(args, 0.5) == [0, 32, 64, 128, 256]
    assert bench.shadows_at(args, 0.75) == [0, 32, 64, 128]
    assert bench.settings(args) == [(None, 0)] + [(0.5, k) for k in (32, 64, 128, 256)] + [
        (0.75, 32),
        (0.75, 64),
        (0.75, 128),
    ]


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--shadows", "0,512"], "--shadows"),
        (["--shadows", "0,a"], "--shadows"),
        (["--fractions", "1"], "--fractions"),
        (["--fractions", "0.5,x"], "--fractions"),
        (["--bootstrap", "1"], "--bootstrap"),
        (["--fractions", "0.5,0.75:x"], "--fractions"),
        (["--fractions", "0.5,0.75:0"], "--fractions"),
    ],
)
def test_bad_flags_are_refused_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert flag in capsys.readouterr().err


def _row(avg, d_win, d_cfg, se_cfg, inf1):
    return {
        "avg TPR@10%": [avg, 0.01],
        f"avg TPR@10% - {bench.WINNER}": [d_win, 0.01],
        f"avg TPR@10% - {bench.CONFIG}": [d_cfg, se_cfg],
        "scenarios": {bench.INF: {"TPR@1%": [inf1, 0.01]}},
    }


def test_aim_parts_and_how_far():
    winner = _row(0.2, 0.0, 0.0, 0.0, 0.05)
    met = bench.aim_gaps(_row(0.25, 0.03, 0.021, 0.01, 0.10), winner, True)
    assert all(ok for _, ok in met.values())
    short = bench.aim_gaps(_row(0.22, 0.02, 0.02, 0.01, 0.09), winner, True)
    # 0.01 short of winner + 0.03; exactly 2 SE is not more than 2 SE; 0.01 short of doubling
    assert [round(g, 6) for g, _ in short.values()] == [0.01, 0.0, 0.01]
    assert not any(ok for _, ok in short.values())
    assert len(bench.aim_gaps(_row(0.25, 0.03, 0.021, 0.01, 0.1), winner, False)) == 2


def test_each_fraction_sees_the_challenge_with_a_shadow_folder_of_its_own(tmp_path):
    base = tmp_path / "data" / bench.TRACK
    for phase in ("train", "dev", "final", "shadow"):
        (base / "purchase100_inf" / phase).mkdir(parents=True)
    (base / "solutions").mkdir()
    (base / "challenge.json").write_text("{}")
    data = bench.make_view(str(tmp_path), 0.75, ["purchase100_inf"])
    assert data == os.path.join(str(tmp_path), "f0.75", "data")
    view = os.path.join(data, bench.TRACK)
    assert os.path.islink(os.path.join(view, "challenge.json")) and os.path.islink(os.path.join(view, "solutions"))
    assert sorted(os.listdir(os.path.join(view, "purchase100_inf"))) == ["dev", "final", "train"]
    assert all(os.path.islink(os.path.join(view, "purchase100_inf", p)) for p in ("dev", "final", "train"))
    assert bench.make_view(str(tmp_path), 0.75, ["purchase100_inf"]) == data  # a rerun leaves it as it is


@pytest.mark.slow
def test_every_score_carries_a_standard_error(tmp_path, capsys):
    argv = ["--out", str(tmp_path), "--size", "small", "--n-points", "400", "--len-challenge", "5"]
    argv += ["--epochs", "1", "--shadows", "0,4", "--fractions", "0.5,0.75", "--bootstrap", "5", "--device", "cpu"]
    argv += ["--train-models", "6", "--target-models", "1", "--scenarios", "purchase100_inf"]
    assert bench.main(argv) == 0
    power = open(tmp_path / "attack_power.md").read().split("## Attack power")[1].split("## ")[0]
    rows = [r for r in power.splitlines() if r.startswith("| MICO winner")]
    cells = rows[0].strip("|").split("|")[3:]
    assert len(cells) == 3 + 1 + 2 + 2 and all("±" in c for c in cells)
    assert {r.split(" | ")[1] for r in rows} == {"—", "0.5", "0.75"}
    res = json.load(open(tmp_path / "attack_power.json"))
    assert set(res) == {"k0", "f0.5_k4", "f0.75_k4"}
    m = res["f0.75_k4"]["rows"][bench.AUTO]
    assert m["scenarios"][bench.INF]["TPR@10%"][1] >= 0 and "honest split-half" in m["scenarios"][bench.INF]
    assert "±" in capsys.readouterr().out


def _setting(shift: float, noise: float, rng):
    """rows, scenario-average replicates and per-scenario replicates of one setting: every label's
    replicates are base + shift (+ noise of its own)."""
    base = np.linspace(0.1, 0.3, 50)
    rows, avgs, reps = {}, {c: {} for c, _, _ in bench.FPRS}, {bench.INF: {c: {} for c, _, _ in bench.FPRS}}
    for lb in bench.LABELS:
        r = base + shift + noise * rng.standard_normal(len(base))
        rows[lb] = {f"avg {c}": [float(r.mean()), 0.0] for c, _, _ in bench.FPRS}
        rows[lb]["scenarios"] = {bench.INF: {"TPR@1%": [float(r.mean()), 0.0]}}
        for c, _, _ in bench.FPRS:
            avgs[c][lb] = reps[bench.INF][c][lb] = r
    return rows, avgs, reps


def test_gains_over_no_shadows_pair_the_bootstrap_draws():
    rng = np.random.default_rng(0)
    zero = _setting(0.0, 0.0, rng)
    rows, avgs, reps = _setting(0.01, 0.0, rng)  # the same draws, 0.01 higher: SE 0, a gain that pays
    bench.gains(rows, avgs, reps, *zero)
    g = rows[bench.AUTO]["gain over k=0"]
    assert set(g) == {"avg TPR@10%", "avg TPR@1%", "avg TPR@0.1%", "inf TPR@1%"}
    assert all(abs(d - 0.01) < 1e-12 and se < 1e-12 and bench.paying([d, se]) for d, se in g.values())
    rows, avgs, reps = _setting(0.01, 0.05, rng)  # draws that do not pair: a gain inside its SE
    bench.gains(rows, avgs, reps, *zero)
    d, se = rows[bench.AUTO]["gain over k=0"]["avg TPR@10%"]
    assert se > 0.02 and not bench.paying([d, se])


def test_a_moved_share_is_shown_beside_the_fraction_asked():
    assert bench.ftext({"fraction": None, "shadows": 0}) == "—"
    assert bench.ftext({"fraction": 0.5, "shares": {"a": "1/2", "b": "1/2"}, "shadows": 32}) == "0.5"
    assert bench.ftext({"fraction": 0.5, "shares": {"a": "5/8", "b": "5/8"}, "shadows": 32}) == "0.5 (5/8 used)"
    assert bench.ftext({"fraction": 0.75, "shares": {"a": "3/4"}, "shadows": 32}) == "0.75"
