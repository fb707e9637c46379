"""The prepared GPU check behind ``make gpu-check`` (docs/gpu.md): one script, one results file.

Three stages, each under its own time limit inside a total budget (default 470 s, so that a
15-minute device window leaves room to rerun):

1. the CUDA tests (``pytest tests/test_gpu.py``; on a machine without CUDA they are skipped, and
   the results say so);
2. ``bench/bench_train.py`` per case at MICO's sizes (``--full``: purchase100 197,324 records,
   150,000 per model; cifar10 60,000 images, 50,000 per model), with fewer epochs or models
   where the budget demands, said in the rows and the text (models per minute are then also
   scaled to the recipe's full epochs, linearly);
3. ``save_preds.py`` throughput: a MICO-size cifar10 scenario (60,000 images, 200 models, 200
   challenge points each) whose models are freshly initialised, not trained (a forward pass
   costs the same), written in MICO's layout, then cached by save_preds.py on the device
   (``--tiny``: a purchase100 one of 4 models).

Results go to ``<out>/gpu_check.json`` and ``<out>/gpu_check.txt``, rewritten after every stage
with ``"complete": false`` until the last one ends, and every stage's whole output to
``<out>/gpu_check.log``; scratch files go to ``--work``, never to ``<out>``. ``--tiny`` shrinks
everything to seconds, so that ``--device cpu --tiny`` runs the whole check on a CPU
(tests/test_gpu_check.py does).

    python bench/gpu_check.py                      # on the GPU machine: make gpu-check
    python bench/gpu_check.py --device cpu --tiny  # the same steps on a CPU, in seconds
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# The GPU machine's image has torch, numpy, scipy, pandas, pytest... but not opacus, which our
# models import: say so at once, not after a stage's traceback (docs/gpu.md: carry it).
if importlib.util.find_spec("opacus") is None:
    sys.exit(
        "gpu_check.py: opacus is not installed here: carry its wheel in .whl/ and pip-install it with "
        "--target before the check (docs/gpu.md, 'Running it on the device machine')"
    )

from challenges.fileio import write_text
from challenges.layout import ModelDir
from challenges.scenario import scenario_points
from challenges.tracks import LEN_CHALLENGE, PHASES, ChallengeParams, get_track, load_params, save_params
from models.loading import build_model, resolve_device
from models.train import TrainResult
from production.folders import model_seeds, seeded_job, write_folder
from production.synthetic import make_purchase_like, write_cifar_batches, write_purchase_csv

# case -> (models, epochs or None for the recipe's, time limit in s) at MICO's sizes on the GPU.
# Estimates for an H100/H200 class GPU; a case that overruns is stopped and reported as such.
FULL_PLAN = {
    "purchase100_inf": (64, None, 90),
    "purchase100_lo": (64, 10, 110),
    "cifar10_inf": (32, 1, 110),
    "cifar10_lo": (16, 1, 130),
}
TINY_PLAN = {"purchase100_inf": (2, 1, 120)}
# save_preds stage: (track, records, training-set size, models per phase train/dev/final). The
# tiny rehearsal takes purchase100: a CPU needs seconds per CNN over a few hundred images.
FULL_CACHE = ("cifar10", 60_000, 50_000, (100, 50, 50))
TINY_CACHE = ("purchase100", 400, 200, (2, 1, 1))
TESTS_LIMIT = 150  # s
SAVE_PREDS_RESERVE = 100  # s kept for the last stage while the benchmark runs
SAVE_PREDS_MIN = 30  # s: with less left, the last stage is skipped (building its scenario takes ~12 s)


def run_streaming(cmd: list[str], limit: float, log: str | None = None) -> dict:
    """Run ``cmd`` from the repository root, echoing its output lines as they come (and appending
    them to the file ``log``); stop it after ``limit`` seconds. Returns rc (None if stopped),
    seconds and the output lines."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    sink = open(log, "a") if log else None

    def pump():
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            print("    " + lines[-1], flush=True)
            if sink:
                sink.write(line)
                sink.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=max(1.0, limit))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        rc = None
    reader.join(timeout=5)
    if sink and not reader.is_alive():  # else the reader still writes; the file closes with it
        sink.write(f"[{' '.join(cmd)}: exit status {rc}, {time.perf_counter() - start:.1f} s]\n")
        sink.close()
    return {"rc": rc, "seconds": round(time.perf_counter() - start, 2), "lines": lines}


