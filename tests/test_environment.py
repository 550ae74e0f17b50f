"""The repository's promises about itself: one set of exact pins in constraints.txt and environment.yml
within pyproject.toml's ranges, notebooks stored as run top to bottom, and one test command for README,
make and CI."""

import json
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
import yaml
from packaging.requirements import Requirement

from helpers.config import REPO_ROOT

CONDA_TO_PIP = {"pytorch": "torch"}  # conda-forge names that differ from the PyPI ones
NOT_PACKAGES = {"python", "pip"}  # conda entries that set up the environment itself
REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:(==|=)\s*([^\s;#]+))?")
# Absolute paths of the machines the notebooks were run on; spelled out piecewise so this file holds none.
MACHINE_PATHS = tuple(f"/{root}/" for root in ("work", "tmp", "root", "home"))
NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))


def pinned(requirements, rename=None) -> dict[str, str | None]:
    """{normalised package name: pinned version or None} of requirement strings."""
    pins = {}
    for requirement in requirements:
        match = REQUIREMENT.match(requirement)
        assert match, f"cannot read the requirement {requirement!r}"
        name = match.group(1).lower().replace("_", "-")
        name = (rename or {}).get(name, name)
        if name not in NOT_PACKAGES:
            pins[name] = match.group(3)
    return pins


def pyproject_requirements() -> list[Requirement]:
    """The dependencies and every optional group of pyproject.toml."""
    with open(REPO_ROOT / "pyproject.toml", "rb") as file:
        project = tomllib.load(file)["project"]
    groups = project.get("optional-dependencies", {}).values()
    return [Requirement(line) for line in project["dependencies"] + [line for group in groups for line in group]]


def constraints_pins() -> dict[str, str | None]:
    lines = (line.split("#")[0].strip() for line in (REPO_ROOT / "constraints.txt").read_text().splitlines())
    return pinned(line for line in lines if line)


def environment_pins() -> dict[str, str | None]:
    """conda and pip entries of environment.yml together, under their pip names."""
    entries = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())["dependencies"]
    conda = [entry for entry in entries if isinstance(entry, str)]
    pip = [item for entry in entries if isinstance(entry, dict) for item in entry.get("pip", [])]
    return {**pinned(conda, CONDA_TO_PIP), **pinned(pip)}


def test_constraints_and_environment_yml_pin_the_same_packages_at_the_same_versions():
    constraints, environment = constraints_pins(), environment_pins()
    problems = [f"{name} is only in constraints.txt" for name in sorted(constraints.keys() - environment.keys())]
    problems += [f"{name} is only in environment.yml" for name in sorted(environment.keys() - constraints.keys())]
    problems += [
        f"{name}: {constraints[name]} in constraints.txt, {environment[name]} in environment.yml"
        for name in sorted(constraints.keys() & environment.keys())
        if constraints[name] != environment[name]
    ]
    assert not problems, "; ".join(problems)


def test_every_pin_lies_in_pyproject_tomls_range_and_every_requirement_is_pinned():
    pins = constraints_pins()
    problems = []
    for requirement in pyproject_requirements():
        name = requirement.name.lower().replace("_", "-")
        pin = pins.get(name)
        if pin is None:
            problems.append(f"{name} has no exact pin in constraints.txt")
        elif not requirement.specifier.contains(pin, prereleases=True):
            problems.append(f"{name}=={pin} is outside pyproject.toml's range {requirement.specifier}")
    assert not problems, "; ".join(problems)


def test_pyproject_states_ranges_so_that_an_installed_torch_is_kept():
    exact = [str(r) for r in pyproject_requirements() if any(spec.operator == "==" for spec in r.specifier)]
    assert not exact, f"exact pins belong in constraints.txt, not pyproject.toml: {exact}"


def test_the_environment_under_test_has_constraints_txts_exact_versions():
    """`make` installs with -c constraints.txt: the tests run against exactly those versions."""
    pins = constraints_pins()
    different = {name: (pin, version(name)) for name, pin in pins.items() if version(name) != pin}
    assert not different, f"{{name: (pinned, installed)}} {different}; run make again (it reinstalls)"


