"""Designed shadow models end to end: train_shadows.py --design balanced, resume, shards, concurrent
and killed runs, and every attack using them (LiRA against the slow per-point reference)."""

import glob
import json
import os
import signal
import subprocess
import sys
import time
import warnings

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
from production.design import DESIGN_FILE, designed_jobs
from production.synthetic import build_synthetic
from tests.conftest import ROOT, SMALL, run_script
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
            "--threads",
            "1",
            *extra,
        ]
    )


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_thread):
    """Every run here on one thread, in-process and subprocess alike: MKL may use fewer threads than
    asked on a busy machine, and training sums then round another way (--threads 1 in each run;
    single_thread gives this process its thread count back after the module)."""
    yield


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
    # training order (attacks.order): a designed shadow's pool points come first as a block, never as a first batch
    assert data.shadow_first[:n_train].any() and not data.shadow_first[n_train:].any()
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
        extra = ["--rmia-population", "200"] if attack == "rmia" else []
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
                    *extra,
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
        "--threads",
        "1",
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
        for k, v in sd.items():  # CI once saw 1.8e-5 on a weight of 0.03 (the sets are compared above)
            torch.testing.assert_close(v, ref_weights[name][k], rtol=1e-4, atol=1e-4)
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
        (["--n", "3"], "--n must be a multiple of 2"),
        (["--n", "4", "--fraction", "1"], "--fraction"),
        (["--n", "4", "--parallel", "0"], "--parallel"),
        (["--n", "4", "--shard", "2/2"], "shard"),
        # degenerate shares: every shadow would hold every challenge point, or the share quietly moves
        (["--n", "2", "--fraction", "0.75"], "--n must be a multiple of 4"),
        (["--n", "4", "--fraction", "0.9"], "--n must be a multiple of 10"),
        (["--n", "6", "--fraction", "0.75"], "--n must be a multiple of 4"),
        (["--n", "4", "--fraction", "0.9999"], "no OUT"),
        # numbers out of range name their flag
        (["--n", "0"], "--n"),
        (["--n", "4", "--batch-size", "0"], "--batch-size"),
        (["--n", "4", "--batch-size", "-8"], "--batch-size"),
        (["--n", "4", "--epochs", "0"], "--epochs"),
        (["--n", "4", "--lr", "-0.1"], "--lr"),
        (["--n", "4", "--seed", "-1"], "--seed"),
        (["--n", "4", "--threads", "0"], "--threads"),
        (["--design", "mico", "--n", "2", "--first-id", "-3"], "--first-id"),
        # flags that would do nothing
        (["--design", "mico", "--n", "2", "--fraction", "0.5"], "--design mico does not use --fraction"),
        (["--n", "4", "--first-id", "300"], "--design balanced does not use --first-id"),
    ],
)
def test_bad_arguments_are_usage_errors(small_challenge, extra, message, capsys):
    with pytest.raises(SystemExit) as e:
        _train(small_challenge, *extra)
    assert e.value.code == 2 and message in capsys.readouterr().err.splitlines()[-1]
    assert _shadows(small_challenge) == []


def _copy(src, tmp_path, name="data"):
    dst = str(tmp_path / name)
    subprocess.run(["cp", "-a", src, dst], check=True)
    return dst


@pytest.fixture(scope="module")
def roomy(tmp_path_factory):
    """A small challenge whose training sets leave room for both 1/2 and 3/4 designs (the pool of
    challenge points is under half the dataset; 6 models, 1 epoch)."""
    root = str(tmp_path_factory.mktemp("roomy") / "data")
    build_synthetic(root, TRACK, device="cpu", **{**SMALL, "n_points": 2400, "len_training": 900})
    return root


