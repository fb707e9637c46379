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

Before the first stage: the wheels pinned in bench/gpu_wheels.txt (opacus: the GPU image lacks
it and reaches no registry) are pip-installed offline from ``--wheels`` (``.whl/``, filled by ``make
gpu-wheels``) when that folder exists, into the scratch folder, first on the path of this process
and of every stage; then every module the stages import is imported once, and a missing one stops
the check in one line naming it and the fix.

Each stage runs under its own limit, less the shares of the budget reserved for the stages after
it (``RESERVE_SHARE``: the CNN cases, the least certain, and save_preds), so that an earlier stage
that runs long cannot starve them.

Results go to ``<out>/gpu_check.json`` and ``<out>/gpu_check.txt``, rewritten after every stage
with ``"state": "incomplete"`` until the last one ends; then ``"complete"``, or ``"skipped"`` where
the CUDA tests were skipped (no CUDA: a rehearsal of the steps, not a check of the CUDA path).
Every stage's whole output goes to ``<out>/gpu_check.log``; scratch files go to ``--work``, never
to ``<out>``. ``--tiny`` shrinks everything to seconds, so that ``--device cpu --tiny`` runs the
whole check on a CPU (tests/test_gpu_check.py does).

    python bench/gpu_check.py                      # on the GPU machine: make gpu-check
    python bench/gpu_check.py --device cpu --tiny  # the same steps on a CPU: says "skipped"
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
WHEELS_FILE = os.path.join("bench", "gpu_wheels.txt")  # the pins, relative to ROOT
IMPORT_FIX = (
    "run 'make gpu-wheels' where pip reaches PyPI and bring .whl/ along (for the device machine: carry "
    f"['.whl'], docs/gpu.md), or pip install it; a package not pinned in {WHEELS_FILE} belongs there"
)

try:  # the check's own imports; those of its stages are checked in main(), before the first one
    import numpy as np
    import torch

    from challenges.fileio import write_text
    from challenges.layout import ModelDir
    from challenges.scenario import scenario_points
    from challenges.tracks import LEN_CHALLENGE, PHASES, ChallengeParams, get_track, load_params, save_params
    from models.loading import build_model, resolve_device
    from models.train import TrainResult
    from production.folders import model_seeds, seeded_job, write_folder
    from production.synthetic import make_purchase_like, write_cifar_batches, write_purchase_csv
except ImportError as e:
    sys.exit(f"gpu_check.py: cannot import {e.name} ({' '.join(str(e).split())}): {IMPORT_FIX}")

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
# Shares of the budget reserved for a stage while the stages before it run (each of those stops
# where it would eat into them): the CNN cases, whose sizes are the least certain, and save_preds.
RESERVE_SHARE = {"cifar10_inf": 0.2, "cifar10_lo": 0.2, "save_preds": 0.2}
SAVE_PREDS_MIN = 30  # s: with less left, the last stage is skipped (building its scenario takes ~12 s)
# Distribution name -> module name, where they differ (the import check).
MODULE_OF = {"scikit-learn": "sklearn", "opt-einsum": "opt_einsum"}


def read_pins(path: str = os.path.join(ROOT, WHEELS_FILE)) -> list[tuple[str, str, str]]:
    """(name, version, requirement line) of every wheel pinned in ``path`` (``name==version``,
    optionally ``--hash=...``; comments and blank lines skipped)."""
    pins = []
    for line in open(path):
        line = line.split("#", 1)[0].strip()
        if line:
            m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9_.-]*)==([^\s;]+)(\s+--hash=sha256:[0-9a-f]{64})*", line)
            if not m:
                raise ValueError(f"{path}: expected 'name==version [--hash=sha256:...]', got {line!r}")
            pins.append((m.group(1), m.group(2), line))
    return pins


def stage_modules() -> list[str]:
    """Every module the stages import that is not ours: requirements.txt's packages, the pinned
    wheels, pytest."""
    lines = [line.split("#", 1)[0].strip() for line in open(os.path.join(ROOT, "requirements.txt"))]
    names = [re.match(r"[A-Za-z0-9_.-]+", line).group(0) for line in lines if line]
    names += [name for name, _, _ in read_pins()] + ["pytest"]
    return list(dict.fromkeys(MODULE_OF.get(n, n.replace("-", "_")) for n in names))


