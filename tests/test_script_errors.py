"""What a script says when a folder it writes is read-only or not a folder, a flag is out of range,
or --help is read: one line naming the path or the flag, and the fix; never a bare [Errno ...]."""

import errno
import os
import re

import pytest

import download_files
import run_lira_mia
import save_preds
import save_zip
import train_shadows
from tests.conftest import run_script

TRACK, SCENARIO = "purchase100", "purchase100_inf"
SYNTHETIC = ["--synthetic", "--n-points", "600", "--len-training", "300", "--n-train", "2", "--n-dev", "1"]
SYNTHETIC += ["--n-final", "1", "--epochs", "1", "--scenario", SCENARIO, "--device", "cpu"]


def _no_errno(lines, *must):
    assert len(lines) == 1, lines
    assert "[Errno" not in lines[0] and "Traceback" not in lines[0], lines[0]
    for m in must:
        assert m in lines[0], (m, lines[0])


@pytest.fixture
def read_only(monkeypatch):
    """Make folders under the returned set of roots refuse new entries, as a read-only mount does
    (the suite may run as root, which chmod does not stop)."""
    roots = []
    mkdir = os.mkdir

    def refuse(path, *args, **kwargs):
        if any(os.path.abspath(path).startswith(r + os.sep) for r in roots):
            raise PermissionError(errno.EROFS, os.strerror(errno.EROFS), path)
        return mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", refuse)
    return roots


# ---------------------------------------------------------------------------------------------
# download_files.py --synthetic
# ---------------------------------------------------------------------------------------------


def test_download_into_a_file_names_the_file(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    argv = ["--challenge", TRACK, "--data-dir", str(tmp_path / "afile" / "data"), *SYNTHETIC]
    code, lines = run_script(download_files.main, "download_files.py", argv, capsys)
    assert code == 1
    _no_errno(lines, f"{tmp_path / 'afile'} is a file, not a folder", "choose another path")


def test_download_into_a_read_only_folder_names_it(tmp_path, capsys, read_only):
    read_only.append(str(tmp_path / "ro"))
    (tmp_path / "ro").mkdir()
    argv = ["--challenge", TRACK, "--data-dir", str(tmp_path / "ro"), *SYNTHETIC]
    code, lines = run_script(download_files.main, "download_files.py", argv, capsys)
    assert code == 1
    _no_errno(lines, str(tmp_path / "ro" / TRACK), "Read-only file system", "choose another folder")


# ---------------------------------------------------------------------------------------------
# train_shadows.py
# ---------------------------------------------------------------------------------------------


def _shadows(data_dir, *extra):
    return ["--challenge", TRACK, "--data-dir", data_dir, "--scenario", SCENARIO, "--n", "2", "--epochs", "1", *extra]


def test_train_shadows_where_shadow_is_a_file(small_copy, capsys):
    data_dir, _ = small_copy
    shadow = os.path.join(data_dir, TRACK, SCENARIO, "shadow")
    open(shadow, "w").close()
    argv = _shadows(data_dir, "--design", "balanced", "--device", "cpu")
    code, lines = run_script(train_shadows.main, "train_shadows.py", argv, capsys)
    assert code == 1
    _no_errno([ln for ln in lines if "train_shadows.py:" in ln], shadow, "is a file, not a folder")


def test_train_shadows_on_a_read_only_scenario(small_copy, capsys, read_only):
    data_dir, _ = small_copy
    scenario_dir = os.path.join(data_dir, TRACK, SCENARIO)
    read_only.append(scenario_dir)
    argv = _shadows(data_dir, "--design", "balanced", "--device", "cpu")
    code, lines = run_script(train_shadows.main, "train_shadows.py", argv, capsys)
    assert code == 1
    _no_errno([ln for ln in lines if "train_shadows.py:" in ln], os.path.join(scenario_dir, "shadow"), "Read-only")


# ---------------------------------------------------------------------------------------------
# Reports (run_lira_mia.py --evaluate)
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def cached_small(small_copy):
    data_dir, cache_dir = small_copy
    argv = ["--challenge", TRACK, "--data-dir", data_dir, "--cache-dir", cache_dir, "--device", "cpu"]
    assert save_preds.main(argv) == 0
    return data_dir, cache_dir


def _evaluate(data_dir, cache_dir, report_dir):
    return ["--challenge", TRACK, "--data-dir", data_dir, "--cache-dir", cache_dir, "--report-dir", report_dir]


def test_report_into_a_file_names_it(cached_small, tmp_path, capsys):
    (tmp_path / "rep").write_text("x")
    argv = [*_evaluate(*cached_small, str(tmp_path / "rep")), "--evaluate"]
    code, lines = run_script(run_lira_mia.main, "run_lira_mia.py", argv, capsys)
    assert code == 1
    _no_errno(lines[-1:], str(tmp_path / "rep"), "is a file, not a folder")


def test_report_into_a_read_only_folder_names_it(cached_small, tmp_path, capsys, read_only):
    (tmp_path / "ro").mkdir()
    read_only.append(str(tmp_path / "ro"))
    argv = [*_evaluate(*cached_small, str(tmp_path / "ro")), "--evaluate"]
    code, lines = run_script(run_lira_mia.main, "run_lira_mia.py", argv, capsys)
    assert code == 1
    _no_errno(lines[-1:], str(tmp_path / "ro" / TRACK), "Read-only", "choose another folder")


# ---------------------------------------------------------------------------------------------
# Flags and --help
# ---------------------------------------------------------------------------------------------


def test_save_preds_negative_seed_is_a_usage_error_naming_the_flag(small_copy, capsys):
    data_dir, cache_dir = small_copy
    argv = ["--challenge", TRACK, "--data-dir", data_dir, "--cache-dir", cache_dir, "--seed", "-1"]
    code, lines = run_script(save_preds.main, "save_preds.py", argv, capsys)
    assert code == 2 and "--seed" in lines[-1] and "-1" in lines[-1]
    assert not os.path.exists(cache_dir)


@pytest.mark.parametrize("script", [download_files, save_preds, run_lira_mia, save_zip, train_shadows])
def test_help_names_only_the_scripts_own_options(script, capsys):
    """save_zip.py --help said '--global_variance = --global-variance', an option it does not have."""
    with pytest.raises(SystemExit):
        script.main(["--help"])
    out = capsys.readouterr().out
    # The options listed (each line of the options table starts with one) and their '_' spellings.
    own = set(re.findall(r"^\s+(?:-\w, )?(--[a-z][a-z_-]*)", out, re.M))
    spell = {o.replace("_", "-") for o in own}
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z_-]*[a-z]", out))
    assert {o for o in named if o.replace("_", "-") not in spell} == set()
