"""Every expected failure is one line that names its file or folder and a fix."""

import dataclasses
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import download_files
import run_lira_mia
import save_preds
import train_shadows
from attacks.suite import COMPARE
from challenges import cache, fileio, layout, membership, submission
from tests.conftest import run_script

TRACK, SCENARIO = "purchase100", "purchase100_inf"
ENOSPC = OSError(28, "No space left on device")


def _one_line(msg: str, *must) -> None:
    assert "\n" not in msg and "Traceback" not in msg
    for m in must:
        assert m in msg, (m, msg)


def _save_preds(data_dir, cache_dir):
    return save_preds.main(["--challenge", TRACK, "--data-dir", data_dir, "--cache-dir", cache_dir, "--device", "cpu"])


def test_non_utf8_seed_names_the_file(small_copy, capsys):
    data_dir, cache_dir = small_copy
    md = layout.models(data_dir, TRACK, SCENARIO)[1]
    seed = os.path.join(md.path, "seed_challenge")
    Path(seed).write_bytes(b"\xff\xfe1\x002\x00")
    argv = ["--challenge", TRACK, "--data-dir", data_dir, "--cache-dir", cache_dir, "--device", "cpu"]
    code, lines = run_script(save_preds.main, "save_preds.py", argv, capsys)
    assert code != 0
    _one_line(lines[-1], "save_preds.py: ", seed, "re-download")


@pytest.mark.parametrize("missing", ["seed_training", "seed_membership"])
def test_train_model_without_its_seeds_names_the_file(small_copy, missing, tmp_path):
    data_dir, cache_dir = small_copy
    assert _save_preds(data_dir, cache_dir) == 0
    md = layout.models(data_dir, TRACK, SCENARIO, ["train"])[0]
    os.remove(os.path.join(md.path, missing))
    for run in (
        lambda: _save_preds(data_dir, cache_dir),
        lambda: run_lira_mia.main(
            ["--challenge", TRACK, "--data-dir", data_dir, "--cache-dir", cache_dir, "--report-dir", str(tmp_path)]
        ),
    ):
        with pytest.raises(layout.LayoutError) as ei:
            run()
        _one_line(str(ei.value), os.path.join(md.path, missing), "train model", "re-download")


# ---------------------------------------------------------------------------------------------
# A full disk, as a write raising ENOSPC
# ---------------------------------------------------------------------------------------------


def test_disk_full_writing_the_cache(small_copy, monkeypatch):
    data_dir, cache_dir = small_copy

    def savez(*args, **kwargs):
        raise ENOSPC

    monkeypatch.setattr(cache.np, "savez", savez)
    with pytest.raises(OSError) as ei:
        _save_preds(data_dir, cache_dir)
    first = cache.cache_file(cache_dir, layout.models(data_dir, TRACK, SCENARIO)[0])
    _one_line(str(ei.value), first, "No space left on device", "free some space")
    assert os.listdir(os.path.dirname(first)) == [".locks"]  # no temporary file, no half file


class _FullFile:
    """An open file whose writes fail as on a full disk."""

    def write(self, data):
        raise ENOSPC

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_disk_full_writing_a_prediction(tmp_path, monkeypatch):
    monkeypatch.setattr(fileio, "open", lambda *a, **k: _FullFile(), raising=False)
    path = str(tmp_path / "prediction.csv")
    with pytest.raises(OSError) as ei:
        submission.write_prediction(path, np.full(200, 0.5))
    _one_line(str(ei.value), path, "No space left on device", "free some space")
    assert os.listdir(tmp_path) == []


def test_disk_full_writing_the_zip(tmp_path, monkeypatch):
    d = tmp_path / "purchase100" / SCENARIO / "dev" / "model_0"
    d.mkdir(parents=True)
    (d / "prediction.csv").write_text("0.5\n")

    def write(self, *args, **kwargs):
        raise ENOSPC

    monkeypatch.setattr(zipfile.ZipFile, "write", write)
    out = str(tmp_path / "sub.zip")
    with pytest.raises(OSError) as ei:
        submission.write_zip(str(tmp_path), TRACK, out)
    _one_line(str(ei.value), out, "No space left on device")
    assert not os.path.exists(out) and sorted(os.listdir(tmp_path)) == ["purchase100"]