def test_a_design_whose_share_was_moved_keeps_it_as_it_grows(small_challenge, tmp_path):
    """Where --fraction cannot fit LEN_TRAINING the nearest share that fits depends on K (here 0.75
    gives 8 of 16 but 17 of 32): growing keeps the design's share, found from the --fraction that
    made it, instead of refusing the run as another design."""
    copy = _copy(small_challenge, tmp_path)
    params = load_params(copy, TRACK)
    dataset = load_dataset(params)
    _, first = designed_jobs(copy, TRACK, SCENARIO, params, dataset, 16, 0, 0.75)
    _, grown = designed_jobs(copy, TRACK, SCENARIO, params, dataset, 32, 0, 0.75)
    assert (first.in_count, grown.in_count, grown.group) == (8, 16, 2)
    assert all(np.array_equal(a, b) for a, b in zip(grown.train_sets, first.train_sets))
    path = os.path.join(copy, TRACK, SCENARIO, "shadow", DESIGN_FILE)
    with open(path) as f:
        assert json.load(f)["fraction_asked"] == 0.75
    with pytest.raises(ValueError, match="--n 5: .* multiple of 2"):
        designed_jobs(copy, TRACK, SCENARIO, params, dataset, 5, 0, 0.75)
    # a design.json from before the request was recorded: its own share grows it, another is refused
    with open(path) as f:
        old = {k: v for k, v in json.load(f).items() if k != "fraction_asked"}
    with open(path, "w") as f:
        json.dump(old, f)
    assert designed_jobs(copy, TRACK, SCENARIO, params, dataset, 32, 0, 0.5)[1].in_count == 16
    with pytest.raises(layout.LayoutError, match="--fraction 0.5 and --n a multiple of 2"):
        designed_jobs(copy, TRACK, SCENARIO, params, dataset, 32, 0, 0.75)


def test_two_designs_started_together_the_second_is_refused(roomy, tmp_path):
    """Two runs with other --fraction plan before either places a model: the design is claimed
    under a lock in shadow/design.json at planning, so the second is refused and names --fraction."""
    copy = _copy(roomy, tmp_path)
    params = load_params(copy, TRACK)
    dataset = load_dataset(params)
    _, design = designed_jobs(copy, TRACK, SCENARIO, params, dataset, 4, 0, 0.5)  # run A planned, trained nothing
    assert design.in_count == 2 and _shadows(copy) == []
    assert os.path.isfile(os.path.join(copy, TRACK, SCENARIO, "shadow", DESIGN_FILE))
    for fraction, seed in ((0.75, 0), (0.5, 1)):
        with pytest.raises(layout.LayoutError) as e:
            designed_jobs(copy, TRACK, SCENARIO, params, dataset, 4, seed, fraction)  # run B
        msg = str(e.value)
        assert "\n" not in msg and "another design" in msg and "--seed 0 --fraction 0.5" in msg
        assert "delete" in msg and os.path.join(copy, TRACK, SCENARIO, "shadow") in msg
    jobs, _ = designed_jobs(copy, TRACK, SCENARIO, params, dataset, 8, 0, 0.5)  # the same design, grown
    assert len(jobs) == 8


@pytest.mark.slow
def test_concurrent_runs_of_two_designs(roomy, tmp_path):
    """Two real train_shadows.py runs at once, --fraction 0.5 and 0.75: one trains, the other is refused."""
    shared = _copy(roomy, tmp_path)
    procs = [_start(0.3, shared, "--fraction", f) for f in ("0.5", "0.75")]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 1], [err[-500:] for _, err in outs]
    refused = next(err for p, (_, err) in zip(procs, outs) if p.returncode)
    assert "another design" in refused and "--fraction" in refused
    params = load_params(shared, TRACK)
    n = len(load_dataset(params))
    pool = challenge_pool(shared, TRACK, SCENARIO, params, n)
    sets = [read_training_set(md.path, n, params.len_training) for md in _shadows(shared)]
    counts = np.stack([np.isin(pool, s) for s in sets]).sum(axis=0)
    assert len(sets) == 4 and counts.min() == counts.max()  # one design, exactly balanced


