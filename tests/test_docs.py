"""The guide and what it promises: README length, links that lead somewhere, the Makefile's
overridable folders, and `run_lira_mia.py --help` naming the real default attack."""

import os
import shutil
import subprocess

import pytest

import run_lira_mia
from attacks.options import AttackOptions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_help_names_the_real_default_attack():
    default = AttackOptions()
    flags = (default.global_variance, default.online_attack, default.logit_scaling, default.stable_logit_scaling)
    assert default.attack == "lira" and not any(flags)
    text = " ".join(run_lira_mia.build_parser().format_help().split())
    assert "The default attack is offline LiRA, none of its four flags set" in text
    assert "default attack is LiRA with the runner-up's four flags" not in text


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_makefile_report_folder_can_be_overridden():
    folders = ["DATA=/d", "CACHE=/c", "REPORT=/r"]
    out = subprocess.run(
        ["make", "-n", "-C", ROOT, "demo", "compare", "clean", *folders],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "report/demo" not in out
    assert out.count("--report-dir /r ") == 2
    assert "rm -rf /d /c /r" in out
