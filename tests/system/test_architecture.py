"""The floor plan holds: the import-linter contracts, modules of a readable size with unique names,
subpackages that say what they hold, nothing importing the package root from inside."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "resource_router"
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_the_layers_and_the_absence_of_import_circles_are_kept() -> None:
    lint = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(lint).exists():
        pytest.skip("import-linter is not installed")
    out = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 kept, 0 broken" in out.stdout


def test_modules_stay_readable_and_are_named_once() -> None:
    sizes = {p.relative_to(PACKAGE).as_posix(): len(p.read_text().splitlines()) for p in MODULES}
    too_big = {name: n for name, n in sizes.items() if n > 500}
    assert not too_big, f"split these by concept: {too_big}"
    names = Counter(p.name for p in MODULES if p.name not in ("__init__.py", "__main__.py"))
    assert [n for n, count in names.items() if count > 1] == []
    assert not [p for p in MODULES if p.stem in ("utils", "common", "helpers", "misc")]


def test_every_subpackage_says_what_it_holds() -> None:
    for init in PACKAGE.rglob("__init__.py"):
        if init.parent == PACKAGE:
            continue
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 80, f"{init.relative_to(ROOT)} needs a docstring saying what lives there"


def test_no_module_imports_the_package_root() -> None:
    """The root re-exports the public API; a module importing it would import everything (and make
    circles that import-linter cannot see through the root)."""
    offenders = []
    for path in MODULES:
        if path == PACKAGE / "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (
                node.module == "resource_router" or (node.level == 1 and node.module is None and path.parent == PACKAGE)
            ):
                offenders.append(path.relative_to(ROOT).as_posix())
    assert offenders == []


def test_no_comment_cites_an_issue_number() -> None:
    found = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in MODULES
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if "issue " in line.lower() and any(ch.isdigit() for ch in line.lower().split("issue ", 1)[1][:3])
    ]
    assert found == []
