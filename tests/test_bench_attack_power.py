"""bench/bench_attack_power.py at a tiny size: a smoke test, so a refactor cannot break its table."""

import json
import os
import sys

import pytest

from tests.conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))

import bench_attack_power  # noqa: E402


def test_size_defaults_to_the_preset():
    args = bench_attack_power.parse_args([])
    assert args.size == "mico" and args.n_points is None and args.len_challenge is None
    small = bench_attack_power.parse_args(["--size", "small"])
    assert (small.n_points, small.len_challenge, small.epochs) == (10_000, 7, 10)


@pytest.mark.slow
def test_every_score_carries_a_standard_error(tmp_path, capsys):
    argv = ["--out", str(tmp_path), "--size", "small", "--n-points", "4000", "--len-challenge", "5"]
    argv += ["--epochs", "1", "--shadows", "0,2", "--bootstrap", "5", "--device", "cpu"]
    assert bench_attack_power.main(argv) == 0
    rows = [r for r in open(tmp_path / "attack_power.md").read().splitlines() if r.startswith("| MICO winner")]
    cells = rows[0].strip("|").split("|")[2:]
    assert len(cells) == 3 * 4 + 1 and all("±" in c for c in cells)
    res = json.load(open(tmp_path / "attack_power.json"))
    m = res["purchase100_inf"]["balanced"]["0"]["MICO winner, as submitted"]
    assert m["TPR_FPR_1000_se"] > 0 and "±" in capsys.readouterr().out