@pytest.mark.slow
def test_pip_install_e_into_an_environment_with_torch_keeps_that_torch(tmp_path):
    """A fresh virtual environment that already has this machine's torch (and the rest), as on Colab, Kaggle or
    a lab's conda environment: pip's own resolver, in a dry run with its report, installs the helpers alone.
    The environment sees this one's packages through a .pth file instead of a 5.5 GB copy of torch; pip counts
    what a .pth puts on the path as installed. --no-index: pip may not fetch anything, so a requirement that the
    installed torch did not meet would fail the run."""
    source = tmp_path / "source"  # the project as pip sees it, away from the checkout's build files
    shutil.copytree(REPO_ROOT / "helpers", source / "helpers", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "pyproject.toml", source)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    installed_here = Path(torch.__file__).resolve().parents[1]
    assert installed_here == Path(sysconfig.get_paths()["purelib"]).resolve()  # where pip and the rest live too
    (Path(purelib) / "this-machines-packages.pth").write_text(f"{installed_here}\n")
    report = tmp_path / "report.json"
    pip = [python, "-m", "pip", "install", "--dry-run", "--report", report, "--no-index", "--no-build-isolation"]
    done = subprocess.run([*pip, "--quiet", "--editable", source], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    installs = {
        item["metadata"]["name"]: item["metadata"]["version"] for item in json.loads(report.read_text())["install"]
    }
    assert "torch" not in installs and "torchvision" not in installs, installs
    assert installs == {"resnet18-cifar10": "0.1.0"}


def test_the_requirement_reader_tells_names_and_versions_apart():
    assert pinned(["Foo_Bar==1.2  # comment", "pytorch=2.1", "python=3.11", "pip", "baz"], CONDA_TO_PIP) == {
        "foo-bar": "1.2",
        "torch": "2.1",
        "baz": None,
    }


# ---------------------------------------------------------------- notebooks


def code_cells(notebook):
    return [cell for cell in json.loads(notebook.read_text())["cells"] if cell["cell_type"] == "code"]


def stored_text(cell) -> str:
    """A code cell's source and every stored output, as one string."""
    return "".join(cell["source"]) + json.dumps(cell.get("outputs", []))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_was_run_top_to_bottom_in_one_kernel(notebook):
    cells = code_cells(notebook)
    counts = [cell["execution_count"] for cell in cells]
    assert counts == list(range(1, len(cells) + 1)), (
        f"execution counts {counts}: run it top to bottom in a fresh kernel and save it (make series)"
    )
    for cell in cells:
        for output in cell.get("outputs", []):
            if output["output_type"] == "execute_result":
                assert output["execution_count"] == cell["execution_count"]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_stores_no_errors(notebook):
    errors = [
        (cell["execution_count"], output.get("ename"))
        for cell in code_cells(notebook)
        for output in cell.get("outputs", [])
        if output["output_type"] == "error"
    ]
    assert not errors, f"cells (execution count, error) {errors}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_holds_no_machine_paths(notebook):
    found = [
        (cell["execution_count"], path)
        for cell in code_cells(notebook)
        for path in MACHINE_PATHS
        if path in stored_text(cell)
    ]
    assert not found, f"cells (execution count, path) {found}"


# ---------------------------------------------------------------- one test command


def commands(script: str) -> list[str]:
    """The non-blank, non-comment lines of a shell script."""
    lines = (line.strip() for line in script.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def make_recipe(makefile: str, target: str) -> list[str]:
    """The recipe lines (tab-indented) under `target:` in a Makefile."""
    lines = makefile.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"^{target}:(?!=)(?!.*:=)", line))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


def test_ci_runs_make_test_and_nothing_else_that_tests():
    lines = commands((REPO_ROOT / ".ci" / "run").read_text())
    assert "make test" in lines
    runs_tests = re.compile(r"\b(pytest|nbval|make|python\d*|unittest|tox|nox)\b")
    others = [line for line in lines if line != "make test" and runs_tests.search(line)]
    assert not others, f".ci/run also runs {others}"


def test_make_test_runs_the_unit_tests_and_the_notebooks_under_nbval():
    recipe = " ".join(make_recipe((REPO_ROOT / "Makefile").read_text(), "test"))
    assert re.search(r"-m pytest\b", recipe) and "--nbval" in recipe
    assert re.search(r"\btests\b", recipe) and re.search(r"\bnotebooks\b", recipe)


def test_readme_gives_make_test_as_the_test_command():
    readme = REPO_ROOT / "README.md"
    if not readme.exists():
        pytest.skip("README.md is not written yet")
    commands_shown = (line.split("#")[0].strip() for line in readme.read_text().splitlines())
    assert "make test" in commands_shown, "README.md has no line `make test` (a trailing # comment may follow)"
