"""The package's dependency rules (docs/design.md, module map), checked on its imports."""

from __future__ import annotations

import ast
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


# rindle/__init__.py is the curated API: it re-exports init_app from the web layer.
OUTSIDE_WEB = sorted(
    p
    for p in PACKAGE.rglob("*.py")
    if "web" not in p.relative_to(PACKAGE).parts and p != PACKAGE / "__init__.py"
)


@pytest.mark.parametrize("path", OUTSIDE_WEB, ids=module_name)
def test_nothing_outside_the_web_layer_imports_flask_or_the_web_layer(path: Path) -> None:
    bad = {
        name
        for name in imports(path)
        if name.split(".")[0] in WEB_ONLY or name.startswith("rindle.web")
    }
    assert not bad, f"{module_name(path)} imports {sorted(bad)}"


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
