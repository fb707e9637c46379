"""The Makefile quotes every path: a folder named with a space is one argument, never two."""

import os
import shlex
import shutil
import subprocess

import pytest

from tests.conftest import ROOT

MAKEFILE = os.path.join(ROOT, "Makefile")
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _make(cwd, *args) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-f", MAKEFILE, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_clean_removes_exactly_the_named_folders(tmp_path):
    """`make clean DATA="<tmp>/my data"` once ran `rm -rf <tmp>/my data ...`, which deleted ./data (the
    default home of the real challenge) and <tmp>/my, and left the named folder. Run from a scratch
    folder holding decoys of every word such a split makes, so the repository is never at risk."""
    work = tmp_path / "work"
    named = {v: tmp_path / f"my {v.lower()}" for v in ("DATA", "CACHE", "REPORT")}
    decoys = [work / "data", work / "cache", work / "report", tmp_path / "my"]
    for d in [*named.values(), *decoys]:
        d.mkdir(parents=True)
        (d / "keep").write_text("x")
    result = _make(work, "clean", *(f"{v}={p}" for v, p in named.items()))
    assert result.returncode == 0, result.stderr
    assert not any(p.exists() for p in named.values())
    assert all((d / "keep").exists() for d in decoys)


def test_every_recipe_passes_a_spaced_path_as_one_argument(tmp_path):
    """`make -n` prints the commands without running them: each path flag gets the whole path."""
    paths = {"DATA": str(tmp_path / "my data"), "CACHE": str(tmp_path / "my cache"), "REPORT": str(tmp_path / "a b")}
    result = subprocess.run(
        ["make", "-n", "-B", "demo", "compare", "clean", *(f"{k}={v}" for k, v in paths.items())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    flags = {"--data-dir": paths["DATA"], "--cache-dir": paths["CACHE"], "--report-dir": paths["REPORT"]}
    seen = set()
    for line in result.stdout.splitlines():
        words = shlex.split(line)
        for i, word in enumerate(words[:-1]):
            if word in flags:
                assert words[i + 1] == flags[word], line
                seen.add(word)
            if word == "--output":
                assert words[i + 1] == os.path.join(paths["DATA"], "predictions_purchase100.zip"), line
        if words[:2] == ["rm", "-rf"]:
            assert words[2:] == list(paths.values()), line
    assert seen == set(flags)
