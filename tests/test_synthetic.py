import json
import os
import shutil

import numpy as np
import pytest
import torch

import download_files
from challenges import layout
from challenges.datasets import load_dataset, to_tensor
from challenges.scenario import load_scenario
from challenges.splits import reconstruct
from challenges.tracks import load_params, scenario_names
from models.batched import train_batched
from models.loading import load_model
from models.train import recipe_for
from production.folders import TEST_SECRET_ENV, model_seeds, private_seed, seeded_job, training_secret
from production.synthetic import PRESETS, _split_seeds, build_synthetic, make_purchase_shoppers
from tests.conftest import TINY, run_script


@pytest.mark.parametrize("track", ["purchase100", "cifar10"])
def test_layout_matches_mico(tiny_challenges, track):
    _check_layout(tiny_challenges, track, TINY[track])


@pytest.mark.slow
def test_layout_matches_mico_cifar_all_scenarios(tmp_path):
    """The tiny fixture builds cifar10_inf only (DP CNN training is slow on a CPU): all three here."""
    opts = {k: v for k, v in TINY["cifar10"].items() if k != "scenarios"}
    build_synthetic(str(tmp_path), "cifar10", **opts)
    _check_layout(str(tmp_path), "cifar10", opts)


def _check_layout(root, track, opts):
    names = opts.get("scenarios", scenario_names(track))
    meta = json.load(open(os.path.join(root, track, "challenge.json")))
    assert meta["n_points"] == opts["n_points"] and meta["len_training"] == opts["len_training"]
    assert meta["len_challenge"] == 100 and not os.path.isabs(meta["dataset"])
    params = load_params(root, track)
    ds = load_dataset(params)
    assert len(ds) == opts["n_points"]
    assert layout.scenarios(root, track) == names
    for scenario in names:
        mds = layout.models(root, track, scenario)
        counts = {ph: sum(m.phase == ph for m in mds) for ph in ("train", "dev", "final")}
        assert counts == {"train": opts["n_train"], "dev": opts["n_dev"], "final": opts["n_final"]}
        for md in mds:
            files = set(os.listdir(md.path))
            assert {"model.pt", "seed_challenge", "accuracy"} <= files
            if md.phase == "train":
                assert {"seed_training", "seed_membership", "solution.csv"} <= files
                s = md.splits(params, len(ds))
                assert np.array_equal(md.solution(), s.solutions())
            else:
                # Ground truth never sits in a target's folder, only in the solutions tree.
                assert not files & {"seed_training", "seed_membership", "solution.csv"}
                sol = md.solution()
                assert md.solution_file().startswith(os.path.join(root, track, "solutions"))
                assert sol.shape == (200,) and sol.sum() == 100
            assert ("epsilon" in files) == (not scenario.endswith("_inf"))


def test_dp_epsilon_recorded(tiny_challenges):
    md = layout.models(tiny_challenges, "purchase100", "purchase100_lo")[0]
    eps = float(open(os.path.join(md.path, "epsilon")).read())
    assert 3.5 < eps <= 4.0 + 1e-6


def test_resume_rebuilds_only_missing(tiny_copy):
    track = "purchase100"
    mds = layout.models(tiny_copy, track, "purchase100_inf")
    before = {md.model_id: os.path.getmtime(md.model_file) for md in mds}
    shutil.rmtree(mds[1].path)
    leftover = os.path.join(os.path.dirname(mds[1].path), ".model_1.k3x9q2.partial")
    os.makedirs(os.path.join(leftover, "model_1"))  # what a run killed mid-write leaves (fileio.atomic_path)
    build_synthetic(tiny_copy, track, **TINY[track])
    after = {md.model_id: os.path.getmtime(md.model_file) for md in layout.models(tiny_copy, track, "purchase100_inf")}
    assert set(after) == set(before)
    assert after[1] != before[1] and all(after[k] == before[k] for k in before if k != 1)
    assert not os.path.exists(leftover)


def test_refuses_other_parameters(tiny_copy):
    opts = dict(TINY["purchase100"], n_points=1300)
    with pytest.raises(ValueError, match="different challenge"):
        build_synthetic(tiny_copy, "purchase100", **opts)


def test_cli_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    argv = ["--challenge", "purchase100", "--synthetic", "--data-dir", str(tmp_path / "d"), "--n-points", "150"]
    code, lines = run_script(download_files.main, "download_files.py", argv, capsys)
    assert code == 1 and len(lines) == 1 and "n_points=150" in lines[0]
    assert not (tmp_path / "d").exists()


