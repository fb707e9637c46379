"""bench/gpu_check.py (make gpu-check) runs to its end on a CPU at its tiny size."""

import importlib.util
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import ROOT


@pytest.mark.slow  # four Python processes that import torch: about 20 CPU-seconds
def test_gpu_check_runs_to_its_end_on_cpu(tmp_path):
    out = tmp_path / "gpu_check"
    cmd = [sys.executable, os.path.join(ROOT, "bench", "gpu_check.py"), "--device", "cpu", "--tiny", "--out", str(out)]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    with open(out / "gpu_check.json") as f:
        res = json.load(f)
    assert res["complete"] and res["device"] == "cpu"
    assert "skipped" in res["tests"]["summary"] and "no CUDA line ran" in res["tests"]["summary"]
    (row,) = res["bench"]
    assert row["case"] == "purchase100_inf" and row["batched_s_per_model"] > 0 and row["line"] in run.stdout
    assert res["save_preds"]["models"] == 4 and res["save_preds"]["model_points_per_s"] > 0
    text = (out / "gpu_check.txt").read_text()
    assert "complete" in text and "no CUDA line ran" in text and "INCOMPLETE" not in text
    assert not [p for p in os.listdir(out) if p.startswith(".bench_")]  # no leftover partial rows


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(ROOT, "bench", "gpu_check.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_stage_past_its_limit_is_stopped_and_the_results_say_incomplete(tmp_path):
    gc = _gpu_check()
    r = gc.run_streaming([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(30)"], 1.0)
    assert r["rc"] is None and r["lines"] == ["started"] and r["seconds"] < 10
    args = SimpleNamespace(tiny=True, budget=10.0)
    res = gc.Results(str(tmp_path), args, torch.device("cpu"))
    res.data["bench"].append({"case": "cifar10_lo", "error": "stopped after 1.0 s (limit)"})
    res.save()
    text = (tmp_path / "gpu_check.txt").read_text()
    assert "INCOMPLETE" in text and "cifar10_lo: stopped after 1.0 s (limit)" in text and "tests: not run" in text
    assert json.loads((tmp_path / "gpu_check.json").read_text())["complete"] is False
