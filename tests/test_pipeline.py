"""The four scripts end to end on the tiny synthetic challenges, as a user runs them."""

import json
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

import download_files
import run_lira_mia
import save_preds
import save_zip
import train_shadows
from attacks import auto
from attacks.options import AttackOptions
from attacks.suite import COMPARE, make_attack, runnable
from challenges import cache, evaluation, layout, report, scoring, submission
from challenges.datasets import load_dataset, to_tensor
from challenges.scenario import ScenarioData, load_scenario, target_truth
from challenges.tracks import EXTRA_SHADOW_FILE, load_params
from models import load_model
from models.query import apply_view, view_names
from tests.conftest import ROOT, run_script

FLAGS = ["--global_variance", "--online_attack", "--logit_scaling", "--stable_logit_scaling"]


def _run(main, *argv):
    return main(list(argv))


def _purchase(main, data_dir, cache_dir, *argv):
    """A script on the purchase100 challenge in ``data_dir`` with its cache in ``cache_dir``."""
    return main(["--challenge", "purchase100", "--data-dir", data_dir, "--cache-dir", cache_dir, *argv])


@pytest.fixture(scope="session")
def cached_session(tiny_challenges, tmp_path_factory):
    """The tiny challenges with every purchase100 model's signals cached (shared, read-only)."""
    cache_dir = str(tmp_path_factory.mktemp("cache") / "cache")
    assert (
        _purchase(
            save_preds.main,
            tiny_challenges,
            cache_dir,
            "--device",
            "cpu",
        )
        == 0
    )
    return tiny_challenges, cache_dir


@pytest.fixture
def cached(cached_session, tmp_path):
    """A private, writable copy of ``cached_session``."""
    data_dir, cache_dir = (str(tmp_path / name) for name in ("data", "cache"))
    shutil.copytree(cached_session[0], data_dir)
    shutil.copytree(cached_session[1], cache_dir)
    return data_dir, cache_dir


def test_save_preds_cache_and_resume(cached, capsys):
    data_dir, cache_dir = cached
    mds = layout.models(data_dir, "purchase100", "purchase100_inf")
    files = [cache.cache_file(cache_dir, md) for md in mds]
    entry = cache.read(files[0])
    assert entry["phi"].dtype == np.float32 and entry["phi"].shape == (len(entry["points"]), 1)
    assert list(entry["views"]) == ["orig"] and np.all(np.diff(entry["points"]) > 0)
    capsys.readouterr()
    # The fixture copied the tree: same bytes, new inodes, so the first rerun refreshes the stamps.
    _purchase(save_preds.main, data_dir, cache_dir)
    assert "0 model(s) queried" in capsys.readouterr().out
    stamps = [os.path.getmtime(f) for f in files]
    _purchase(save_preds.main, data_dir, cache_dir)
    out = capsys.readouterr().out
    assert "0 model(s) queried" in out and "refreshed" not in out
    assert [os.path.getmtime(f) for f in files] == stamps
    # A changed model file is queried again; the others are not.
    with open(mds[2].model_file, "ab") as f:
        f.write(b"")
    os.utime(mds[2].model_file, ns=(1, 1))
    torch_state = torch.load(mds[2].model_file, weights_only=True)
    torch_state["mlp.2.bias"] += 1.0
    torch.save(torch_state, mds[2].model_file)
    _purchase(
        save_preds.main,
        data_dir,
        cache_dir,
        "--scenario",
        "purchase100_inf",
    )
    new = [os.path.getmtime(f) for f in files]
    assert new[2] != stamps[2] and new[:2] == stamps[:2] and new[3:] == stamps[3:]
    assert not any(name.startswith(".model_") for _, ds, fs in os.walk(cache_dir) for name in ds + fs)


def test_signal_matches_direct_forward(cached_session):
    data_dir, cache_dir = cached_session
    md = layout.models(data_dir, "purchase100", "purchase100_hi")[-1]
    entry = cache.read(cache.cache_file(cache_dir, md))
    ds = load_dataset(load_params(data_dir, "purchase100"))
    pts = entry["points"][:50]
    with torch.no_grad():
        logits = load_model("purchase100", md.model_file)(to_tensor("purchase100", ds.x[pts])).double()
    p = torch.softmax(logits, 1)[torch.arange(50), torch.from_numpy(ds.y[pts])]
    np.testing.assert_allclose(entry["phi"][:50, 0], torch.log(p / (1 - p)).numpy(), rtol=1e-4, atol=1e-4)