def test_solution_file_must_agree_with_seeds(tiny_copy, tmp_path):
    params = load_params(tiny_copy, "purchase100")
    md = layout.models(tiny_copy, "purchase100", "purchase100_inf")[0]
    sol = md.solution()
    sol[:2] = 1 - sol[:2]
    with open(md.solution_file(), "w") as f:
        f.write(",".join(map(str, sol)))
    with pytest.raises(layout.LayoutError, match="disagrees with the split rebuilt from the seeds"):
        load_scenario(tiny_copy, str(tmp_path), "purchase100", "purchase100_inf", params, params.n_points)


def test_seeds_depend_on_scenario_not_build_order(tiny_challenges, tmp_path):
    seeds = {s: layout.models(tiny_challenges, "purchase100", s)[0].seeds() for s in scenario_names("purchase100")}
    assert len(set(seeds.values())) == 3
    params = json.load(open(os.path.join(tiny_challenges, "purchase100", "challenge.json")))
    assert params["seed"] == TINY["purchase100"]["seed"]
    # Building one scenario alone gives the very seeds of the full build.
    opts = dict(TINY["purchase100"], n_train=1, n_dev=0, n_final=0)
    build_synthetic(str(tmp_path), "purchase100", scenarios=["purchase100_lo"], **opts)
    assert layout.models(str(tmp_path), "purchase100", "purchase100_lo")[0].seeds() == seeds["purchase100_lo"]


def _weights(track, recipe, ds, train, seed):
    x, y = to_tensor(track, ds.x), torch.from_numpy(ds.y)
    return train_batched(track, recipe, x, y, [train], [seed], device="cpu")[0].model.state_dict()


def _same(a, b) -> bool:
    return all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_published_files_do_not_regenerate_a_dev_model(tiny_challenges):
    """Private targets: from what a dev model publishes (its folder, challenge.json, the dataset)
    neither its ground truth nor its weights follow; from the secret in solutions/ both do."""
    track, scenario = "purchase100", "purchase100_inf"
    params = load_params(tiny_challenges, track)
    ds = load_dataset(params)
    md = next(m for m in layout.models(tiny_challenges, track, scenario) if m.phase == "dev")
    assert set(os.listdir(md.path)) == {"model.pt", "seed_challenge", "accuracy"}
    have = load_model(track, md.model_file).state_dict()
    recipe = recipe_for(track, "inf", epochs=TINY[track]["epochs"])
    # What the published seeds give: the run seed's splits and any published seed as torch seed.
    sc, st, sm = model_seeds(params.seed, 1, md.model_id)
    assert sc == md.seeds()[0]
    guess = reconstruct(len(ds), params.len_training, params.len_challenge, sc, st, sm)
    assert not np.array_equal(guess.solutions(), md.solution())
    for seed in (sc, st, sm, params.seed):
        assert not _same(_weights(track, recipe, ds, guess.train_indices(), seed), have)
    # The secret regenerates it (so the checks above can fail).
    secret = training_secret(tiny_challenges, track)
    job = seeded_job(
        md,
        params,
        len(ds),
        _split_seeds(params.seed, secret, 0, md),
        reveal=False,
        torch_seed=private_seed(secret, scenario, md.model_id),
    )
    assert np.array_equal(job.solution.strip().split(","), [str(v) for v in md.solution()])
    assert _same(_weights(track, recipe, ds, job.train, job.seed), have)
    assert not any(secret.hex() in open(os.path.join(md.path, f)).read() for f in ("seed_challenge", "accuracy"))


def test_challenge_models_train_members_first_unshuffled(tiny_challenges):
    """MICO's order: member ++ training (get_train_dataset), which the trainer visits as given."""
    track = "purchase100"
    params = load_params(tiny_challenges, track)
    md = layout.models(tiny_challenges, track, "purchase100_inf")[0]
    s = md.splits(params, params.n_points)
    job = seeded_job(md, params, params.n_points, md.seeds(), reveal=True)
    assert np.array_equal(job.train, np.concatenate([s.member, s.training]))
    assert np.array_equal(job.train[: params.len_challenge], s.member) and (np.diff(job.train) < 0).any()
    assert not recipe_for(track, "inf").shuffle