class Results:
    """The results file: JSON and text, rewritten atomically after every stage."""

    def __init__(self, out_dir: str, args, dev: torch.device) -> None:
        self.out_dir, self.start = out_dir, time.perf_counter()
        self.log = os.path.join(out_dir, "gpu_check.log")  # every stage's whole output
        self.data = {
            "complete": False,
            "device": str(dev),
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
            "tiny": args.tiny,
            "budget_s": args.budget,
            "torch": torch.__version__,
            "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
            "tests": None,
            "bench": [],
            "save_preds": None,
            "notes": [],
        }

    def left(self) -> float:
        return self.data["budget_s"] - (time.perf_counter() - self.start)

    def save(self) -> None:
        self.data["elapsed_s"] = round(time.perf_counter() - self.start, 1)
        os.makedirs(self.out_dir, exist_ok=True)
        write_text(os.path.join(self.out_dir, "gpu_check.json"), json.dumps(self.data, indent=1) + "\n")
        write_text(os.path.join(self.out_dir, "gpu_check.txt"), render(self.data))


def render(d: dict) -> str:
    """The human-readable results."""
    state = "complete" if d["complete"] else "INCOMPLETE (stopped or still running)"
    out = [
        f"gpu_check on {d['device']} ({d['device_name']}), torch {d['torch']}, {d['started_utc']} UTC: {state}, "
        f"{d.get('elapsed_s', 0)} s of a {d['budget_s']} s budget" + (", tiny sizes" if d["tiny"] else ""),
    ]
    t = d["tests"]
    out.append("tests: " + ("not run" if t is None else f"{t['summary']} ({t['seconds']} s)"))
    out.append("training benchmark (bench/bench_train.py):")
    for row in d["bench"]:
        out.append("  " + (row.get("line") or f"{row['case']}: {row['error']}"))
    s = d["save_preds"]
    if s is None:
        out.append("save_preds.py: not run")
    elif "error" in s:
        out.append(f"save_preds.py: {s['error']}")
    else:
        out.append(
            f"save_preds.py, {s['scenario']}: {s['models']} models x {s['points']} points in {s['seconds']} s "
            f"on {s['device']}: "
            f"{s['models_per_s']:.2f} models/s, {s['model_points_per_s']:.3g} model-points/s (process start included)"
        )
    out += [f"note: {n}" for n in d["notes"]]
    return "\n".join(out) + "\n"


def run_tests(res: Results) -> None:
    print("== CUDA tests (tests/test_gpu.py)", flush=True)
    r = run_streaming(
        [sys.executable, "-m", "pytest", "-q", "-rfEs", "--tb=short", "-p", "no:cacheprovider", "tests/test_gpu.py"],
        min(TESTS_LIMIT, res.left()),
        res.log,
    )
    summary = next((line.strip("= ") for line in reversed(r["lines"]) if " in " in line), "no summary")
    if r["rc"] is None:
        summary = f"stopped after {r['seconds']} s: {summary}"
    elif "skipped" in summary and "passed" not in summary:
        summary += " (no CUDA here: no CUDA line ran)"
    res.data["tests"] = {"rc": r["rc"], "summary": summary, "seconds": r["seconds"], "tail": r["lines"][-30:]}


def run_bench(res: Results, args) -> None:
    print("== training benchmark (bench/bench_train.py)", flush=True)
    plan = TINY_PLAN if args.tiny else FULL_PLAN
    for case, (models, epochs, limit) in plan.items():
        limit = min(limit, res.left() - (0 if args.tiny else SAVE_PREDS_RESERVE))
        if limit < 20:
            res.data["bench"].append({"case": case, "error": "skipped: out of time budget"})
            continue
        rows_file = os.path.join(args.work, f".bench_{case}.json")
        cmd = [sys.executable, "bench/bench_train.py", "--device", args.device, "--cases", case]
        cmd += ["--models", str(models), "--seq-models", "1", "--repeats", "1", "--json", rows_file]
        cmd += ["--epochs", str(epochs)] if epochs else []
        cmd += [] if args.tiny else ["--full"]
        r = run_streaming(cmd, limit, res.log)
        if r["rc"] == 0 and os.path.exists(rows_file):
            with open(rows_file) as f:
                row = json.load(f)[0]
            os.remove(rows_file)
            res.data["bench"].append({**row, "seconds": r["seconds"]})
        else:
            why = f"stopped after {r['seconds']} s (limit)" if r["rc"] is None else f"exit status {r['rc']}"
            res.data["bench"].append({"case": case, "error": why, "tail": r["lines"][-15:]})
        res.save()