@pytest.mark.parametrize("first_id,clash", [(3, "train/model_3"), (4, "dev/model_4"), (5, "final/model_5")])
def test_extra_ids_of_the_challenges_own_models_are_refused(small_challenge, tmp_path, first_id, clash):
    copy = _copy(small_challenge, tmp_path)
    with pytest.raises(ValueError) as e:
        _train(copy, "--design", "mico", "--n", "2", "--first-id", str(first_id))
    msg = str(e.value)
    assert "\n" not in msg and f"--first-id {first_id}" in msg and clash in msg and "above 5" in msg
    assert [md.model_id for md in layout.models(copy, TRACK, SCENARIO)] == list(range(6))  # nothing added


def test_deleted_model_file_is_retrained_and_named(designed, tmp_path, capsys):
    data_dir, cache_dir = designed
    copy = _copy(data_dir, tmp_path)
    md = _shadows(copy)[1]
    files = {name: open(os.path.join(md.path, name), "rb").read() for name in (TRAINING_SET, DESIGN_FILE)}
    os.remove(md.model_file)
    argv = ["--challenge", TRACK, "--data-dir", copy, "--cache-dir", cache_dir, "--device", "cpu"]
    code, lines = run_script(save_preds.main, "save_preds.py", argv, capsys)
    assert code == 1 and lines[-1].startswith("save_preds.py: ") and md.model_file in lines[-1]
    assert "train_shadows.py" in lines[-1] and "--design balanced" in lines[-1] and "re-download" not in lines[-1]
    assert _train(copy, "--n", "4") == 0
    out = capsys.readouterr().out
    assert "3 of 4 shadow model(s)" in out and "1 incomplete folder(s)" in out and "1 shadow model(s) trained" in out
    assert os.path.isfile(md.model_file)
    assert all(open(os.path.join(md.path, name), "rb").read() == data for name, data in files.items())


def test_corrupt_model_file_names_the_retraining(designed, tmp_path, capsys):
    data_dir, cache_dir = designed
    copy = _copy(data_dir, tmp_path)
    md = _shadows(copy)[2]
    with open(md.model_file, "r+b") as f:
        f.truncate(100)
    argv = ["--challenge", TRACK, "--data-dir", copy, "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    code, lines = run_script(save_preds.main, "save_preds.py", argv, capsys)
    assert code == 1 and lines[-1].startswith("save_preds.py: ") and md.model_file in lines[-1]
    assert "delete its folder and run train_shadows.py again" in lines[-1] and "re-download" not in lines[-1]
    subprocess.run(["rm", "-r", md.path], check=True)  # as the message says
    assert _train(copy, "--n", "4") == 0 and "1 shadow model(s) trained" in capsys.readouterr().out
    assert save_preds.main(argv) == 0


def test_a_design_with_a_model_missing_is_used_with_a_warning(designed, tmp_path, capsys):
    data_dir, cache_dir = designed
    copy = _copy(data_dir, tmp_path)
    gone = _shadows(copy)[1]
    subprocess.run(["rm", "-r", gone.path], check=True)  # a failed shard
    argv = ["--challenge", TRACK, "--data-dir", copy, "--cache-dir", cache_dir, "--scenario", SCENARIO]
    code, lines = run_script(run_lira_mia.main, "run_lira_mia.py", [*argv, "--report-dir", str(tmp_path)], capsys)
    warned = [line for line in lines if "warning" in line]
    assert code == 0 and len(warned) == 1, lines
    assert "run_lira_mia.py: warning: " in warned[0] and os.path.dirname(gone.path) in warned[0]
    assert "IN for 1 to 2" in warned[0] and "missing: model_1" in warned[0] and "train_shadows.py" in warned[0]
    params = load_params(data_dir, TRACK)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the complete design: no warning
        load_scenario(data_dir, cache_dir, TRACK, SCENARIO, params, params.n_points)
