"""bench/gpu_check.py (make gpu-check) runs to its end on a CPU at its tiny size."""

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
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
    # Every stage ran, but the CUDA tests were skipped: "skipped", never "complete".
    assert res["state"] == "skipped" and not res["complete"] and res["device"] == "cpu"
    assert "skipped" in res["tests"]["summary"] and "no CUDA line ran" in res["tests"]["summary"]
    (row,) = res["bench"]
    assert row["case"] == "purchase100_inf" and row["batched_s_per_model"] > 0 and row["line"] in run.stdout
    assert res["save_preds"]["models"] == 4 and res["save_preds"]["model_points_per_s"] > 0
    text = (out / "gpu_check.txt").read_text()
    assert "SKIPPED" in text and "no CUDA line ran" in text and "complete" not in text.lower()
    assert text.splitlines()[0] in run.stdout and res["packages"]["opacus"]
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


def _results(gc, tmp_path, summary, tiny=True, budget=470.0):
    res = gc.Results(str(tmp_path), SimpleNamespace(tiny=tiny, budget=budget), torch.device("cpu"))
    res.data["tests"] = {"rc": 0, "summary": summary, "seconds": 1.0, "tail": []}
    return res


def test_a_check_whose_cuda_tests_were_skipped_says_skipped_not_complete(tmp_path):
    gc = _gpu_check()
    res = _results(gc, tmp_path, "18 skipped in 2.1s (no CUDA here: no CUDA line ran)")
    res.end()
    res.save()
    first = (tmp_path / "gpu_check.txt").read_text().splitlines()[0]
    assert "SKIPPED" in first and "complete" not in first.lower()
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved["state"] == "skipped" and saved["complete"] is False
    for summary in ("18 passed in 60.2s", "1 failed, 17 passed in 61.0s", "17 passed, 1 skipped in 50s"):
        res = _results(gc, tmp_path, summary)
        res.end()
        assert res.data["state"] == "complete" and ": complete as a rehearsal on cpu (" in gc.render(res.data)
        res.data["device"] = "cuda:0"
        assert ": complete, " in gc.render(res.data).splitlines()[0]


def test_the_cnn_cases_keep_their_share_of_the_budget(tmp_path, monkeypatch):
    # Every stage runs to its limit (the worst case): the tests and the purchase100 cases must stop
    # where they would eat into the CNN cases' and save_preds' reserved shares.
    gc = _gpu_check()
    budget, clock, limits = 470.0, [0.0], {}
    res = _results(gc, tmp_path, "")
    res.left = lambda: budget - clock[0]

    def run_streaming(cmd, limit, log=None):
        name = cmd[cmd.index("--cases") + 1] if "--cases" in cmd else "tests"
        limits[name] = limit
        clock[0] += max(1.0, limit)
        return {"rc": None, "seconds": max(1.0, limit), "lines": []}

    monkeypatch.setattr(gc, "run_streaming", run_streaming)
    args = SimpleNamespace(tiny=False, work=str(tmp_path), device="cuda")
    gc.run_tests(res, gc.stage_order(args))
    gc.run_bench(res, args)
    for case in ("cifar10_inf", "cifar10_lo"):
        share = gc.RESERVE_SHARE[case] * budget
        assert limits.get(case, 0) >= min(share, gc.FULL_PLAN[case][2]), (case, limits)
    assert budget - clock[0] >= gc.RESERVE_SHARE["save_preds"] * budget - 1e-9  # save_preds' share is left
    assert sum(limits.values()) <= budget
    # A stage never runs past its own limit, and with nothing after it keeps what is left.
    assert gc.stage_limit("save_preds", 100.0, 30.0, ["tests", "save_preds"], budget) == 30.0
    assert gc.stage_limit("tests", 150.0, 470.0, ["tests", "cifar10_lo"], budget) == 150.0
    order = ["tests", "cifar10_inf", "cifar10_lo", "save_preds"]
    assert gc.stage_limit("tests", 150.0, 300.0, order, budget) == pytest.approx(300.0 - 0.6 * budget)


