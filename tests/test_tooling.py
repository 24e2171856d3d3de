"""The two set-up commands and the checks behind them: the README opens with them, CI runs the
second, it runs the README's test command, and the import-layer contract catches a violation."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
MAKEFILE = (ROOT / "Makefile").read_text()
TEST_COMMAND = "OMP_NUM_THREADS=1 python -m pytest -q -n 2 --dist worksteal"


def _recipe(target: str) -> str:
    lines = MAKEFILE.split(f"\n{target}:", 1)[1].splitlines()[1:]
    return "\n".join(
        line for line in lines[: next((i for i, x in enumerate(lines) if not x.startswith("\t")), None)]
    )


def test_readme_opens_with_the_two_commands():
    first = README.split("\n## ")[1]
    block = first.split("```bash\n")[1].split("```")[0]
    assert [line.split("#")[0].strip() for line in block.splitlines()] == ["make demo", "make test"]


def test_ci_runs_make_test_which_runs_the_readme_test_command():
    assert TEST_COMMAND in README
    assert TEST_COMMAND in _recipe("test")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert "make test" in ci and ci[-1] == "make test"
    for check in ("ruff format --check", "ruff check .", "lint-imports", "basedpyright"):
        assert check in _recipe("lint")


@pytest.mark.skipif(shutil.which("lint-imports") is None, reason="lint-imports comes with the dev extra")
def test_import_contract_fails_on_a_layer_violation(tmp_path):
    # A copy of the package in which a leaf (errors) imports a front end (cli).
    shutil.copytree(
        ROOT / "src" / "instantstyle",
        tmp_path / "src" / "instantstyle",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    errors = tmp_path / "src" / "instantstyle" / "errors.py"
    errors.write_text(errors.read_text() + "\n\ndef _violation():\n    from . import cli  # noqa: F401\n")
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "PYTHONPATH": str(tmp_path / "src")}
    out = subprocess.run(
        ["lint-imports", "--no-cache", "--contract", "layers"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert "instantstyle.errors is not allowed to import instantstyle.cli" in out.stdout
    assert "instantstyle.errors -> instantstyle.cli" in out.stdout
