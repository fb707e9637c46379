"""Every benchmark in bench/ runs end to end at a tiny size, so a refactor cannot break one silently."""

import importlib.util
import json
import os

import numpy as np
import pytest

from challenges import report, scoring
from tests.conftest import ROOT


def _bench(name: str):
    """bench/<name>.py as a module (bench/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "bench", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_lira(capsys, single_thread, monkeypatch):
    monkeypatch.setattr(report, "plot_roc", lambda *a, **k: None)  # drawing would be most of the run
    argv = ["--scenarios", "1", "--loop-targets", "3", "--n-points", "2000", "--len-training", "1000"]
    argv += ["--len-challenge", "10", "--train-models", "24", "--target-models", "2"]
    argv += ["--forward-points", "200", "--threads", "1"]
    assert _bench("bench_lira").main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("scoring ") and "speedup" in out[-1]
    assert sum("LiRA " in line and "vectorised" in line for line in out) == 4


def test_bench_attack_power(tmp_path, capsys, single_thread):
    out = tmp_path / "power"
    argv = ["--out", str(out), "--device", "cpu", "--size", "small", "--bootstrap", "5", "--n-points", "400"]
    argv += ["--len-challenge", "5", "--epochs", "1", "--shadows", "0,2", "--fractions", "0.5"]
    argv += ["--train-models", "6", "--target-models", "1", "--scenarios", "purchase100_inf"]
    bench = _bench("bench_attack_power")
    assert bench.main([*argv, "--build-only"]) == 0  # what a second process beside the full run does
    assert not (out / "scores").exists() and len(list(out.glob("f0.5/data/purchase100/*/shadow/model_*"))) == 2
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    md = (out / "attack_power.md").read_text()
    power = md.split("## Attack power")[1].split("## ")[0]
    rows = [r for r in power.splitlines() if r.startswith("| ") and not r.startswith("| attack") and "±" in r]
    table = [r for r in rows if r.split(" | ")[0][2:] in bench.LABELS]
    # the winner as submitted once (train models only), every other row at k = 0 and k = 2
    # (tests/test_bench_attack_power.py runs two fractions with the slow tests)
    assert len(table) == 1 + (len(bench.LABELS) - 1) * 2
    assert {r.split(" | ")[1] for r in table} == {"—", "0.5"}
    for label in bench.LABELS:  # each row was printed as soon as it was measured
        assert f"purchase100_inf f=0.5 k=2: {label}" in printed
    assert "honest split-half" in md and bench.AIM in md and "Aim " in md
    # what k = 2 adds to each attack but the winner as submitted, and where it pays
    gains = md.split("## What designed shadows add")[1].split("Where shadows pay")[0]
    assert sum(r.startswith("| ") and " | 0.5 | 2 | " in r for r in gains.splitlines()) == len(bench.LABELS) - 1
    assert md.count("- avg TPR@") == 3 and "- inf TPR@1%: " in md
    assert (out / "attack_power.png").stat().st_size > 0 and (out / "attack_power.json").exists()
    # issue 22, item 2: dev and final each scored on its own, then their mean (not one pooled ROC)
    cell = np.load(out / "scores" / "purchase100_inf_k0.npz")
    assert sorted(set(cell["phase"].tolist())) == ["dev", "final"]
    s, phase = cell[f"score {bench.WINNER}"], cell["phase"]
    each = [scoring.score(cell["truth"][phase == ph], s[phase == ph])["TPR_FPR_1000"] for ph in ("dev", "final")]
    res = json.load(open(out / "attack_power.json"))
    assert res["k0"]["rows"][bench.WINNER]["avg TPR@10%"][0] == pytest.approx(np.mean(each))
    assert "## Each phase on its own against dev + final pooled (k = 0)" in md
    # issue 24: each new signal against the same attack without it, with its paired SE
    added = md.split("## What each new signal adds")[1].split("## ")[0]
    assert "| LiRA online (training order) | LiRA online | k = 0 | " in added and " ± " in added
    # a rerun resumes: nothing is trained or scored again
    assert bench.main(argv) == 0
    assert "k=2: Auto" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "cases",
    [
        ["purchase100_inf"],
        # seconds more, little code of the benchmark's own: DP-SGD's noise search (opacus' accountant,
        # most of a tiny 'lo' case) and the CNN's input shape
        pytest.param(["purchase100_lo", "cifar10_inf", "cifar10_lo"], marks=pytest.mark.slow),
    ],
)
def test_bench_train(cases, capsys, monkeypatch, single_thread):
    bench = _bench("bench_train")
    # track -> (records, training-set size per model, models, epochs); the warm-up wants 16 records
    monkeypatch.setattr(bench, "SMALL", {"purchase100": (64, 32, 2, 1), "cifar10": (16, 8, 2, 1)})
    argv = ["--device", "cpu", "--seq-models", "1", "--repeats", "1", "--threads", "1", "--cases", *cases]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    for case in cases:
        assert any(line.startswith(f"{case}: sequential ") and "speedup" in line for line in out)


def test_bench_memory(tmp_path, capsys):
    bench = _bench("bench_memory")
    argv = ["--track", "cifar10", "--out", str(tmp_path), "--n-points", "2000", "--len-training", "1000"]
    argv += ["--len-challenge", "10", "--train-models", "8", "--target-models", "2"]
    argv += ["--need-gib", "0", "--floor-gib", "0"]
    # every line-up attack, then auto and --compare, each a case of its own
    names = [name for name, _ in bench.cases("purchase100", "purchase100_inf", str(tmp_path))]
    assert names == list(dict(bench.COMPARE + bench.AUTO_LINEUP)) + ["--attack auto", "--compare"]
    # auto runs every attack of the line-up on the cache: logits, Mentr and the runner-up's membership
    assert bench.main([*argv, "--only=--attack auto"]) == 0
    out = capsys.readouterr().out
    assert "N = 2,000, 18 view(s), logits kept" in out
    row = next(line for line in out.splitlines() if line.startswith("| --attack auto |"))
    assert row.endswith(" | ok |") and "GiB" in row
    # the watchdog kills a run past --kill-gib (the interpreter alone is more than 0.01 GiB); the
    # cache is reused, not rebuilt
    stamp = os.stat(tmp_path / "bench.json").st_mtime_ns
    assert bench.main([*argv, "--only", "Confidence", "--kill-gib", "0.01"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| Confidence |"))
    assert "over the limit: killed at" in row and "(reused)" in out
    assert os.stat(tmp_path / "bench.json").st_mtime_ns == stamp
