"""The import rules of the README's architecture section, checked by parsing every file's imports.

- challenges/ (MICO format, splits, layout, cache, scoring, reports, downloads) imports nothing of
  ours outside itself;
- attacks/ is pure array maths: it imports only attacks/;
- models/ may import challenges/ for the track constants only (challenges.tracks);
- production/ (model production) sits above models/ and challenges/, never above attacks/;
- the scripts sit on top; no package imports a script;
- no function-local imports of our own packages, anywhere.
"""

import ast
import os

import pytest

from tests.conftest import ROOT

PACKAGES = ("attacks", "challenges", "models", "production")
SCRIPTS = ("download_files", "save_preds", "run_lira_mia", "save_zip", "train_shadows")
OURS = PACKAGES + SCRIPTS + ("tests", "bench")
ALLOWED = {  # package -> modules of ours it may import (prefix match on dotted names)
    "challenges": ("challenges",),
    "attacks": ("attacks",),
    "models": ("models", "challenges.tracks"),
    "production": ("production", "models", "challenges"),
}


def _python_files():
    for top in PACKAGES + ("tests", "bench"):
        for name in sorted(os.listdir(os.path.join(ROOT, top))):
            if name.endswith(".py"):
                yield os.path.join(top, name)
    for name in SCRIPTS:
        yield name + ".py"


def _imports(relpath):
    """(dotted module, lineno, inside a function?) for every import of the file."""
    package = relpath.split(os.sep)[0] if os.sep in relpath else None
    tree = ast.parse(open(os.path.join(ROOT, relpath)).read(), relpath)
    out = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend((a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: inside the file's own package
                    base = f"{package}.{base}" if base else package
                names = [f"{base}.{a.name}" for a in child.names] if not child.module else [base]
                out.extend((n, child.lineno, in_function) for n in names)
            visit(child, nested)

    visit(tree, False)
    return out


def _ours(module):
    return module.split(".")[0] in OURS


@pytest.mark.parametrize("relpath", list(_python_files()))
def test_imports_run_downhill(relpath):
    package = relpath.split(os.sep)[0] if os.sep in relpath else None
    for module, line, in_function in _imports(relpath):
        if not _ours(module):
            continue
        assert not in_function, f"{relpath}:{line}: function-local import of {module}"
        if package in ALLOWED:
            ok = any(module == a or module.startswith(a + ".") for a in ALLOWED[package])
            assert ok, f"{relpath}:{line}: {package}/ must not import {module}"


def test_the_rules_can_fail(tmp_path, monkeypatch):
    """The checker sees an upward import and a function-local one (so the test above can fail)."""
    pkg = tmp_path / "attacks"
    pkg.mkdir()
    (pkg / "bad.py").write_text("import numpy\nfrom challenges import layout\n\ndef f():\n    import models\n")
    monkeypatch.setattr("tests.test_architecture.ROOT", str(tmp_path))
    found = _imports(os.path.join("attacks", "bad.py"))
    assert ("challenges", 2, False) in found and ("models", 5, True) in found
    with pytest.raises(AssertionError, match="must not import challenges"):
        test_imports_run_downhill(os.path.join("attacks", "bad.py"))
