"""save_zip.py packs only a whole submission: every scenario and every dev and final model of the
challenge's layout, each file as the last complete run wrote it, and every file that run listed
still there; --output never replaces a file of the challenge."""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import pytest

import run_lira_mia
import save_preds
import save_zip
from challenges import fileio, layout, submission
from challenges.tracks import challenge_json_path, scenario_names
from tests.conftest import ROOT, run_script

TRACK = "purchase100"


@pytest.fixture(scope="module")
def predicted(tiny_challenges, tmp_path_factory):
    """The tiny purchase100 challenge (3 scenarios x 2 dev + 2 final), cached and predicted by one run."""
    root = tmp_path_factory.mktemp("whole")
    data_dir, cache_dir = str(root / "data"), str(root / "cache")
    shutil.copytree(os.path.join(tiny_challenges, TRACK), os.path.join(data_dir, TRACK))
    base = ["--challenge", TRACK, "--data-dir", data_dir, "--cache-dir", cache_dir]
    assert save_preds.main([*base, "--device", "cpu"]) == 0
    assert run_lira_mia.main([*base, "--report-dir", str(root / "r"), "--attack", "loss"]) == 0
    return data_dir


@pytest.fixture
def tree(predicted, tmp_path):
    dst = str(tmp_path / "data")
    shutil.copytree(predicted, dst)
    return dst


def _zip(data_dir, capsys, out):
    return run_script(
        save_zip.main, "save_zip.py", ["--challenge", TRACK, "--data-dir", data_dir, "--output", out], capsys
    )


def _targets(data_dir, scenario, phase):
    return layout.models(data_dir, TRACK, scenario, (phase,))


def test_the_whole_set_is_zipped(tree, tmp_path, capsys):
    out = str(tmp_path / "sub.zip")
    code, _ = _zip(tree, capsys, out)
    assert code == 0 and len(zipfile.ZipFile(out).namelist()) == 3 * 4


def test_a_missing_scenario_is_refused_by_name(tree, tmp_path, capsys):
    """It wrote a 16-file zip and exited 0."""
    lo = os.path.join(tree, TRACK, "purchase100_lo")
    shutil.rmtree(lo)
    out = str(tmp_path / "sub.zip")
    code, lines = _zip(tree, capsys, out)
    assert code == 1 and not os.path.exists(out)
    assert lines[0].startswith(f"{lo}: missing; a submission needs all three scenarios")
    assert lines[-1].startswith("save_zip.py: 1 scenario or model folder(s) of the challenge missing")


def test_a_missing_dev_model_is_refused_by_name(tree, tmp_path, capsys):
    """It wrote a 23-file zip and exited 0. The synthetic challenge's counts say which ids exist."""
    gone = _targets(tree, "purchase100_hi", "dev")[0]
    shutil.rmtree(gone.path)
    code, lines = _zip(tree, capsys, str(tmp_path / "sub.zip"))
    assert code == 1 and len(lines) == 2
    assert lines[0].startswith(f"{gone.path}: missing (the layout has dev model_6..model_7 in every scenario")
    assert "challenge.json's model counts" in lines[0] and "download_files.py --synthetic" in lines[0]


def test_without_recorded_counts_the_scenarios_ids_give_the_layout(tree, tmp_path, capsys):
    """The real challenge (or a challenge.json from before the counts): a folder the other scenarios
    have, or a gap in a phase's ids, is missing."""
    path = challenge_json_path(tree, TRACK)
    d = json.load(open(path))
    del d["models"]
    open(path, "w").write(json.dumps(d))
    gone = _targets(tree, "purchase100_inf", "final")[1]
    shutil.rmtree(gone.path)
    code, lines = _zip(tree, capsys, str(tmp_path / "sub.zip"))
    assert code == 1 and lines[0].startswith(f"{gone.path}: missing (the layout has final model_8..model_9")
    assert "the other scenarios and ids" in lines[0]


def test_a_file_the_run_listed_and_is_gone_is_refused(tree, tmp_path, capsys):
    """The last final model removed from every scenario: no layout check can see it without the
    counts, but the run record lists its prediction file."""
    path = challenge_json_path(tree, TRACK)
    d = json.load(open(path))
    del d["models"]
    open(path, "w").write(json.dumps(d))
    gone = [_targets(tree, s, "final")[-1] for s in scenario_names(TRACK)]
    for md in gone:
        shutil.rmtree(md.path)
    code, lines = _zip(tree, capsys, str(tmp_path / "sub.zip"))
    assert code == 1 and len(lines) == 4
    assert {line.split(": ")[0] for line in lines[:-1]} == {md.prediction_file for md in gone}
    assert all(
        ": written by the last complete run_lira_mia.py run" in ln and ln.endswith("gone since") for ln in lines[:-1]
    )
    assert "not from one complete run" in lines[-1]