def _wheel(folder, name: str, version: str) -> str:
    """A minimal pure-Python wheel of a one-module package ``name``; returns its sha256."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"__version__ = {version!r}\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{dist}/RECORD"] = "".join(f"{f},,\n" for f in files) + f"{dist}/RECORD,,\n"
    path = os.path.join(folder, f"{name}-{version}-py3-none-any.whl")
    with zipfile.ZipFile(path, "w") as z:
        for f, text in files.items():
            z.writestr(f, text)
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_the_pinned_wheels_install_offline_and_a_missing_one_is_named(tmp_path, monkeypatch):
    gc = _gpu_check()
    wheels = tmp_path / "whl"
    wheels.mkdir()
    digest = _wheel(str(wheels), "mico_fake_wheel", "1.2")
    pins = tmp_path / "pins.txt"
    pins.write_text(f"# a comment\nmico_fake_wheel==1.2 --hash=sha256:{digest}\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    site = str(tmp_path / "site")
    assert gc.install_wheels(str(wheels), site, str(pins)) == [f"mico_fake_wheel==1.2 --hash=sha256:{digest}"]
    assert sys.path[0] == site and os.environ["PYTHONPATH"] == os.pathsep.join([site, "/elsewhere"])
    assert gc.check_imports(["mico_fake_wheel"]) == {"mico_fake_wheel": "1.2"}
    sys.modules.pop("mico_fake_wheel", None)
    pins.write_text(f"mico_fake_wheel==1.3 --hash=sha256:{digest}\n")  # a pin whose wheel is not there
    with pytest.raises(SystemExit) as e:
        gc.install_wheels(str(wheels), str(tmp_path / "site2"), str(pins))
    assert "\n" not in str(e.value) and "mico_fake_wheel==1.3" in str(e.value) and "make gpu-wheels" in str(e.value)
    with pytest.raises(SystemExit) as e:
        gc.check_imports(["numpy", "mico_absent_module"])
    message = str(e.value)
    assert "\n" not in message and message.startswith("gpu_check.py: cannot import mico_absent_module (")
    assert "make gpu-wheels" in message and "numpy" not in message


def _requirement_names():
    lines = [line.split("#", 1)[0].strip() for line in open(os.path.join(ROOT, "requirements.txt"))]
    return {re.match(r"[A-Za-z0-9_.-]+", line).group(0).lower(): line for line in lines if line}


def test_the_pins_cover_what_the_gpu_image_lacks():
    gc = _gpu_check()
    text = open(os.path.join(ROOT, gc.WHEELS_FILE)).read()
    image = set(re.search(r"^# image-has: (.+)$", text, flags=re.M).group(1).lower().split())
    pins = {name.lower(): version for name, version, _ in gc.read_pins()}
    assert pins and all(re.search(r"--hash=sha256:[0-9a-f]{64}", line) for _, _, line in gc.read_pins())
    requirements = _requirement_names()
    assert set(requirements) <= image | set(pins), set(requirements) - image - set(pins)
    for name, version in pins.items():  # each pin meets requirements.txt's lower bound
        bound = re.search(r">=\s*([0-9.]+)", requirements.get(name, ""))
        if bound:
            assert tuple(map(int, version.split(".")[:3])) >= tuple(map(int, bound.group(1).split(".")))
        try:  # and its own needs are in the image or pinned too (read where that version is installed)
            if metadata.version(name) != version:
                continue
        except metadata.PackageNotFoundError:
            continue
        needs = {
            re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower()
            for r in metadata.requires(name) or []
            if "extra ==" not in r
        }
        assert needs <= image | set(pins), (name, needs - image - set(pins))
    assert "opacus" in pins and set(gc.stage_modules()) >= {"opacus", "sklearn", "pytest", "torch"}


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_gpu_wheels_downloads_the_pins_for_the_gpu_image():
    run = subprocess.run(["make", "-n", "-C", ROOT, "gpu-wheels"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    cmd = run.stdout
    for part in (
        "pip download",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version 3.12",
        "--implementation cp",
        "-d .whl",
        "-r bench/gpu_wheels.txt",
    ):
        assert part in cmd, part
    assert re.search(r"--platform manylinux\S*_x86_64", cmd)
    assert "/.whl/" in open(os.path.join(ROOT, ".gitignore")).read().split()
