"""Designed shadow models end to end: train_shadows.py --design balanced, resume, shards, concurrent
and killed runs, and every attack using them (LiRA against the slow per-point reference)."""

import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import run_lira_mia
import save_preds
import train_shadows
from attacks.lira import signal_from_phi
from challenges import layout
from challenges.datasets import load_dataset
from challenges.membership import TRAINING_SET, read_training_set
from challenges.scenario import challenge_pool, load_scenario, scenario_points
from challenges.tracks import load_params
from tests.conftest import ROOT, run_script
from tests.test_lira import lira_reference

TRACK, SCENARIO = "purchase100", "purchase100_inf"


def _train(data_dir, *extra):
    return train_shadows.main(
        [
            "--challenge",
            TRACK,
            "--scenario",
            SCENARIO,
            "--data-dir",
            data_dir,
            "--design",
            "balanced",
            "--epochs",
            "1",
            "--device",
            "cpu",
            *extra,
        ]
    )


def _shadows(data_dir):
    return layout.models(data_dir, TRACK, SCENARIO, ("shadow",))


@pytest.fixture(scope="module")
def designed(small_challenge, tmp_path_factory):
    """The small challenge plus 4 balanced shadows (trained in two shards), cached."""
    root = tmp_path_factory.mktemp("designed")
    data_dir, cache_dir = str(root / "data"), str(root / "cache")
    subprocess.run(["cp", "-a", small_challenge, data_dir], check=True)
    assert _train(data_dir, "--n", "4", "--shard", "1/2") == 0
    assert [md.model_id for md in _shadows(data_dir)] == [1, 3]
    assert _train(data_dir, "--n", "4", "--shard", "0/2") == 0
    assert (
        save_preds.main(["--challenge", TRACK, "--data-dir", data_dir, "--cache-dir", cache_dir, "--device", "cpu"])
        == 0
    )
    return data_dir, cache_dir


def test_exact_design(designed):
    data_dir, _ = designed
    params = load_params(data_dir, TRACK)
    n = len(load_dataset(params))
    _, _, pool = scenario_points(data_dir, TRACK, SCENARIO, params, n)
    sets = [read_training_set(md.path, n, params.len_training) for md in _shadows(data_dir)]
    assert len(sets) == 4 and all(len(s) == params.len_training for s in sets)
    member = np.stack([np.isin(pool, s) for s in sets])
    assert (member.sum(axis=0) == 2).all()  # every challenge point IN for exactly half
    for md in _shadows(data_dir):
        assert {"model.pt", TRAINING_SET, "design.json", "accuracy"} <= set(os.listdir(md.path))
        assert not {"seed_challenge", "solution.csv"} & set(os.listdir(md.path))


def test_rerun_trains_nothing_and_growth_keeps_the_first(designed, capsys, tmp_path):
    data_dir, _ = designed
    assert _train(data_dir, "--n", "4") == 0
    assert "4 of 4 shadow model(s) of this shard already done" in capsys.readouterr().out
    copy = str(tmp_path / "data")
    subprocess.run(["cp", "-a", data_dir, copy], check=True)
    before = {md.model_id: open(md.model_file, "rb").read() for md in _shadows(copy)}
    assert _train(copy, "--n", "6") == 0  # f = 1/2: pairs, the design grows
    after = {md.model_id: open(md.model_file, "rb").read() for md in _shadows(copy)}
    assert sorted(after) == list(range(6)) and all(after[k] == before[k] for k in before)
    with pytest.raises(ValueError, match="another design"):
        _train(copy, "--n", "6", "--seed", "5")


def test_mico_extras_leave_the_balanced_design_alone(designed, tmp_path):
    """MICO-random extras bring challenge points of their own; a balanced design ignores them and still grows."""
    copy = str(tmp_path / "data")
    subprocess.run(["cp", "-a", designed[0], copy], check=True)
    params = load_params(copy, TRACK)
    n = len(load_dataset(params))
    pool = challenge_pool(copy, TRACK, SCENARIO, params, n)
    assert _train(copy, "--design", "mico", "--n", "2", "--first-id", "200") == 0
    extras = [md for md in layout.models(copy, TRACK, SCENARIO, ("train",)) if md.model_id >= 200]
    assert [md.model_id for md in extras] == [200, 201] and all(md.extra for md in extras)
    own = [md for md in layout.models(copy, TRACK, SCENARIO, ("train", "dev", "final")) if md.model_id < 200]
    assert len(own) == 6 and not any(md.extra for md in own)
    _, _, union = scenario_points(copy, TRACK, SCENARIO, params, n)
    assert len(union) > len(pool) and np.array_equal(challenge_pool(copy, TRACK, SCENARIO, params, n), pool)
    assert _train(copy, "--n", "6") == 0  # the design of 4 grows: same pool, same identity
    sets = [read_training_set(md.path, n, params.len_training) for md in _shadows(copy)]
    assert (np.stack([np.isin(pool, s) for s in sets]).sum(axis=0) == 3).all()


def test_a_single_pair_grows(small_challenge, tmp_path):
    """A design that is one group (here one pair) grows by whole groups like any other."""
    copy = str(tmp_path / "data")
    subprocess.run(["cp", "-a", small_challenge, copy], check=True)
    assert _train(copy, "--n", "2") == 0
    before = {md.model_id: open(md.model_file, "rb").read() for md in _shadows(copy)}
    assert _train(copy, "--n", "4") == 0
    after = {md.model_id: open(md.model_file, "rb").read() for md in _shadows(copy)}
    assert sorted(after) == [0, 1, 2, 3] and all(after[k] == before[k] for k in before)


