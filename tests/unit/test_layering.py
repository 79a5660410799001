"""The package's dependency rules (docs/design.md, module map), checked on its imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "rindle"
WEB_ONLY = ("flask", "flask_cors", "werkzeug", "gunicorn")


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (function-level imports too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
# rindle/__init__.py names init_app too, but imports it only when first asked (PEP 562).
OUTSIDE_WEB = sorted(p for p in MODULES.values() if "web" not in p.relative_to(PACKAGE).parts)


@pytest.mark.parametrize("path", OUTSIDE_WEB, ids=module_name)
def test_nothing_outside_the_web_layer_imports_flask_or_the_web_layer(path: Path) -> None:
    found = imports(path)
    if path == PACKAGE / "__init__.py":
        found = module_level_imports(path, "rindle")  # its lazy init_app is in a function
    bad = {
        name for name in found if name.split(".")[0] in WEB_ONLY or name.startswith("rindle.web")
    }
    assert not bad, f"{module_name(path)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", OUTSIDE_WEB, ids=module_name)
def test_importing_the_core_loads_no_web_framework(path: Path) -> None:
    """At run time, in a fresh interpreter: what a module imports through others counts too
    (``from rindle import hooks`` runs ``rindle/__init__.py`` first)."""
    name = module_name(path)
    code = (
        f"import sys, importlib; importlib.import_module({name!r}); "
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in "
        f"{WEB_ONLY!r}}} | {{'rindle.web'}} & set(sys.modules))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PACKAGE.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [], f"import {name} loads {done.stdout.split()}"


def test_init_app_is_still_importable_from_the_package() -> None:
    code = (
        "import sys, rindle; assert 'flask' not in sys.modules; "
        "from rindle import init_app; from rindle.web import init_app as web_init_app; "
        "assert init_app is web_init_app and 'flask' in sys.modules; "
        "assert sorted(rindle.__all__) == sorted(set(rindle.__all__)); "
        "assert all(hasattr(rindle, n) for n in rindle.__all__)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


# -- no import cycles ------------------------------------------------------------------


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def module_level_imports(path: Path, name: str, in_functions: bool = False) -> set[str]:
    """The modules that ``path`` (module ``name``) imports when it is loaded:
    statements outside functions (class bodies, ``if``, ``try`` and ``with`` count), not
    under ``if TYPE_CHECKING``. ``from a import b`` is an import of ``a.b`` when that is a
    module, else of ``a``. The parents of a module (``import a.b`` runs ``a`` first) are
    not counted: Python has started loading those before any of their children. With
    ``in_functions``, the imports inside functions count too."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def absolute(module: str | None, level: int) -> str:
        if not level:
            return module or ""
        base = name.split(".")
        base = base[: len(base) - level + (1 if is_package else 0)]
        return ".".join([*base, module] if module else base)

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not in_functions:
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = absolute(node.module, node.level)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    found.add(sub if sub in MODULES else base)
            elif isinstance(node, ast.If):
                if not is_type_checking(node.test):
                    visit(node.body)
                visit(node.orelse)
            else:  # classes, loops, with, try, match: their statements run on import
                for field in ("body", "orelse", "finalbody"):
                    visit(getattr(node, field, []))
                for block in [*getattr(node, "handlers", []), *getattr(node, "cases", [])]:
                    visit(block.body)

    visit(ast.parse(path.read_text(), str(path)).body)
    return found - {name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def import_graph(in_functions: bool) -> dict[str, set[str]]:
    return {
        name: module_level_imports(path, name, in_functions) & MODULES.keys()
        for name, path in MODULES.items()
    }


def test_no_import_cycle_in_the_package() -> None:
    assert cycles(import_graph(in_functions=False)) == []


def test_no_import_cycle_hidden_inside_a_function() -> None:
    """A module that imports another inside a function because that one imports it back
    still has a loop (``rindle/__init__.py``'s lazy ``init_app`` closes none)."""
    assert cycles(import_graph(in_functions=True)) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_module_level_imports_skip_functions_and_type_checking(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "from rindle import hooks, Settings\n"
        "from . import store\n"
        "if TYPE_CHECKING:\n    from rindle.core import Rindle\n"
        "try:\n    import rindle.lease\nexcept ImportError:\n    import rindle.keys\n"
        "def f():\n    import rindle.writer\n"
        "class C:\n    from rindle import upload\n"
    )
    found = module_level_imports(source, "rindle.m")
    found.discard("typing")
    assert module_level_imports(source, "rindle.m", in_functions=True) - found == {
        "typing",
        "rindle.writer",
    }
    expected = {
        "rindle.hooks",
        "rindle",
        "rindle.store",
        "rindle.lease",
        "rindle.keys",
        "rindle.upload",
    }
    assert found == expected


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=module_name)
def test_the_package_never_imports_the_example_deployment(path: Path) -> None:
    bad = {
        name
        for name in imports(path)
        if name.split(".")[0] in ("app", "workers", "devstack", "demo")
    }
    assert not bad, f"{module_name(path)} imports {sorted(bad)}"


def test_storage_knows_nothing_of_redis_or_the_core() -> None:
    for path in (PACKAGE / "storage").glob("*.py"):
        core = {"rindle.store", "rindle.lease", "rindle.writer", "rindle.core", "rindle.jobs"}
        bad = {n for n in imports(path) if n.split(".")[0] == "redis" or n in core}
        assert not bad, f"{module_name(path)} imports {sorted(bad)}"