def test_shoppers_are_binary_vectors_labelled_by_kmeans():
    """Purchase-100 as Shokri et al. made it: 0/1 purchase vectors of 600 products, the label the
    k-means cluster; checked against the obvious loop: every point sits with its nearest centre."""
    x, y = make_purchase_shoppers(3000, np.random.default_rng(0), n_classes=20)
    assert x.shape == (3000, 600) and x.dtype == np.uint8 and set(np.unique(x)) == {0, 1}
    assert y.dtype == np.int64 and set(np.unique(y)) == set(range(20))
    sizes = np.bincount(y)
    assert (np.diff(sizes) <= 0).all()  # numbered by decreasing size
    centres = np.stack([x[y == c].mean(axis=0) for c in range(20)])
    nearest = [int(np.argmin([((xi - c) ** 2).sum() for c in centres])) for xi in x.astype(float)]
    assert (np.array(nearest) == y).mean() > 0.999
    again = make_purchase_shoppers(3000, np.random.default_rng(0), n_classes=20)
    assert np.array_equal(again[0], x) and np.array_equal(again[1], y)


def test_preset_is_mico_sized_and_cli_checks_it(tmp_path, capsys):
    size = PRESETS["mico"]["purchase100"]
    assert (size.n_train, size.n_dev, size.n_final, size.len_challenge) == (100, 25, 25, 100)
    assert size.epochs is None and size.generator == "shoppers"  # MICO's recipe, k-means labels
    assert abs(size.len_training / size.n_points - 150_000 / 197_324) < 0.01
    argv = ["--challenge", "purchase100", "--data-dir", str(tmp_path / "d"), "--preset", "mico"]
    code, lines = run_script(download_files.main, "download_files.py", argv, capsys)
    assert code == 2 and "--preset only applies with --synthetic" in lines[-1]


def test_refuses_the_other_generator_at_the_same_sizes(tiny_copy):
    """A preset build over a demo-generator challenge of the same sizes and seed would have reused
    its dataset silently; the generator is part of the challenge's identity."""
    with pytest.raises(ValueError, match=r"generator classes \(asked: shoppers\)"):
        build_synthetic(tiny_copy, "purchase100", preset="mico", **TINY["purchase100"])
    assert load_params(tiny_copy, "purchase100").generator == "classes"


def test_preset_build_prints_the_winners_figure(tmp_path, capsys):
    """The preset's printed figure at a tiny size: the winner's TPR@10%FPR with its standard error,
    the real challenge's range and the held-out accuracy, one line per scenario."""
    argv = ["--challenge", "purchase100", "--data-dir", str(tmp_path / "d"), "--cache-dir", str(tmp_path / "c")]
    argv += ["--synthetic", "--preset", "mico", "--n-points", "1500", "--len-training", "700", "--epochs", "1"]
    argv += ["--n-train", "4", "--n-dev", "1", "--n-final", "1", "--scenario", "purchase100_inf", "--device", "cpu"]
    assert download_files.main(argv) == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if "MICO winner as submitted" in ln]
    assert len(line) == 1 and "(2 targets; each phase scored on its own, then their mean): TPR@10%FPR" in line[0]
    assert " ± " in line[0]
    assert "the real challenge's [0.15, 0.35]" in line[0] and "held-out accuracy" in line[0]
    assert load_params(str(tmp_path / "d"), "purchase100").generator == "shoppers"


def test_the_training_secret_is_random_unless_a_test_fixes_it(tmp_path, monkeypatch):
    """os.urandom for every new challenge; $MICO_TEST_TRAINING_SECRET (which the suite sets, so its
    fixtures train the same models on each run) for new challenges only; a bad value is one line."""
    monkeypatch.delenv(TEST_SECRET_ENV, raising=False)
    a, b = (training_secret(str(tmp_path / d), "purchase100") for d in ("a", "b"))
    assert len(a) == len(b) == 32 and a != b
    monkeypatch.setenv(TEST_SECRET_ENV, "ab" * 32)
    assert training_secret(str(tmp_path / "c"), "purchase100") == bytes.fromhex("ab" * 32)
    assert training_secret(str(tmp_path / "a"), "purchase100") == a  # a challenge keeps its own
    monkeypatch.setenv(TEST_SECRET_ENV, "xyz")
    with pytest.raises(ValueError, match=r"\$MICO_TEST_TRAINING_SECRET: 64 hex digits"):
        training_secret(str(tmp_path / "d"), "purchase100")