def install_wheels(wheel_dir: str, site: str, pins_file: str = os.path.join(ROOT, WHEELS_FILE)) -> list[str]:
    """pip-install the wheels pinned in ``pins_file`` offline (no index, no dependencies) from
    ``wheel_dir`` into ``site`` and put ``site`` first on this process's path and its children's
    (PYTHONPATH); returns the installed requirement lines. Exits in one line if pip fails."""
    pins = [line for _, _, line in read_pins(pins_file)]
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
    cmd += ["--no-cache-dir", "--upgrade", "--find-links", wheel_dir, "--target", site]
    cmd += ["-r", pins_file]  # a requirements file: pip checks each wheel's hash
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        last = ([line for line in r.stderr.splitlines() if line.strip()] or ["no output"])[-1]
        sys.exit(
            f"gpu_check.py: installing {WHEELS_FILE} offline from {wheel_dir} failed ({' '.join(last.split())}): "
            "rerun 'make gpu-wheels' where pip reaches PyPI (docs/gpu.md)"
        )
    sys.path.insert(0, site)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (site, os.environ.get("PYTHONPATH")) if p)
    importlib.invalidate_caches()
    return pins


def check_imports(modules: list[str]) -> dict:
    """Import every module once; {module: version}. Exits in one line naming each that fails."""
    versions, failed = {}, []
    for name in modules:
        try:
            versions[name] = getattr(importlib.import_module(name), "__version__", "?")
        except Exception as e:  # ImportError, or a package broken against this torch
            failed.append(f"{name} ({' '.join(str(e).split())})")
    if failed:
        sys.exit(f"gpu_check.py: cannot import {', '.join(failed)}: {IMPORT_FIX}")
    return versions


def stage_limit(stage: str, own: float, left: float, order: list[str], budget: float) -> float:
    """Seconds ``stage`` may run: its own limit, less what would eat into the shares reserved for
    the stages after it in ``order`` (RESERVE_SHARE of ``budget``)."""
    later = order[order.index(stage) + 1 :]
    return min(own, left - budget * sum(RESERVE_SHARE.get(s, 0.0) for s in later))


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
            "state": "incomplete",  # then "complete", or "skipped" where the CUDA tests were skipped
            "complete": False,
            "device": str(dev),
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
            "tiny": args.tiny,
            "budget_s": args.budget,
            "torch": torch.__version__,
            "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
            "wheels": [],
            "packages": {},
            "tests": None,
            "bench": [],
            "save_preds": None,
            "notes": [],
        }

    def left(self) -> float:
        return self.data["budget_s"] - (time.perf_counter() - self.start)

    def limit(self, stage: str, own: float, order: list[str]) -> float:
        return stage_limit(stage, own, self.left(), order, self.data["budget_s"])

    def end(self) -> None:
        """Every stage ran: "skipped" where the CUDA tests were all skipped, else "complete"."""
        t = self.data["tests"]
        skipped = t is not None and "skipped" in t["summary"] and not re.search(r"passed|failed|error", t["summary"])
        self.data["state"] = "skipped" if skipped else "complete"
        self.data["complete"] = not skipped

    def save(self) -> None:
        self.data["elapsed_s"] = round(time.perf_counter() - self.start, 1)
        os.makedirs(self.out_dir, exist_ok=True)
        write_text(os.path.join(self.out_dir, "gpu_check.json"), json.dumps(self.data, indent=1) + "\n")
        write_text(os.path.join(self.out_dir, "gpu_check.txt"), render(self.data))


