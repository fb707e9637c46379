"""Only DP training needs opacus: without it, non-private training, caching and every attack run,
and a DP run stops at once with one line naming the package and the fix (a GPU image may lack it).

One Python process where ``import opacus`` fails (a package of that name that raises ImportError
comes first on its path) runs the scripts' own ``main()``s, in the order a user would."""

import json
import os
import subprocess
import sys

from tests.conftest import ROOT

DRIVER = r"""
import json, runpy, sys
import torch
torch.set_num_threads(1)
try:
    import opacus
    sys.exit("the opacus blocker did not block")
except ImportError:
    pass
import download_files, run_lira_mia, save_preds, train_shadows
from models.batched import train_batched
from models.train import recipe_for, train_model

data, cache, report, fresh = sys.argv[1:5]
common = ["--challenge", "purchase100", "--data-dir", data]
out = {}
out["synthetic"] = download_files.main(common + [
    "--synthetic", "--scenario", "purchase100_inf", "--n-points", "600", "--len-training", "300",
    "--n-train", "4", "--n-dev", "1", "--n-final", "1", "--epochs", "1", "--device", "cpu", "--seed", "3"])
out["save_preds"] = save_preds.main(common + ["--cache-dir", cache])
out["compare"] = run_lira_mia.main(common + ["--cache-dir", cache, "--report-dir", report, "--compare"])
out["lira"] = run_lira_mia.main(common + ["--cache-dir", cache, "--report-dir", report, "--evaluate"])
out["train_shadows"] = train_shadows.main(
    common + ["--scenario", "purchase100_inf", "--n", "2", "--epochs", "1", "--device", "cpu"])
x, y = torch.rand(64, 600), torch.randint(0, 100, (64,))
for name, train in [
    ("train_model_dp", lambda r: train_model("purchase100", r, x, y)),
    ("train_batched_dp", lambda r: train_batched("purchase100", r, x, y, [range(64)], [0], device="cpu")),
]:
    try:
        train(recipe_for("purchase100", "lo", epochs=1))
        out[name] = "trained"
    except ImportError as e:
        out[name] = f"{type(e).__name__}: {e}"
sys.argv = ["download_files.py"] + common[:2] + ["--data-dir", fresh, "--synthetic", "--scenario", "purchase100_lo"]
try:
    runpy.run_path("download_files.py", run_name="__main__")
except SystemExit as e:
    out["dp_script_exit"] = e.code
print("RESULT " + json.dumps(out))
"""


def test_everything_but_dp_training_runs_without_opacus(tmp_path):
    blocker = tmp_path / "blocker" / "opacus"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('opacus is blocked in this test')\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(blocker.parent), ROOT])}
    folders = [str(tmp_path / name) for name in ("data", "cache", "report", "fresh")]
    run = subprocess.run(
        [sys.executable, "-c", DRIVER, *folders], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stdout[-3000:] + run.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT ") :])
    for step in ("synthetic", "save_preds", "compare", "lira", "train_shadows"):
        assert out[step] == 0, (step, out, run.stderr[-3000:])
    assert os.listdir(tmp_path / "cache") and os.path.exists(tmp_path / "report" / "purchase100" / "report.md")
    for name in ("train_model_dp", "train_batched_dp"):
        assert out[name].startswith("OpacusMissing: DP training needs the package opacus"), out[name]
    # The script's one line: the package, why, and the fix; nothing of the DP scenario was built.
    code = out["dp_script_exit"]
    assert code == 1, code
    (line,) = [s for s in run.stderr.splitlines() if "opacus" in s]
    assert line.startswith("download_files.py: error: DP training needs the package opacus")
    assert "pip install 'opacus>=1.5'" in line and "--find-links .whl" in line and "Traceback" not in run.stderr
    assert not os.path.exists(tmp_path / "fresh" / "purchase100" / "purchase100_lo")