def test_not_from_run_lists_every_recorded_file_that_is_gone(tmp_path):
    record = {"run_id": "r1", "finished": "now", "files": {"purchase100_inf/dev/model_3/prediction.csv": "x"}}
    assert submission.not_from_run([], record) == []
    (msg,) = submission.not_from_run([], record, str(tmp_path))
    assert msg.startswith(str(tmp_path / "purchase100_inf" / "dev" / "model_3" / "prediction.csv"))


def test_run_lira_mia_says_which_scenarios_it_found(tree, tmp_path, capsys):
    shutil.rmtree(os.path.join(tree, TRACK, "purchase100_hi"))
    cache_dir = str(tmp_path / "cache")
    argv = ["--challenge", TRACK, "--data-dir", tree, "--cache-dir", cache_dir, "--device", "cpu"]
    assert save_preds.main(argv) == 0
    argv = ["--challenge", TRACK, "--data-dir", tree, "--cache-dir", cache_dir, "--report-dir", str(tmp_path / "r")]
    code, lines = run_script(run_lira_mia.main, "run_lira_mia.py", [*argv, "--attack", "loss"], capsys)
    assert code == 0
    (note,) = [ln for ln in lines if "warning" in ln]
    assert note.startswith(f"run_lira_mia.py: warning: {os.path.join(tree, TRACK)}: found purchase100_inf, ")
    assert "purchase100_lo only; purchase100_hi missing" in note


# ---------------------------------------------------------------------------------------------
# --output
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["predictions.json", "challenge.json", "purchase100_inf/dev/model_6/model.pt"])
def test_output_never_replaces_a_file_of_the_challenge(tree, capsys, name):
    target = os.path.join(tree, TRACK, name)
    before = open(target, "rb").read()
    code, lines = _zip(tree, capsys, target)
    assert code == 2 and "--output" in lines[-1] and "inside the challenge folder" in lines[-1]
    assert open(target, "rb").read() == before


def test_output_refuses_a_folder_and_a_file_that_is_not_a_zip(tree, tmp_path, capsys):
    code, lines = _zip(tree, capsys, str(tmp_path))
    assert code == 2 and "a folder; name the zip file" in lines[-1]
    other = tmp_path / "notes.txt"
    other.write_text("mine")
    code, lines = _zip(tree, capsys, str(other))
    assert code == 2 and "not a zip" in lines[-1] and other.read_text() == "mine"
    # A zip that an earlier save_zip.py wrote is replaced.
    out = str(tmp_path / "sub.zip")
    assert _zip(tree, capsys, out)[0] == 0 and _zip(tree, capsys, out)[0] == 0


# ---------------------------------------------------------------------------------------------
# What a killed writer leaves: removed by the next writer of the same file
# ---------------------------------------------------------------------------------------------

KILLED_WRITER = """
import sys, time
from challenges.fileio import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    open(tmp, "w").write("half")
    print("writing", flush=True)
    time.sleep(600)
"""


def _age(folder, seconds=60):
    t = time.time() - seconds
    os.utime(folder, (t, t))


def test_a_killed_writers_folder_is_removed_by_the_next_writer_a_live_ones_is_not(tmp_path):
    target = str(tmp_path / "prediction.csv")
    procs = [
        subprocess.Popen([sys.executable, "-c", KILLED_WRITER, target], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "writing"
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(timeout=30)
        leftovers = glob.glob(str(tmp_path / ".prediction.csv.*.tmp"))
        assert len(leftovers) == 2
        for folder in leftovers:
            _age(folder)
        fileio.write_text(target, "whole\n")
        (kept,) = glob.glob(str(tmp_path / ".prediction.csv.*.tmp"))  # the live writer's
        assert open(os.path.join(kept, "prediction.csv")).read() == "half"
        assert open(target).read() == "whole\n"
    finally:
        for p in procs:
            p.kill()
            p.communicate(timeout=30)
    _age(kept)
    fileio.write_text(target, "again\n")
    assert glob.glob(str(tmp_path / ".prediction.csv.*.tmp")) == []


def test_run_lira_mia_removes_a_killed_runs_temporary_prediction_folders(tree, tmp_path):
    """Folders as a run killed mid-write leaves them (no process holds them), beside the dev models'
    prediction.csv: the next run removes them; a lock file beside them stays."""
    mds = [md for s in scenario_names(TRACK) for md in layout.models(tree, TRACK, s, ("dev", "final"))]
    planted = []
    for md in mds[:3]:
        folder = os.path.join(md.path, ".prediction.csv.k1ll3d.tmp")
        os.makedirs(folder)
        open(os.path.join(folder, "prediction.csv"), "w").write("0.5,")
        _age(folder)
        planted.append(folder)
    lock = os.path.join(mds[0].path, ".prediction.csv.lock")
    open(lock, "w").close()
    cache_dir = str(tmp_path / "cache")
    base = ["--challenge", TRACK, "--data-dir", tree, "--cache-dir", cache_dir]
    assert save_preds.main([*base, "--device", "cpu"]) == 0
    assert run_lira_mia.main([*base, "--report-dir", str(tmp_path / "r"), "--attack", "loss"]) == 0
    assert not any(os.path.exists(p) for p in planted) and os.path.exists(lock)