def test_reading_an_absent_file_keeps_its_own_name(tmp_path):
    """Only errors without a path (or naming the temporary one) are renamed to the file written."""
    out = str(tmp_path / "x.zip")
    with pytest.raises(FileNotFoundError) as ei, fileio.atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w") as z:
        z.write(str(tmp_path / "absent.csv"), arcname="a")
    assert ei.value.filename == str(tmp_path / "absent.csv") and os.listdir(tmp_path) == []


def test_missing_model_file_is_named(small_copy, tmp_path):
    data_dir, cache_dir = small_copy
    assert _save_preds(data_dir, cache_dir) == 0
    md = layout.models(data_dir, TRACK, SCENARIO)[3]
    os.remove(md.model_file)
    with pytest.raises(layout.LayoutError) as ei:
        run_lira_mia.main(
            ["--challenge", TRACK, "--data-dir", data_dir, "--cache-dir", cache_dir, "--report-dir", str(tmp_path)]
        )
    _one_line(str(ei.value), md.model_file, "re-download")


# ---------------------------------------------------------------------------------------------
# Flags: numbers out of range, and combinations that would do nothing, are usage errors naming the flag
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--attack", "loss", "--online_attack"], "--attack loss does not use --online_attack; drop it"),
        (["--as_submitted", "--mu", "median"], "--as_submitted does not use --mu; drop it"),
        (
            ["--attack", "mico-winner", "--global_variance", "--stable_logit_scaling"],
            "--attack mico-winner does not use --global_variance, --stable_logit_scaling; drop them",
        ),
        (["--online_attack", "--offline-test", "reference"], "--online_attack does not use --offline-test"),
        (["--offline-test", "reference", "--min-shadows", "3"], "does not use --min-shadows"),
        (["--seed", "3"], "--attack lira does not use --seed"),
        (["--attack", "calibrated", "--rmia-gamma", "2"], "does not use --rmia-gamma"),
        (["--seed", "-1", "--attack", "rmia"], "argument --seed: expected an integer >= 0, got '-1'"),
        (["--attack", "rmia", "--rmia-population", "0"], "argument --rmia-population: expected a positive integer"),
    ],
)
def test_run_lira_mia_refuses_flags_that_do_nothing(flags, message, capsys):
    with pytest.raises(SystemExit) as e:
        run_lira_mia.parse_args(["--challenge", TRACK, *flags])
    assert e.value.code == 2 and message in capsys.readouterr().err.splitlines()[-1]


@pytest.mark.parametrize(
    "flags",
    [
        ["--attack", "rmia", "--online_attack", "--seed", "3", "--rmia-population", "300"],
        ["--as_submitted", "--global_variance", "--online_attack"],
        ["--attack", "classifier", "--seed", "2"],
        ["--offline-test", "reference", "--global_variance"],
        ["--online_attack", "--mu", "median", "--min-shadows", "3"],
        ["--compare", "--seed", "3", "--rmia-population", "300", "--min-shadows", "3"],  # shared by the rows
    ],
)
def test_run_lira_mia_accepts_flags_that_act(flags):
    run_lira_mia.parse_args(["--challenge", TRACK, *flags])


def test_compare_commands_carry_only_the_flags_each_row_uses():
    """Every --compare row's reproduce command, with options shared from the command line, is accepted."""
    shared = dict(seed=3, rmia_population=300, min_shadows=3, rmia_gamma=2.0)
    for _, row in COMPARE:
        options = dataclasses.replace(row, **shared)
        flags = run_lira_mia.option_flags(options)
        _, again = run_lira_mia.parse_args(["--challenge", TRACK, *flags])
        assert run_lira_mia.option_flags(again) == flags and again.unused() == []
        assert ("--seed" in flags) == (row.attack in ("rmia", "classifier", "stacked", "auto"))


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--batch-size", "0"], "argument --batch-size: expected a positive integer, got '0'"),
        (["--batch-size", "-4"], "--batch-size"),
        (["--threads", "0"], "--threads"),
    ],
)
def test_save_preds_flag_ranges(small_challenge, flags, message, capsys):
    with pytest.raises(SystemExit) as e:
        save_preds.main(["--challenge", TRACK, "--data-dir", small_challenge, "--device", "cpu", *flags])
    assert e.value.code == 2 and message in capsys.readouterr().err.splitlines()[-1]


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--synthetic", "--seed", "-1"], "--seed"),
        (["--synthetic", "--epochs", "0"], "--epochs"),
        (["--synthetic", "--threads", "0"], "--threads"),
        (["--threads", "2"], "--threads only applies with --synthetic"),
    ],
)
def test_download_files_flag_ranges(tmp_path, flags, message, capsys):
    with pytest.raises(SystemExit) as e:
        download_files.parse_args(["--challenge", TRACK, "--data-dir", str(tmp_path), *flags])
    assert e.value.code == 2 and message in capsys.readouterr().err.splitlines()[-1]


