"""The package's lazy re-exports and the ``TYPE_CHECKING`` mirror that IDEs and type checkers read
name the same objects, so neither can drift from the other."""

from __future__ import annotations

import ast
from pathlib import Path

import instantstyle

INIT = Path(instantstyle.__file__)


def _type_checking_imports() -> dict[str, tuple[str, str]]:
    tree = ast.parse(INIT.read_text())
    found: dict[str, tuple[str, str]] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom) and stmt.level == 1 and stmt.module, ast.unparse(stmt)
                for alias in stmt.names:
                    # `import X as X` marks a re-export for type checkers and linters
                    assert alias.asname == alias.name, ast.unparse(stmt)
                    found[alias.name] = (stmt.module, alias.name)
    return found


def test_type_checking_mirror_matches_lazy_exports():
    assert _type_checking_imports() == instantstyle._EXPORTS
    assert set(instantstyle.__all__) == {"__version__", *instantstyle._EXPORTS}


def test_mirror_check_can_fail(monkeypatch):
    monkeypatch.setitem(instantstyle._EXPORTS, "Extra", ("blocks", "Extra"))
    assert _type_checking_imports() != instantstyle._EXPORTS