def render(d: dict) -> str:
    """The human-readable results."""
    on_cuda = d["device"].startswith("cuda")
    state = {
        "complete": "complete" if on_cuda else f"complete as a rehearsal on {d['device']} (no CUDA line ran)",
        "skipped": "SKIPPED: every stage ran, but the CUDA tests were skipped (no CUDA here), so the CUDA path "
        "was not checked",
    }.get(d.get("state"), "INCOMPLETE (stopped or still running)")
    out = [
        f"gpu_check on {d['device']} ({d['device_name']}), torch {d['torch']}, {d['started_utc']} UTC: {state}, "
        f"{d.get('elapsed_s', 0)} s of a {d['budget_s']} s budget" + (", tiny sizes" if d["tiny"] else ""),
    ]
    if d.get("packages"):
        wheels = f" (from .whl: {', '.join(d['wheels'])})" if d.get("wheels") else ""
        out.append("packages: " + ", ".join(f"{k} {v}" for k, v in d["packages"].items()) + wheels)
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


def run_tests(res: Results, order: list[str]) -> None:
    print("== CUDA tests (tests/test_gpu.py)", flush=True)
    r = run_streaming(
        [sys.executable, "-m", "pytest", "-q", "-rfEs", "--tb=short", "-p", "no:cacheprovider", "tests/test_gpu.py"],
        res.limit("tests", TESTS_LIMIT, order),
        res.log,
    )
    summary = next((line.strip("= ") for line in reversed(r["lines"]) if " in " in line), "no summary")
    if r["rc"] is None:
        summary = f"stopped after {r['seconds']} s: {summary}"
    elif "skipped" in summary and "passed" not in summary:
        summary += " (no CUDA here: no CUDA line ran)"
    res.data["tests"] = {"rc": r["rc"], "summary": summary, "seconds": r["seconds"], "tail": r["lines"][-30:]}


def stage_order(args) -> list[str]:
    """The stages in the order they run: the tests, the benchmark's cases, save_preds."""
    return ["tests", *(TINY_PLAN if args.tiny else FULL_PLAN), "save_preds"]


def run_bench(res: Results, args) -> None:
    print("== training benchmark (bench/bench_train.py)", flush=True)
    plan = TINY_PLAN if args.tiny else FULL_PLAN
    for case, (models, epochs, limit) in plan.items():
        limit = res.limit(case, limit, stage_order(args))
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


def run_check(args, dev) -> int:
    """The wheels and the import check, then every stage, the results saved after each."""
    wheel_dir = os.path.join(ROOT, args.wheels)  # relative to the repository
    wheels = install_wheels(wheel_dir, os.path.join(args.work, "site")) if os.path.isdir(wheel_dir) else []
    packages = check_imports(stage_modules())
    res = Results(os.path.abspath(args.out), args, dev)
    res.data["wheels"] = [line.split()[0] for line in wheels]
    res.data["packages"] = packages
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
    run_tests(res, stage_order(args))
    res.save()
    run_bench(res, args)
    run_save_preds(res, args)
    res.end()
    res.save()
    print(render(res.data), end="")
    print(f"results: {os.path.join(res.out_dir, 'gpu_check.json')}, gpu_check.txt and gpu_check.log beside it")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (the check), or cpu to rehearse it")
    p.add_argument("--tiny", action="store_true", help="tiny sizes: the whole check in seconds")
    p.add_argument("--out", default=os.path.join("report", "gpu_check"), help="where the results files go")
    p.add_argument("--budget", type=float, default=470.0, help="seconds for all stages together")
    p.add_argument(
        "--work",
        default=None,
        help="scratch folder (benchmark rows, the ~1 GB save_preds scenario, the installed wheels), kept out of "
        "--out, which may be a folder whose every file is sent back (default: a fresh temporary folder, removed "
        "at the end)",
    )
    p.add_argument(
        "--wheels",
        default=".whl",
        help=f"folder of wheels (make gpu-wheels; relative to the repository): when it exists, those pinned in "
        f"{WHEELS_FILE} are installed from it offline into the scratch folder before the first stage",
    )
    args = p.parse_args(argv)
    try:
        dev = resolve_device(args.device)
    except ValueError as e:
        sys.exit(f"gpu_check.py: --device: {e}")
    scratch = args.work is None
    args.work = tempfile.mkdtemp(prefix="gpu_check_") if scratch else os.path.abspath(args.work)
    os.makedirs(args.work, exist_ok=True)
    try:
        return run_check(args, dev)
    finally:
        if scratch:
            shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
