"""Every expected failure is one line that names its file or folder and a fix."""

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

import run_lira_mia
import save_preds
from challenges import cache, fileio, layout, submission
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
    with pytest.raises(cache.CacheError) as ei:
        run_lira_mia.main(
            ["--challenge", TRACK, "--data-dir", data_dir, "--cache-dir", cache_dir, "--report-dir", str(tmp_path)]
        )
    _one_line(str(ei.value), md.model_file, "re-download")