def test_attacks_use_designed_shadows(designed, tmp_path):
    data_dir, cache_dir = designed
    params = load_params(data_dir, TRACK)
    data = load_scenario(data_dir, cache_dir, TRACK, SCENARIO, params, params.n_points)
    n_train = len(data.phase_rows("train"))
    assert data.n_shadows == n_train + 4 and [md.phase for md in data.models[: data.n_shadows]][-1] == "shadow"
    rows = np.concatenate([data.phase_rows(p) for p in ("train", "dev", "final")])
    exclude = np.where(rows < n_train, rows, -1)
    sig = signal_from_phi(data.phi, "prob")  # the default signal, as run_lira_mia's LiRA uses it
    own = sig[rows[:, None], data.challenge[rows]]
    for online in (False, True):
        fast = run_lira_mia.make_attack(run_lira_mia.AttackOptions(online_attack=online))(data, rows, exclude)
        slow = lira_reference(
            own,
            sig[: data.n_shadows],
            data.shadow_in,
            data.challenge[rows],
            exclude,
            online=online,
            global_variance=False,
        )
        np.testing.assert_allclose(fast, slow, rtol=1e-9, atol=1e-12)
    for attack in ("rmia", "calibrated", "classifier", "mico-winner"):
        assert (
            run_lira_mia.main(
                [
                    "--challenge",
                    TRACK,
                    "--data-dir",
                    data_dir,
                    "--cache-dir",
                    cache_dir,
                    "--scenario",
                    SCENARIO,
                    "--attack",
                    attack,
                    "--evaluate",
                    "--report-dir",
                    str(tmp_path),
                    "--rmia-population",
                    "200",
                ]
            )
            == 0
        )


def test_bad_training_set_file_is_one_line(designed, tmp_path, capsys):
    data_dir, cache_dir = designed
    copy = str(tmp_path / "data")
    subprocess.run(["cp", "-a", data_dir, copy], check=True)
    path = os.path.join(_shadows(copy)[0].path, TRAINING_SET)
    with open(path, "r+b") as f:
        f.truncate(100)
    argv = ["--challenge", TRACK, "--data-dir", copy, "--cache-dir", cache_dir, "--scenario", SCENARIO]
    code, lines = run_script(run_lira_mia.main, "run_lira_mia.py", argv, capsys)
    line = lines[-1]  # after the progress bar
    assert code == 1 and line.startswith("run_lira_mia.py: ") and path in line and "train_shadows.py" in line


SLOW_TRAIN = """
import sys, time
import production.folders as folders
write = folders.write_folder
def slow_write(job, result):
    time.sleep(float(sys.argv[1]))  # a group is trained; its folders are not written yet
    return write(job, result)
folders.write_folder = slow_write
import train_shadows
from attacks.lira import signal_from_phi
sys.exit(train_shadows.main(sys.argv[2:]))
"""


def _start(pause, data_dir, *extra):
    argv = [
        "--challenge",
        TRACK,
        "--scenario",
        SCENARIO,
        "--data-dir",
        data_dir,
        "--design",
        "balanced",
        "--n",
        "4",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--parallel",
        "2",
        *extra,
    ]
    return subprocess.Popen(
        [sys.executable, "-c", SLOW_TRAIN, str(pause), *argv],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _state(data_dir):
    """{relative path: bytes} of every shadow file but the model weights, and the weights as tensors."""
    files, weights = {}, {}
    for md in _shadows(data_dir):
        for name in sorted(os.listdir(md.path)):
            p = os.path.join(md.path, name)
            if name == "model.pt":
                weights[md.name] = torch.load(p, weights_only=True)
            else:
                files[f"{md.name}/{name}"] = open(p, "rb").read()
    return files, weights


def _assert_same(data_dir, reference_dir):
    files, weights = _state(data_dir)
    ref_files, ref_weights = _state(reference_dir)
    assert files == ref_files and sorted(weights) == sorted(ref_weights)
    for name, sd in weights.items():  # retrained in a smaller group: equal up to float rounding
        for k, v in sd.items():
            torch.testing.assert_close(v, ref_weights[name][k], rtol=1e-5, atol=1e-6)
    assert glob.glob(os.path.join(data_dir, TRACK, SCENARIO, "shadow", ".model_*.partial")) == []


@pytest.mark.slow
def test_killed_run_resumes_and_concurrent_runs_split_the_work(designed, small_challenge, tmp_path):
    reference = designed[0]
    killed, shared = str(tmp_path / "killed"), str(tmp_path / "shared")
    for d in (killed, shared):
        subprocess.run(["cp", "-a", small_challenge, d], check=True)
    # killed part-way: after the first group's folders, during the second group's pause
    proc = _start(1.0, killed)
    try:
        deadline = time.monotonic() + 120
        while len(_shadows(killed)) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-500:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    assert 2 <= len(_shadows(killed)) < 4
    assert _train(killed, "--n", "4") == 0
    _assert_same(killed, reference)
    # two identical runs at once: both succeed, each model is trained once
    procs = [_start(0.3, shared), _start(0.3, shared)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-500:] for _, err in outs]
    trained = [int(out.split("shadow model(s) trained by this run")[0].rsplit(" ", 2)[-2]) for out, _ in outs]
    assert sum(trained) == 4
    _assert_same(shared, reference)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--n", "3"], "even"),
        (["--n", "4", "--fraction", "1"], "--fraction"),
        (["--n", "4", "--parallel", "0"], "--parallel"),
        (["--n", "4", "--shard", "2/2"], "shard"),
    ],
)
def test_bad_arguments_are_usage_errors(small_challenge, extra, message, capsys):
    with pytest.raises(SystemExit) as e:
        _train(small_challenge, *extra)
    assert e.value.code == 2 and message in capsys.readouterr().err