@pytest.fixture
def torch_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_threads_flag_sets_torchs_threads(small_copy, torch_threads, capsys):
    data_dir, cache_dir = small_copy
    torch.set_num_threads(2)
    argv = ["--challenge", TRACK, "--data-dir", data_dir, "--cache-dir", cache_dir, "--device", "cpu"]
    assert save_preds.main([*argv, "--threads", "1"]) == 0
    assert torch.get_num_threads() == 1
    torch.set_num_threads(2)
    assert save_preds.main(argv) == 0  # no --threads: torch's own choice is left alone
    assert torch.get_num_threads() == 2
    for script in (save_preds, train_shadows, download_files):
        assert "--threads" in _help(script, capsys)


def _help(script, capsys) -> str:
    with pytest.raises(SystemExit):
        script.parse_args(["--help"])
    return capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Files that would have raised a traceback, or been trusted
# ---------------------------------------------------------------------------------------------


def _forge_training_set(folder, shape, data: bytes) -> str:
    """A training_set.npy with the header ``shape`` over ``data``, and a checksum that matches it."""
    path = os.path.join(folder, membership.TRAINING_SET)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<i8", "fortran_order": False, "shape": shape})
        f.write(data)
    Path(folder, membership.CHECKSUM).write_text(fileio.file_digest(path) + "\n")
    return path


@pytest.mark.parametrize(
    "shape, n_data, why",
    [((10**13,), 700, "10000000000000 indices, expected 700"), ((700,), 699, "header announces 5600 bytes")],
)
def test_training_set_header_is_checked_before_loading(tmp_path, shape, n_data, why):
    """A header claiming 10^13 rows was allocated (MemoryError); now refused in one line."""
    path = _forge_training_set(str(tmp_path), shape, np.arange(n_data, dtype="<i8").tobytes())
    with pytest.raises(membership.MembershipError) as ei:
        membership.read_training_set(str(tmp_path), 1200, 700)
    _one_line(str(ei.value), path, why, "train_shadows.py")


def _challenge_json(data_dir, edit) -> str:
    path = os.path.join(data_dir, TRACK, "challenge.json")
    d = json.loads(Path(path).read_text())
    Path(path).write_text(json.dumps(edit(d)))
    return path


def _outside(d, data_dir, absolute):
    """The dataset moved out of the track folder, and challenge.json pointing at it."""
    outside = os.path.join(os.path.dirname(data_dir), "elsewhere", "dataset_purchase")
    os.makedirs(os.path.dirname(outside))
    os.replace(os.path.join(data_dir, TRACK, d["dataset"]), outside)
    return {**d, "dataset": outside if absolute else os.path.relpath(outside, os.path.join(data_dir, TRACK))}


@pytest.mark.parametrize(
    "edit, why",
    [
        (lambda d, data_dir: list(d.items()), "a JSON list, not an object"),
        (lambda d, data_dir: "purchase100", "a JSON str, not an object"),
        (lambda d, data_dir: _outside(d, data_dir, absolute=False), "lies outside"),
        (lambda d, data_dir: _outside(d, data_dir, absolute=True), "lies outside"),
    ],
    ids=["list", "string", "relative-outside", "absolute-outside"],
)
def test_challenge_json_is_an_object_and_its_dataset_is_inside(small_copy, capsys, edit, why):
    data_dir, cache_dir = small_copy
    path = _challenge_json(data_dir, lambda d: edit(d, data_dir))
    argv = ["--challenge", TRACK, "--data-dir", data_dir, "--cache-dir", cache_dir, "--device", "cpu"]
    code, lines = run_script(save_preds.main, "save_preds.py", argv, capsys)
    assert code != 0
    _one_line(lines[-1], "save_preds.py: ", path, why, "download_files.py --synthetic")
    assert not os.path.exists(cache_dir)
