"""The library's shape: the core never imports a paper module, no module is too long, the
registries find every name a paper registers and reject what they do not know."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ADVLIB = ROOT / "advlib"
CORE = [p for p in ADVLIB.rglob("*.py") if "papers" not in p.relative_to(ADVLIB).parts]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            names.update(a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str))
    return names


def test_there_is_a_core_to_check():
    assert len(CORE) > 20 and any(p.name == "experiment.py" for p in CORE)


@pytest.mark.parametrize("path", CORE, ids=lambda p: str(p.relative_to(ROOT)))
def test_core_module_imports_no_paper_module(path):
    bad = sorted(n for n in _imports(path) if n == "advlib.papers" or n.startswith("advlib.papers."))
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}: the core stays paper-agnostic"


def test_the_check_would_catch_a_paper_import(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import os\nfrom advlib.papers import mtd\nimportlib.import_module('advlib.papers.cwat')\n")
    assert {"advlib.papers", "advlib.papers.mtd", "advlib.papers.cwat"} <= _imports(f)


@pytest.mark.parametrize("path", sorted(ADVLIB.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_over_400_lines(path):
    n = len(path.read_text(encoding="utf-8").splitlines())
    assert n <= 400, f"{path.relative_to(ROOT)} has {n} lines: split it along a seam a reader would name"


@pytest.mark.parametrize("path", sorted(ADVLIB.rglob("__init__.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_init_files_only_re_export(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    allowed = (ast.Import, ast.ImportFrom, ast.Assign, ast.Expr)
    kinds = sorted({type(n).__name__ for n in tree.body if not isinstance(n, allowed)})
    assert not kinds, f"{path.relative_to(ROOT)} holds {kinds}; logic belongs in a module"


def test_nothing_refers_outside_the_repository():
    for path in [ROOT / "README.md", *ADVLIB.rglob("*.py")]:
        assert "shared/" not in path.read_text(encoding="utf-8"), path


def test_registries_know_the_papers_names_and_reject_typos():
    import advlib.papers.mtd  # noqa: F401  (registers cls, loc, con, mtd)
    from advlib.attacks import OBJECTIVES, PRESETS
    from advlib.recipes import RECIPES, make_recipe

    assert {"std", "cls", "loc", "con", "mtd"} <= set(RECIPES)
    assert {"cls", "loc", "multibox", "mda", "toa", "owa", "cwa", "dag", "rap", "dfool", "shrink"} <= set(OBJECTIVES)
    assert {"A_cls", "A_loc", "DAG", "DAG-orig", "RAP", "RAP-label", "RAP-shape", "CWA"} <= set(PRESETS)
    with pytest.raises(ValueError, match="unknown recipe 'mdt'; registered: .*mtd"):
        make_recipe("mdt")
    with pytest.raises(ValueError, match="recipe 'mtd' has no parameter 'step'"):
        make_recipe("mtd", step=3)
    assert make_recipe("mtd", steps=10).spec()["attack"]["steps"] == 10


def test_registry_refuses_a_second_entry_under_a_name():
    from advlib.registry import Registry

    r = Registry("thing")
    r.add("a", 1)
    with pytest.raises(ValueError, match="already registered"):
        r.add("a", 2)
    assert r.add("a", 2, replace=True) == 2 and r["a"] == 2
    with pytest.raises(ValueError, match="non-empty"):
        r.add("", 3)


def test_a_paper_recipe_is_found_by_name_without_importing_the_paper():
    import subprocess
    import sys

    code = ("import sys\nfrom advlib.recipes import RECIPES\nassert 'advlib.papers.cwat' not in sys.modules\n"
            "print(RECIPES.build('cwat', steps=1).name, 'advlib.papers.cwat' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["cwat", "True"]