def _record_plots(monkeypatch) -> dict:
    """Replace ROC drawing by a recorder of {path: curves}; checks the curves it is given."""
    plots = {}

    def record(curves, path, title="", highlight=()):
        for fpr, tpr in curves.values():
            assert np.all(np.diff(fpr) >= 0) and np.all((tpr >= 0) & (tpr <= 1))
        plots[path] = curves

    monkeypatch.setattr(report, "plot_roc", record)
    return plots


@pytest.mark.parametrize("mask", range(16))
def test_every_flag_combination_writes_valid_predictions(cached, mask, tmp_path, monkeypatch):
    data_dir, cache_dir = cached
    plots = _record_plots(monkeypatch) if mask else None  # drawing is most of a run: once is enough
    flags = [f for i, f in enumerate(FLAGS) if mask >> i & 1]
    assert (
        _purchase(
            run_lira_mia.main,
            data_dir,
            cache_dir,
            "--report-dir",
            str(tmp_path / "report"),
            "--evaluate",
            *flags,
        )
        == 0
    )
    for scenario in layout.scenarios(data_dir, "purchase100"):
        for md in layout.models(data_dir, "purchase100", scenario, ["dev", "final"]):
            values = layout.read_row(md.prediction_file)
            assert values.shape == (200,) and np.all((values >= 0) & (values <= 1))
    report_dir = tmp_path / "report" / "purchase100"
    assert (report_dir / "scores.json").exists()
    if plots is None:
        assert all((report_dir / f"roc_{sc}.png").exists() for sc in layout.scenarios(data_dir, "purchase100"))
    else:
        assert [os.path.basename(p) for p in plots] == [
            f"roc_{sc}.png" for sc in layout.scenarios(data_dir, "purchase100")
        ]


def test_inf_scenario_shows_membership_signal(cached, tmp_path, capsys):
    data_dir, cache_dir = cached
    _purchase(
        run_lira_mia.main,
        data_dir,
        cache_dir,
        "--report-dir",
        str(tmp_path),
        "--evaluate",
        "--online_attack",
        "--stable_logit_scaling",
    )
    scores = json.load(open(tmp_path / "purchase100" / "scores.json"))
    assert scores["purchase100_inf"]["train"]["AUC"] > 0.6
    assert set(scores["purchase100_inf"]) == {"train", "dev", "final", "dev+final"}


def test_save_zip_validates_then_writes(cached, tmp_path, capsys):
    data_dir, cache_dir = cached
    out = str(tmp_path / "sub.zip")
    assert _run(save_zip.main, "--challenge", "purchase100", "--data-dir", data_dir, "--output", out) == 1
    assert not os.path.exists(out) and "prediction.csv: missing" in capsys.readouterr().err
    _purchase(
        run_lira_mia.main,
        data_dir,
        cache_dir,
        "--report-dir",
        str(tmp_path / "r"),
    )
    targets = [
        md
        for s in layout.scenarios(data_dir, "purchase100")
        for md in layout.models(data_dir, "purchase100", s, ["dev", "final"])
    ]
    bad = targets[0].prediction_file
    good = open(bad).read()
    for text, why in [
        ("0.5," * 199 + "1.5\n", "outside [0, 1]"),
        ("0.5," * 198 + "0.5\n", "199 values"),
        ("0.5," * 199 + "nan\n", "non-finite"),
        ("a,b\n", "comma-separated"),
    ]:
        open(bad, "w").write(text)
        assert _run(save_zip.main, "--challenge", "purchase100", "--data-dir", data_dir, "--output", out) == 1
        err = capsys.readouterr().err
        assert bad in err and why in err and not os.path.exists(out)
    open(bad, "w").write(good)
    assert _run(save_zip.main, "--challenge", "purchase100", "--data-dir", data_dir, "--output", out) == 0
    names = zipfile.ZipFile(out).namelist()
    assert len(names) == len(targets)
    assert sorted(names) == sorted(
        f"purchase100/{md.scenario}/{md.phase}/model_{md.model_id}/prediction.csv" for md in targets
    )


