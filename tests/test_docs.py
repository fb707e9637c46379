"""The guide and what it promises: README length, links that lead somewhere, the Makefile's
overridable folders, and `run_lira_mia.py --help` naming the real default attack."""

import itertools
import os
import re
import shutil
import subprocess

import pytest

import run_lira_mia
from attacks.options import AttackOptions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README_MAX_LINES = 220
# Pages that other branches of this round write; the README already links them. Remove each entry
# once its page is merged (the test then checks it like any other link).
PENDING_PAGES: set[str] = set()  # pages linked before they exist (none now)
# [text](target) and ![alt](target); a target ends at whitespace or ')'.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _markdown_files():
    docs = os.path.join(ROOT, "docs")
    return [os.path.join(ROOT, "README.md")] + sorted(
        os.path.join(docs, f) for f in os.listdir(docs) if f.endswith(".md")
    )


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: str) -> set:
    with open(path, encoding="utf-8") as f:
        text = re.sub(r"```.*?```", "", f.read(), flags=re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, flags=re.M)}


def _relative_links(path: str):
    """(target file relative to ROOT, anchor or None) of every relative link in a markdown file."""
    with open(path, encoding="utf-8") as f:
        text = re.sub(r"```.*?```", "", f.read(), flags=re.S)
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # http:, https:, mailto:
        file, _, anchor = target.partition("#")
        file = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
        yield os.path.relpath(file, ROOT), anchor or None


def test_readme_is_a_short_guide():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        n = len(f.read().splitlines())
    assert n < README_MAX_LINES, f"README.md has {n} lines; move details to docs/"
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        assert "make test" in f.read()


def test_every_relative_link_leads_to_a_file_and_heading():
    broken = []
    for md in _markdown_files():
        for file, anchor in _relative_links(md):
            where = f"{os.path.relpath(md, ROOT)} -> {file}{'#' + anchor if anchor else ''}"
            if file in PENDING_PAGES and not os.path.exists(os.path.join(ROOT, file)):
                continue
            if not os.path.exists(os.path.join(ROOT, file)):
                broken.append(where + " (no such file)")
            elif anchor and file.endswith(".md") and anchor not in _anchors(os.path.join(ROOT, file)):
                broken.append(where + " (no such heading)")
    assert not broken, "broken links: " + "; ".join(broken)


def test_link_checker_sees_a_broken_link(tmp_path):
    md = tmp_path / "x.md"
    md.write_text("[a](missing.md) [b](https://example.org) [c](#here)\n## Here\n")
    links = [(os.path.basename(f), a) for f, a in _relative_links(str(md))]
    assert links == [("missing.md", None), ("x.md", "here")]
    assert _anchors(str(md)) == {"here"}
    assert _slug("3. The LiRA reference code's test (`plot.py`)") == "3-the-lira-reference-codes-test-plotpy"


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
    assert out.count('--report-dir "/r" ') == 2
    assert 'rm -rf "/d" "/c" "/r"' in out  # quoted: tests/test_makefile.py


def test_as_submitted_refuses_the_six_combinations_the_docs_name():
    """docs/flags.md and the README: all 16 combinations of the four LiRA flags work; with
    --as_submitted the 6 that pair --online_attack with a scaling flag are refused."""
    refused = []
    for gv, oa, ls, ss in itertools.product([False, True], repeat=4):
        flags = dict(global_variance=gv, online_attack=oa, logit_scaling=ls, stable_logit_scaling=ss)
        AttackOptions(**flags)
        try:
            AttackOptions(as_submitted=True, **flags)
        except ValueError:
            refused.append(flags)
    assert len(refused) == 6
    assert all(f["online_attack"] and (f["logit_scaling"] or f["stable_logit_scaling"]) for f in refused)
