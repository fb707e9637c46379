"""A synthetic challenge's identity (challenge.json): claimed under the build lock, so builds with
other settings never mix; where its secret came from, and the warnings of a test secret; fixes that
work for a malformed or missing challenge.json; the --synthetic flags checked before anything is written."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

import download_files
import run_lira_mia
import save_preds
from challenges import layout, report
from challenges.fileio import locked
from challenges.tracks import TEST_SECRET_ENV, challenge_json_path, load_params
from production.folders import model_seeds
from production.synthetic import build_synthetic
from tests.conftest import ROOT, SMALL, run_script

TRACK, SCENARIO = "purchase100", "purchase100_inf"
# One tiny scenario: a model trains in a fraction of a second.
TINY_ARGS = ["--n-points", "600", "--len-training", "300", "--n-dev", "1", "--n-final", "1", "--epochs", "1"]
TINY_ARGS += ["--scenario", SCENARIO, "--device", "cpu", "--threads", "1"]


def _build_argv(data_dir, *extra):
    return ["--challenge", TRACK, "--data-dir", str(data_dir), "--synthetic", *TINY_ARGS, *extra]


def _one_line(lines, *must):
    assert len(lines) == 1, lines
    for m in must:
        assert m in lines[0], (m, lines[0])


# ---------------------------------------------------------------------------------------------
# One identity per challenge: settings compared under the lock, the second run refused by name
# ---------------------------------------------------------------------------------------------


def test_a_rerun_with_other_settings_is_refused_by_name(tmp_path, capsys):
    argv = _build_argv(tmp_path, "--n-train", "2")
    assert run_script(download_files.main, "download_files.py", argv, capsys)[0] == 0
    path = challenge_json_path(str(tmp_path), TRACK)
    before = open(path).read()
    for extra, named in [
        (["--seed", "5"], "--seed 0 (asked: 5)"),
        (["--len-training", "310"], "--len-training 300 (asked: 310)"),
        (["--n-train", "3"], "--n-train 2 (asked: 3)"),
        (["--epochs", "2"], "--epochs 1 (asked: 2)"),
    ]:
        code, lines = run_script(download_files.main, "download_files.py", [*argv, *extra], capsys)
        assert code == 1
        _one_line(lines, path, "a different challenge is already there", named, f"delete {tmp_path / TRACK}")
    assert open(path).read() == before
    assert run_script(download_files.main, "download_files.py", argv, capsys)[0] == 0  # its own settings: resumed


def _blocked_on(lock_path: str) -> int:
    """How many flock requests wait for ``lock_path`` (Linux's /proc/locks marks them '->')."""
    ino = f":{os.stat(lock_path).st_ino} "
    with open("/proc/locks") as f:
        return sum("->" in line and ino in line for line in f)


@pytest.mark.skipif(not os.path.exists("/proc/locks"), reason="needs Linux's /proc/locks")
def test_two_concurrent_builds_with_other_seeds_do_not_mix(tmp_path):
    """Two builds started together on one --data-dir: the challenge.json check ran outside
    .build.lock, so both passed it, and each wrote its own challenge.json over a mix of both runs'
    models. The test holds the lock until both runs wait for it, so they meet at the worst moment:
    one builds, the other is refused in one line naming --seed and challenge.json."""
    track_dir = tmp_path / TRACK
    track_dir.mkdir()
    lock = str(track_dir / ".build.lock")
    procs = []
    with locked(lock):
        for seed in ("1", "2"):
            argv = [sys.executable, "download_files.py", *_build_argv(tmp_path, "--n-train", "1", "--seed", seed)]
            procs.append(subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        deadline = time.monotonic() + 120
        while _blocked_on(lock) < 2:
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            assert time.monotonic() < deadline, "the two builds never both waited for the lock"
            time.sleep(0.05)
    results = [(p.wait(timeout=300), p.communicate()[1]) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    refused = next(err for code, err in results if code == 1).strip().splitlines()
    path = challenge_json_path(str(tmp_path), TRACK)
    assert len(refused) == 1 and path in refused[0] and "--seed" in refused[0], refused
    winner = next(i for i, (code, _) in enumerate(results) if code == 0)
    params = load_params(str(tmp_path), TRACK)
    assert params.seed == winner + 1
    # Every model is the winner's: the train model's published seed is derived from its run seed.
    seed_file = track_dir / SCENARIO / "train" / "model_0" / "seed_challenge"
    assert int(seed_file.read_text()) == model_seeds(params.seed, 1, 0)[0]
    assert [md.key for md in layout.models(str(tmp_path), TRACK, SCENARIO)] == [
        f"{SCENARIO}/{phase}/model_{i}" for i, phase in enumerate(("train", "dev", "final"))
    ]


# ---------------------------------------------------------------------------------------------
# Where the secret came from, and what says so
# ---------------------------------------------------------------------------------------------


def test_the_secret_origin_is_recorded_and_a_test_secret_is_warned_of(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(TEST_SECRET_ENV, "ab" * 32)
    code, lines = run_script(
        download_files.main, "download_files.py", _build_argv(tmp_path / "t", "--n-train", "2"), capsys
    )
    path = challenge_json_path(str(tmp_path / "t"), TRACK)
    assert code == 0 and json.load(open(path))["training_secret"] == "test"
    warning = [ln for ln in lines if "warning" in ln]
    _one_line(warning, "download_files.py: warning:", path, "test secret", "not private")
    monkeypatch.delenv(TEST_SECRET_ENV)
    code, lines = run_script(
        download_files.main, "download_files.py", _build_argv(tmp_path / "r", "--n-train", "2"), capsys
    )
    assert code == 0 and json.load(open(challenge_json_path(str(tmp_path / "r"), TRACK)))["training_secret"] == "random"
    assert not any("warning" in ln for ln in lines)
    assert load_params(str(tmp_path / "r"), TRACK).private_targets
    assert not load_params(str(tmp_path / "t"), TRACK).private_targets


def test_reports_of_a_test_secret_challenge_say_its_targets_are_not_private(tmp_path, monkeypatch, capsys):
    """--evaluate's printed scores and --compare's report.md open with the warning; a challenge with
    a random secret has none."""
    monkeypatch.setenv(TEST_SECRET_ENV, "cd" * 32)
    data = tmp_path / "d"
    assert download_files.main(_build_argv(data, "--n-train", "2")) == 0
    base = ["--challenge", TRACK, "--data-dir", str(data), "--cache-dir", str(tmp_path / "c")]
    assert save_preds.main([*base, "--device", "cpu"]) == 0
    capsys.readouterr()
    assert run_lira_mia.main([*base, "--report-dir", str(tmp_path / "r"), "--evaluate"]) == 0
    out = capsys.readouterr().out
    assert "warning: " + challenge_json_path(str(data), TRACK) in out and "not private" in out
    text = report.scores_text({SCENARIO: {}}, note=None)
    assert "warning" not in text
    md = tmp_path / "md"
    path = report.write_compare_report(str(md), {"a": {SCENARIO: {}}}, {}, note="built with the test secret")
    assert open(path).read().splitlines()[2] == "**Warning:** built with the test secret"


def test_challenge_json_without_the_new_fields_still_reads(small_copy, capsys):
    """A challenge.json written before the model counts, --epochs and the secret's origin were
    recorded: read as before (origin not known, no warning), and a rebuild with its settings resumes."""
    data_dir, cache_dir = small_copy
    path = challenge_json_path(data_dir, TRACK)
    d = json.load(open(path))
    for key in ("models", "epochs", "training_secret"):
        d.pop(key)
    open(path, "w").write(json.dumps(d))
    params = load_params(data_dir, TRACK)
    assert params.models is None and params.training_secret is None and params.private_targets
    opts = {k: v for k, v in SMALL.items()}
    build_synthetic(data_dir, TRACK, device="cpu", **opts)  # no refusal: counts were not recorded
    assert json.load(open(path)) == d  # left as it was
    with pytest.raises(ValueError, match=r"--seed 3 \(asked: 4\)"):
        build_synthetic(data_dir, TRACK, device="cpu", **{**opts, "seed": 4})


# ---------------------------------------------------------------------------------------------
# A malformed or missing challenge.json: the fix each error gives works
# ---------------------------------------------------------------------------------------------


def test_a_synthetic_challenge_json_lost_gives_a_fix_that_works(tmp_path, capsys):
    data = tmp_path / "d"
    argv = _build_argv(data, "--n-train", "2")
    assert download_files.main(argv) == 0
    path = challenge_json_path(str(data), TRACK)
    base = ["--challenge", TRACK, "--data-dir", str(data), "--cache-dir", str(tmp_path / "c"), "--device", "cpu"]
    open(path, "w").write("{not json")
    code, lines = run_script(save_preds.main, "save_preds.py", base, capsys)
    _one_line(lines, path, "malformed", f"delete {data / TRACK}", "download_files.py --synthetic")
    # Regenerating in place was the old advice, and it is refused; deleting the file alone gave
    # "inconsistent sizes" naming no file: it is named now, with the same fix.
    code, lines = run_script(download_files.main, "download_files.py", argv, capsys)
    assert code == 1 and path in lines[-1]
    os.remove(path)
    code, lines = run_script(save_preds.main, "save_preds.py", base, capsys)
    _one_line(lines, path, "missing", "synthetic challenge", f"delete {data / TRACK}")
    code, lines = run_script(download_files.main, "download_files.py", argv, capsys)
    assert code == 1 and path in lines[-1] and f"delete {data / TRACK}" in lines[-1]
    shutil.rmtree(data / TRACK)  # the fix
    assert download_files.main(argv) == 0 and save_preds.main(base) == 0


def test_a_real_challenge_json_malformed_gives_a_fix_that_works(tmp_path):
    """The real challenge has no challenge.json: deleting a malformed one gives MICO's constants."""
    track_dir = tmp_path / TRACK
    track_dir.mkdir()
    path = challenge_json_path(str(tmp_path), TRACK)
    open(path, "w").write("[]")
    with pytest.raises(ValueError, match="delete it: the real challenge needs none") as e:
        load_params(str(tmp_path), TRACK)
    assert "--synthetic" not in str(e.value)
    os.remove(path)
    assert load_params(str(tmp_path), TRACK).len_training == 150_000


# ---------------------------------------------------------------------------------------------
# --synthetic flags refused before anything is written
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, flag",
    [
        (["--n-train", "0"], "--n-train"),
        (["--n-dev", "0"], "--n-dev"),
        (["--n-points", "-5"], "--n-points"),
        (["--n-train", "2", "--device", "foo"], "--device"),
    ],
)
def test_bad_synthetic_flags_are_usage_errors_before_any_file(tmp_path, capsys, extra, flag):
    code, lines = run_script(download_files.main, "download_files.py", _build_argv(tmp_path / "d", *extra), capsys)
    assert code == 2 and flag in lines[-1]
    assert not (tmp_path / "d").exists()