def test_missing_cache_is_a_clear_error(tiny_copy, tmp_path, capsys):
    argv = ["--challenge", "purchase100", "--data-dir", tiny_copy, "--cache-dir", str(tmp_path / "nothing")]
    code, lines = run_script(run_lira_mia.main, "run_lira_mia.py", argv, capsys)
    last = lines[-1]  # after tqdm's bar: the one-line error
    assert code != 0 and last.startswith("run_lira_mia.py: ") and "save_preds.py --challenge" in last


def test_cifar_augmented_views(tiny_copy, tmp_path):
    cache_dir = str(tmp_path / "cache")
    assert (
        _run(
            save_preds.main,
            "--challenge",
            "cifar10",
            "--data-dir",
            tiny_copy,
            "--cache-dir",
            cache_dir,
            "--scenario",
            "cifar10_inf",
            "--augment",
        )
        == 0
    )
    md = layout.models(tiny_copy, "cifar10", "cifar10_inf")[0]
    entry = cache.read(cache.cache_file(cache_dir, md))
    assert entry["phi"].shape[1] == 2 and list(entry["views"]) == ["orig", "flip"]
    assert (
        _run(
            run_lira_mia.main,
            "--challenge",
            "cifar10",
            "--data-dir",
            tiny_copy,
            "--cache-dir",
            cache_dir,
            "--scenario",
            "cifar10_inf",
            "--online_attack",
            "--report-dir",
            str(tmp_path),
        )
        == 0
    )


def test_extra_shadows_resume_shard_and_are_used(cached, tmp_path, capsys):
    data_dir, cache_dir = cached
    common = [
        "--challenge",
        "purchase100",
        "--scenario",
        "purchase100_inf",
        "--data-dir",
        data_dir,
        "--n",
        "3",
        "--epochs",
        "2",
        "--device",
        "cpu",
    ]
    assert _run(train_shadows.main, *common, "--shard", "1/2") == 0
    train = {md.model_id for md in layout.models(data_dir, "purchase100", "purchase100_inf", ["train"])}
    assert {1000, 1002}.isdisjoint(train) and 1001 in train
    assert _run(train_shadows.main, *common, "--shard", "0/2") == 0
    assert _run(train_shadows.main, *common) == 0
    assert "3 of 3" in capsys.readouterr().out
    new = [md for md in layout.models(data_dir, "purchase100", "purchase100_inf", ["train"]) if md.model_id >= 1000]
    assert [md.model_id for md in new] == [1000, 1001, 1002]
    for md in new:
        assert {"model.pt", "seed_challenge", "seed_training", "seed_membership", "solution.csv", "accuracy"} <= set(
            os.listdir(md.path)
        )
    # save_preds picks them up and widens every cache to their challenge points.
    _purchase(
        save_preds.main,
        data_dir,
        cache_dir,
        "--scenario",
        "purchase100_inf",
    )
    assert (
        _purchase(
            run_lira_mia.main,
            data_dir,
            cache_dir,
            "--scenario",
            "purchase100_inf",
            "--evaluate",
            "--report-dir",
            str(tmp_path),
        )
        == 0
    )


@pytest.mark.parametrize("script", [download_files, save_preds, run_lira_mia, save_zip, train_shadows])
def test_help(script, capsys):
    """In-process (the cold start of a script is covered by the subprocess runs elsewhere)."""
    with pytest.raises(SystemExit) as e:
        script.main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "--challenge" in out and "alike" in out