def build_cache_scenario(data_dir: str, track: str, n_points: int, len_training: int, counts, seed: int = 0) -> str:
    """A ``<track>_inf`` scenario in MICO's layout with freshly initialised models; returns its name."""
    scenario = f"{track}_inf"
    track_dir = os.path.join(data_dir, track)
    dataset = os.path.join(track_dir, get_track(track).dataset)
    if not os.path.exists(dataset):
        os.makedirs(track_dir, exist_ok=True)
        rng = np.random.default_rng(seed)
        if track == "cifar10":  # random bytes: the content does not change a forward pass's cost
            images = rng.integers(0, 256, size=(n_points, 3, 32, 32), dtype=np.uint8)
            write_cifar_batches(dataset, images, rng.integers(0, 10, size=n_points))
        else:
            write_purchase_csv(dataset, *make_purchase_like(n_points, rng))
    params = ChallengeParams(track, n_points, len_training, LEN_CHALLENGE, dataset, synthetic=True, seed=seed)
    save_params(data_dir, params)
    phases = [ph for ph, n in zip(PHASES, counts) for _ in range(n)]
    for i, phase in enumerate(phases):
        md = ModelDir(data_dir, track, scenario, phase, i)
        if os.path.isdir(md.path):
            continue
        job = seeded_job(md, params, n_points, model_seeds(seed, 1, i), reveal=phase == "train")
        torch.manual_seed(job.seed)
        untrained = TrainResult(model=build_model(track), train_accuracy=0.0, eval_accuracy=None, epsilon=None)
        write_folder(job, untrained)
    return scenario


def run_save_preds(res: Results, args) -> None:
    print("== save_preds.py throughput", flush=True)
    if res.left() < SAVE_PREDS_MIN:  # building the scenario alone takes seconds: stay inside the budget
        res.data["save_preds"] = {"error": f"skipped: {max(0, res.left()):.0f} s of the budget left"}
        return
    track, n_points, len_training, counts = TINY_CACHE if args.tiny else FULL_CACHE
    data_dir = os.path.join(args.work, "cache_check", "data")
    cache_dir = os.path.join(args.work, "cache_check", "cache")
    start = time.perf_counter()
    scenario = build_cache_scenario(data_dir, track, n_points, len_training, counts)
    built = round(time.perf_counter() - start, 1)
    shutil.rmtree(cache_dir, ignore_errors=True)  # a rerun measures a full pass again
    cmd = [sys.executable, "save_preds.py", "--challenge", track, "--data-dir", data_dir]
    cmd += ["--cache-dir", cache_dir, "--scenario", scenario, "--device", args.device]
    r = run_streaming(cmd, max(1.0, res.left()), res.log)
    if r["rc"] != 0:
        why = f"stopped after {r['seconds']} s (budget)" if r["rc"] is None else f"exit status {r['rc']}"
        res.data["save_preds"] = {"error": why, "tail": r["lines"][-15:]}
        return
    mds, _, union = scenario_points(data_dir, track, scenario, load_params(data_dir, track), n_points)
    res.data["save_preds"] = {
        "device": args.device,
        "scenario": scenario,
        "models": len(mds),
        "points": len(union),
        "seconds": r["seconds"],
        "models_per_s": len(mds) / r["seconds"],
        "model_points_per_s": len(mds) * len(union) / r["seconds"],
        "layout_built_s": built,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (the check), or cpu to rehearse it")
    p.add_argument("--tiny", action="store_true", help="tiny sizes: the whole check in seconds")
    p.add_argument("--out", default=os.path.join("report", "gpu_check"), help="where the results files go")
    p.add_argument("--budget", type=float, default=470.0, help="seconds for all stages together")
    p.add_argument(
        "--work",
        default=None,
        help="scratch folder (benchmark rows, the ~1 GB save_preds scenario), kept out of --out, which may be "
        "a folder whose every file is sent back (default: a fresh temporary folder, removed at the end)",
    )
    args = p.parse_args(argv)
    try:
        dev = resolve_device(args.device)
    except ValueError as e:
        sys.exit(f"gpu_check.py: --device: {e}")
    scratch = args.work is None
    args.work = tempfile.mkdtemp(prefix="gpu_check_") if scratch else os.path.abspath(args.work)
    os.makedirs(args.work, exist_ok=True)
    res = Results(os.path.abspath(args.out), args, dev)
    res.save()
    open(res.log, "w").close()  # this run's output only
    if args.tiny:
        res.data["notes"].append("tiny sizes: a rehearsal of the steps, not a measurement")
    if dev.type != "cuda":
        res.data["notes"].append(f"no CUDA device: ran on {dev}; no CUDA line ran")
    if not args.tiny:
        res.data["notes"].append(
            "MICO's data sizes; where a benchmark row says 'N of M epochs' the epochs were cut for the time "
            "budget and its models/min at full epochs are scaled linearly; its model count is in the row"
        )
    try:
        run_tests(res)
        res.save()
        run_bench(res, args)
        run_save_preds(res, args)
    finally:
        if scratch:
            shutil.rmtree(args.work, ignore_errors=True)
    res.data["complete"] = True
    res.save()
    print(render(res.data), end="")
    print(f"results: {os.path.join(res.out_dir, 'gpu_check.json')}, gpu_check.txt and gpu_check.log beside it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
