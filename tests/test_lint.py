"""`make lint` catches what it is there for (an unused import, an unformatted line, a mistyped value, also
inside an unannotated function) with this project's configuration, and `make test` runs it before pytest."""

import re
import subprocess
import sys

import pytest

from helpers.config import REPO_ROOT

PYPROJECT = REPO_ROOT / "pyproject.toml"


def ruff(*args: str, source: str) -> subprocess.CompletedProcess:
    """ruff on `source` as if it were a file of helpers/, with the repository's configuration."""
    pytest.importorskip("ruff", reason="ruff is installed by the test extra")
    command = [sys.executable, "-m", "ruff", *args, "--config", str(PYPROJECT), "--stdin-filename", "helpers/x.py"]
    return subprocess.run([*command, "-"], input=source, capture_output=True, text=True)


def mypy(source: str, tmp_path) -> subprocess.CompletedProcess:
    """mypy on `source` with the repository's configuration (a file named on the command line replaces its
    `files`)."""
    pytest.importorskip("mypy", reason="mypy is installed by the test extra")
    file = tmp_path / "example.py"
    file.write_text(source)
    command = ["-m", "mypy", "--config-file", str(PYPROJECT), "--cache-dir", str(tmp_path / "cache"), str(file)]
    return subprocess.run([sys.executable, *command], capture_output=True, text=True)


def test_ruff_reports_an_unused_import_with_its_line():
    result = ruff("check", source="import json\n")
    assert result.returncode == 1 and "F401" in result.stdout and "x.py:1:8" in result.stdout, result.stdout


def test_ruff_reports_imports_out_of_order():
    result = ruff("check", source="import torch\nimport os\n\nprint(os, torch)\n")
    assert result.returncode == 1 and "I001" in result.stdout, result.stdout


def test_the_format_check_fails_on_an_unformatted_line_and_passes_a_formatted_one():
    assert ruff("format", "--check", source="PAD = ( 4 )\n").returncode == 1
    assert ruff("format", "--check", source="PAD = 4\n").returncode == 0


def test_mypy_reports_a_mistyped_return(tmp_path):
    result = mypy("def size() -> int:\n    return 'four'\n", tmp_path)
    assert result.returncode == 1 and "example.py:2: error" in result.stdout, result.stdout


def test_mypy_checks_the_bodies_of_unannotated_functions_too(tmp_path):
    # Without check_untyped_defs, mypy only notes this line and passes.
    result = mypy("def size():\n    width: int = 'four'\n    return width\n", tmp_path)
    assert result.returncode == 1 and "example.py:2: error" in result.stdout, result.stdout


def test_make_test_lints_before_it_runs_pytest():
    dry_run = subprocess.run(["make", "-n", "test"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    lines = dry_run.stdout.splitlines()

    def first(pattern: str) -> int:
        return next(i for i, line in enumerate(lines) if re.search(pattern, line))

    pytest_at = first(r"-m pytest\b")
    for check in (r"ruff check\b", r"ruff format --check\b", r"\bmypy\b"):
        assert first(check) < pytest_at, f"`make test` runs pytest before {check}:\n{dry_run.stdout}"