def test_cold_start_help():
    r = subprocess.run([sys.executable, "run_lira_mia.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and "--global_variance" in r.stdout


def test_both_spellings_of_every_flag(cached, tmp_path):
    data_dir, cache_dir = cached
    args, options = run_lira_mia.parse_args(
        [
            "--challenge",
            "purchase100",
            "--global-variance",
            "--min_shadows",
            "3",
            "--mu=median",
            "--data_dir",
            data_dir,
        ]
    )
    assert options.global_variance and options.min_shadows == 3 and options.mu == "median"
    assert args.data_dir == data_dir
    with pytest.raises(SystemExit):
        run_lira_mia.parse_args(["--challenge", "purchase100", "--scenario", "purchase100_mid"])


def test_query_views():
    names = view_names(True, 1)
    assert len(names) == 18 == len(set(names)) and names[:2] == ["orig", "flip"]
    assert view_names(False, 3) == ["orig"]
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    assert torch.equal(apply_view(x, "flip"), x.flip(3))
    shifted = apply_view(x, "orig:1,0")  # content moves left by one column, reflect-padded
    assert shifted.shape == x.shape and torch.equal(shifted[..., :3], x[..., 1:])
    assert torch.equal(shifted[..., 3], x[..., 2])


@pytest.mark.parametrize("attack", ["rmia", "loss", "confidence", "calibrated", "entropy", "classifier"])
def test_every_attack_writes_valid_predictions(cached, attack, tmp_path, monkeypatch):
    data_dir, cache_dir = cached
    _record_plots(monkeypatch)
    extra = ["--rmia-a", "auto", "--rmia-population", "300"] if attack == "rmia" else []
    assert (
        _purchase(
            run_lira_mia.main,
            data_dir,
            cache_dir,
            "--report-dir",
            str(tmp_path),
            "--evaluate",
            "--attack",
            attack,
            *extra,
        )
        == 0
    )
    for md in layout.models(data_dir, "purchase100", "purchase100_lo", ["dev", "final"]):
        values = layout.read_row(md.prediction_file)
        assert values.shape == (200,) and np.all((values >= 0) & (values <= 1))
    scores = json.load(open(tmp_path / "purchase100" / "scores.json"))
    assert scores["purchase100_inf"]["train"]["AUC"] > 0.55


def test_compare_report(cached, tmp_path):
    data_dir, cache_dir = cached
    assert (
        _purchase(
            run_lira_mia.main,
            data_dir,
            cache_dir,
            "--report-dir",
            str(tmp_path),
            "--compare",
            "--rmia-population",
            "300",
        )
        == 0
    )
    report = (tmp_path / "purchase100" / "report.md").read_text()
    kept, left_out = runnable(COMPARE, 1)  # the cache holds one view: the neighbourhood rows are left out
    for label, options in kept:
        flags = " ".join(run_lira_mia.option_flags(options))
        assert f"| {label} |" in report and f"--evaluate {flags}".strip() in report
    assert left_out and f"Left out of this comparison and of auto's line-up: {', '.join(left_out)}" in report
    assert report.count("**") >= 2 * 13  # a best value marked in every column of the train table
    # issue 22, items 2 and 3: dev and final each on its own, then their mean, with paired SEs;
    # auto's in-sample ± makes the choice again on each resample, and says so
    targets = report.split("## Standard errors (dev and final, each phase scored on its own")[1]
    assert f"| {run_lira_mia.AUTO} | " in targets and "held fixed" in targets
    assert "each resample makes auto's choice again" in report and "in-sample" in run_lira_mia.AUTO
    # issue 24: each row's cost (its wall time, and the model queries it needs)
    cost = report.split("## Cost of each row")[1].split("## ")[0]
    assert "| LiRA online (training order) | " in cost and "| none |" in cost
    for scenario in ("purchase100_inf", "purchase100_hi", "purchase100_lo"):
        assert (tmp_path / "purchase100" / f"compare_roc_{scenario}.png").exists()
    assert not any(
        os.path.exists(md.prediction_file)
        for md in layout.models(data_dir, "purchase100", "purchase100_inf", ["dev", "final"])
    )


def test_bad_attack_option_is_a_usage_error(cached):
    data_dir, cache_dir = cached
    with pytest.raises(SystemExit) as e:
        run_lira_mia.main(["--challenge", "purchase100", "--data-dir", data_dir, "--rmia-a", "2"])
    assert e.value.code == 2


def test_compare_refuses_attack_flags(cached, capsys):
    data_dir, cache_dir = cached
    with pytest.raises(SystemExit) as e:
        run_lira_mia.main(
            [
                "--challenge",
                "purchase100",
                "--data-dir",
                data_dir,
                "--cache-dir",
                cache_dir,
                "--compare",
                "--global_variance",
            ]
        )
    assert e.value.code == 2 and "drop --global_variance" in capsys.readouterr().err


def test_failed_run_leaves_no_mixed_predictions(cached, tmp_path):
    data_dir, cache_dir = cached
    lo = layout.models(data_dir, "purchase100", "purchase100_lo")[0]
    os.remove(cache.cache_file(cache_dir, lo))
    with pytest.raises(cache.CacheError, match="save_preds.py"):
        run_lira_mia.main(
            [
                "--challenge",
                "purchase100",
                "--data-dir",
                data_dir,
                "--cache-dir",
                cache_dir,
                "--report-dir",
                str(tmp_path),
            ]
        )
    assert not any(
        os.path.exists(md.prediction_file)
        for md in layout.models(data_dir, "purchase100", "purchase100_inf", ["dev", "final"])
    )


def test_save_preds_flag_checks(tiny_challenges):
    for bad in (["--shifts", "1"], ["--augment", "--shifts", "-1"]):
        with pytest.raises(SystemExit) as e:
            save_preds.main(["--challenge", "cifar10", "--data-dir", tiny_challenges, *bad])
        assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        save_preds.main(["--challenge", "purchase100", "--data-dir", tiny_challenges, "--augment"])
    assert e.value.code == 2


def test_save_zip_without_targets(tmp_path):
    (tmp_path / "purchase100" / "purchase100_inf" / "train" / "model_0").mkdir(parents=True)
    with pytest.raises(layout.LayoutError, match="no dev or final model folders"):
        save_zip.main(["--challenge", "purchase100", "--data-dir", str(tmp_path)])


def test_reference_offline_test_option(cached, tmp_path):
    data_dir, cache_dir = cached
    base = [
        "--challenge",
        "purchase100",
        "--data-dir",
        data_dir,
        "--cache-dir",
        cache_dir,
        "--scenario",
        "purchase100_inf",
        "--report-dir",
        str(tmp_path),
    ]
    assert _run(run_lira_mia.main, *base, "--offline-test", "reference") == 0
    md = layout.models(data_dir, "purchase100", "purchase100_inf", ["dev"])[0]
    ref = layout.read_row(md.prediction_file)
    assert _run(run_lira_mia.main, *base) == 0
    assert not np.allclose(ref, layout.read_row(md.prediction_file))  # another test, other scores


def test_extra_shadows_are_not_leave_one_out_targets(cached, tmp_path):
    """Extra MICO-random shadows look like train models (seeds, solution.csv) but are ours: scored as
    leave-one-out targets they would change the train table (demo inf: 0.92 -> 0.71). They are only
    shadows; the table scores the challenge's own train models."""
    data_dir, cache_dir = cached
    sc = ["--scenario", "purchase100_inf"]
    assert (
        _run(
            train_shadows.main,
            "--challenge",
            "purchase100",
            "--data-dir",
            data_dir,
            *sc,
            "--n",
            "2",
            "--epochs",
            "1",
            "--device",
            "cpu",
        )
        == 0
    )
    assert _purchase(save_preds.main, data_dir, cache_dir, *sc, "--device", "cpu") == 0
    assert _purchase(run_lira_mia.main, data_dir, cache_dir, *sc, "--evaluate", "--report-dir", str(tmp_path)) == 0
    table = json.load(open(tmp_path / "purchase100" / "scores.json"))["purchase100_inf"]["train"]
    params = load_params(data_dir, "purchase100")
    data = load_scenario(data_dir, cache_dir, "purchase100", "purchase100_inf", params, params.n_points)
    train = data.phase_rows("train")
    own = np.array([i for i in train if not data.models[i].extra])
    assert len(train) - len(own) == 2 and data.n_shadows == len(train)  # the extras are shadows
    scores = make_attack(AttackOptions())(data, own, own)  # the default attack, leave-one-out
    expected = scoring.score(data.solutions[own].ravel(), scores.ravel())
    assert table == pytest.approx({k: expected[k] for k in table}) and "AUC" in table


def test_compare_with_mico_random_extras(cached, tmp_path):
    """Issue 22, item 1: with MICO-random extras (train_shadows.py --design mico), --compare's auto
    rows crashed ("inconsistent numbers of samples"): auto chose on every train row, extras included,
    while every other row scored the challenge's own. One row set everywhere now."""
    data_dir, cache_dir = cached
    sc = ["--scenario", "purchase100_inf"]
    shadows = ["--challenge", "purchase100", "--data-dir", data_dir, *sc, "--n", "2", "--epochs", "1"]
    assert _run(train_shadows.main, *shadows, "--device", "cpu") == 0
    assert _purchase(save_preds.main, data_dir, cache_dir, *sc, "--device", "cpu") == 0
    assert _purchase(run_lira_mia.main, data_dir, cache_dir, *sc, "--compare", "--report-dir", str(tmp_path)) == 0
    params = load_params(data_dir, "purchase100")
    data = load_scenario(data_dir, cache_dir, "purchase100", "purchase100_inf", params, params.n_points)
    own = evaluation.target_rows(data, "train")
    assert len(own) == len(data.phase_rows("train")) - 2
    assert np.array_equal(auto.train_rows(data), own)


def test_attacks_never_see_a_targets_truth(cached):
    """Issue 22, item 4: the arrays handed to attacks hold the train models' membership only; a dev
    or final model's truth (the synthetic solutions/ tree) is read apart, for scoring. Every dev/final
    solution flipped, every attack's predictions stay the same; the scores read the flipped truth."""
    data_dir, cache_dir = cached
    params = load_params(data_dir, "purchase100")
    fields = ("phi", "mentr")

    def load():
        return load_scenario(
            data_dir, cache_dir, "purchase100", "purchase100_inf", params, params.n_points, fields, runner_up=True
        )

    before = load()
    targets = np.concatenate([before.phase_rows("dev"), before.phase_rows("final")])
    assert (before.solutions[targets] == -1).all() and (before.solutions[before.phase_rows("train")] >= 0).all()
    truth = target_truth(before, targets)
    assert (truth >= 0).all()
    for row in targets:
        path = before.models[row].solution_file()
        assert "solutions" in path  # the synthetic ground truth, kept out of the model folders
        flipped = 1 - before.models[row].solution()
        open(path, "w").write(",".join(map(str, flipped)) + "\n")
    after = load()
    assert np.array_equal(target_truth(after, targets), 1 - truth)
    assert np.array_equal(after.solutions, before.solutions) and np.array_equal(after.shadow_in, before.shadow_in)
    rows = np.concatenate([targets, before.phase_rows("train")])
    exclude = np.concatenate([np.full(len(targets), -1), before.phase_rows("train")])
    for label, o in [*COMPARE, ("auto", AttackOptions(attack="auto"))]:
        a, b = (make_attack(o)(d, rows, exclude) for d in (before, after))
        # equal but for the order ExtraTrees' two threads add their trees' votes in (1e-16)
        assert np.allclose(a, b, rtol=0, atol=1e-12), label
    n_dev = len(before.phase_rows("dev"))
    results = {"dev": (before.phase_rows("dev"), a[:n_dev])}  # scoring reads the truth as it is now
    expected = scoring.score((1 - truth[:n_dev]).ravel(), a[:n_dev].ravel())
    assert evaluation.score_results(before, results)["dev"]["AUC"] == pytest.approx(expected["AUC"])


def test_auto_evaluate_prints_honest_and_per_phase_scores(cached, tmp_path, capsys):
    """Issue 22, items 2 and 3: --attack auto --evaluate shows its honest split-half estimate for the
    train models and names the in-sample figure as such (it printed the in-sample one as "train
    (leave-one-out)"); dev and final are each scored on their own, then averaged, ± a bootstrap SE."""
    data_dir, cache_dir = cached
    argv = ["--scenario", "purchase100_inf", "--attack", "auto", "--evaluate", "--report-dir", str(tmp_path)]
    code, err = run_script(
        lambda a: _purchase(run_lira_mia.main, data_dir, cache_dir, *a), "run_lira_mia.py", argv, capsys
    )
    assert code == 0, err
    table = json.load(open(tmp_path / "purchase100" / "scores.json"))["purchase100_inf"]
    assert "train" not in table and {"train honest", "train in-sample", "dev", "final", "dev+final"} <= set(table)
    both = table["dev+final"]
    for key in scoring.TPR_KEYS + ("AUC",):
        assert both[key] == pytest.approx((table["dev"][key] + table["final"][key]) / 2)
    assert both["TPR_FPR_1000 SE"] > 0
    text = report.scores_text({"purchase100_inf": table})
    assert "honest split-half" in text and "in-sample" in text and "train (leave-one-out)" not in text
    assert "each phase scored on its own" in text and " ± " in text


def test_attack_scenario_targets_only_the_challenges_models(tmp_path):
    """Designed shadows and marked MICO-random extras are never targets; every shadow is a shadow."""
    phases = ["train", "train", "train", "shadow", "dev", "final"]
    mds = [layout.ModelDir(str(tmp_path), "purchase100", "purchase100_inf", ph, i) for i, ph in enumerate(phases)]
    for md in mds:
        os.makedirs(md.path)
    open(os.path.join(mds[2].path, EXTRA_SHADOW_FILE), "w").close()
    data = ScenarioData(
        "purchase100_inf",
        mds,
        np.arange(4),
        {"phi": np.zeros((6, 4, 1), np.float32)},
        np.zeros((6, 2), np.int64),
        np.zeros((4, 4), bool),
        np.zeros((6, 2), np.int8),
    )
    seen = []

    def attack(d, rows, exclude):
        seen.append((rows.tolist(), exclude.tolist()))
        return np.full((len(rows), 2), 0.5)

    results = evaluation.attack_scenario(data, attack, evaluate=True)
    assert seen == [([0, 1, 4, 5], [0, 1, -1, -1])]
    assert {ph: r.tolist() for ph, (r, _) in results.items()} == {"train": [0, 1], "dev": [4], "final": [5]}


def _zip(data_dir, out):
    return _run(save_zip.main, "--challenge", "purchase100", "--data-dir", data_dir, "--output", out)


def test_save_zip_refuses_a_set_mixed_by_a_failed_run(cached, tmp_path, monkeypatch, capsys):
    """A run that stops part-way (a full disk) leaves some prediction.csv new and the rest from an
    earlier run; only a set that one complete run wrote is zipped."""
    data_dir, cache_dir = cached
    out, report_dir = str(tmp_path / "sub.zip"), ["--report-dir", str(tmp_path / "r")]
    assert _purchase(run_lira_mia.main, data_dir, cache_dir, *report_dir) == 0
    first = json.load(open(submission.manifest_path(data_dir, "purchase100")))
    write_text, calls = submission.write_text, []

    def disk_full_at_the_third(path, text):
        calls.append(path)
        if path.endswith("prediction.csv") and len(calls) == 3:
            raise OSError(f"{path}: cannot write (No space left on device); free some space there, then rerun")
        write_text(path, text)

    monkeypatch.setattr(submission, "write_text", disk_full_at_the_third)
    with pytest.raises(OSError, match="No space left"):
        _purchase(run_lira_mia.main, data_dir, cache_dir, *report_dir, "--attack", "loss")
    monkeypatch.undo()
    capsys.readouterr()
    assert _zip(data_dir, out) == 1 and not os.path.exists(out)
    err = capsys.readouterr().err.strip().splitlines()
    assert [line.split(":")[0] for line in err[:-1]] == calls[:2]  # the two files the failed run replaced
    assert all(f"run {first['run_id']}" in line for line in err[:-1])
    assert err[-1].startswith("save_zip.py: 2 prediction file(s) not from one complete run; run run_lira_mia.py")
    # A complete run makes the set whole again; the zip names the run.
    assert _purchase(run_lira_mia.main, data_dir, cache_dir, *report_dir, "--attack", "loss") == 0
    assert _zip(data_dir, out) == 0
    run_id = json.load(open(submission.manifest_path(data_dir, "purchase100")))["run_id"]
    assert run_id != first["run_id"] and zipfile.ZipFile(out).comment.decode().endswith(run_id)
    assert run_id in capsys.readouterr().out


def test_save_zip_refuses_predictions_of_several_runs(cached, tmp_path, capsys):
    data_dir, cache_dir = cached
    out = str(tmp_path / "sub.zip")
    assert _purchase(run_lira_mia.main, data_dir, cache_dir, "--report-dir", str(tmp_path)) == 0
    # One scenario rerun on its own: the other scenarios' files are from another run.
    sc = ["--scenario", "purchase100_hi", "--attack", "loss"]
    assert _purchase(run_lira_mia.main, data_dir, cache_dir, "--report-dir", str(tmp_path), *sc) == 0
    capsys.readouterr()
    assert _zip(data_dir, out) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 + 2 * 4 and all("purchase100_hi" not in line for line in err[:-1])
    assert all("not written by the last complete run_lira_mia.py run" in line for line in err[:-1])
    # No record at all (predictions from before records, or copied in): one line with the fix.
    os.remove(submission.manifest_path(data_dir, "purchase100"))
    code, lines = run_script(
        save_zip.main, "save_zip.py", ["--challenge", "purchase100", "--data-dir", data_dir], capsys
    )
    assert code == 1 and len(lines) == 1 and "predictions.json: missing" in lines[0]
    assert "run run_lira_mia.py --challenge purchase100 to the end" in lines[0]
