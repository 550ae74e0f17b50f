"""Each command writes only its own files, and the README's commands work as printed: figures of a run
beside the run, `make clean` keeps trained runs, a stopped fresh run names the command that continues it."""

import importlib
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_data import SMALL, write_tree

from helpers import config, data, train
from helpers.machinery import checkpoint
from tiny import TINY, tiny_datasets

README = config.REPO_ROOT / "README.md"
CHEAP = ("helpers.evaluate", "helpers.predict")  # and every --help: nothing trains


def readme_commands() -> list[str]:
    """The `python -m helpers...` lines of the README's bash blocks, as printed (comments dropped)."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.DOTALL)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if re.match(r"(\.venv/bin/)?python -m helpers\.", line)]


def run_as_printed(line: str) -> int:
    """The command in this process: `.venv/bin/python -m helpers.x ARGS` is helpers.x.main(ARGS)."""
    _, _, module, *arguments = shlex.split(line)
    try:
        return importlib.import_module(module).main(arguments)
    except SystemExit as exit:  # --help
        return int(exit.code or 0)


def git_status() -> str:
    found = subprocess.run(
        ["git", "status", "--porcelain"], cwd=config.REPO_ROOT, capture_output=True, text=True, check=False
    )
    if found.returncode != 0:
        pytest.skip("not a git checkout")
    return found.stdout


@pytest.fixture
def small_data(tmp_path, monkeypatch) -> Path:
    """A 30-image CIFAR-10 tree as CIFAR10_DATA, cached in a folder of its own."""
    write_tree(tmp_path / "tree")
    monkeypatch.setenv("CIFAR10_DATA", str(tmp_path / "tree"))
    monkeypatch.setattr(data, "PER_CLASS", SMALL)
    monkeypatch.setattr(config, "DATA_DIR", tmp_path / "data")
    return tmp_path / "tree"


def test_the_readmes_cheap_commands_work_as_printed_and_touch_no_tracked_file(small_data, monkeypatch, capsys):
    """After `make series QUICK=1` a clone holds runs/quick/ (with notebook 04's my_images/): here a tiny
    run trained on the small data stands in for it."""
    commands = [line for line in readme_commands() if "--help" in line or line.split()[2] in CHEAP]
    assert {line.split()[2] for line in commands} >= {"helpers.evaluate", "helpers.predict"}, commands
    out = config.output_root()
    run = out / "runs" / "quick"
    cfg = TINY.replace(epochs=1, val_size=10, train_limit=None, test_limit=None)
    train.fit(cfg, data.prepare(cfg), device="cpu", checkpoint_path=run / "checkpoint.pt")
    (run / "my_images").mkdir()
    for name, value in {"cat.png": 40, "ship.jpg": 200}.items():
        Image.fromarray(np.full((48, 64, 3), value, dtype=np.uint8)).save(run / "my_images" / name)
    before, written_before = git_status(), files_under(out)
    monkeypatch.chdir(out)  # the README's paths are relative to the checkout, where runs/ is
    capsys.readouterr()
    for line in commands:
        assert run_as_printed(line) == 0, (line, capsys.readouterr().err)
    assert git_status() == before
    assert not (out / "figs").exists()  # figures of a run go beside the run
    assert all(path.is_relative_to(run) for path in files_under(out) - written_before)


def files_under(root: Path) -> set[Path]:
    return {path for path in root.rglob("*") if path.is_file()}


def test_a_stopped_fresh_run_names_the_command_that_continues_it_and_that_command_does(tmp_path, monkeypatch, capsys):
    path = tmp_path / "elsewhere" / "checkpoint.pt"
    monkeypatch.setattr(train, "prepare", lambda cfg, source: tiny_datasets())
    calls = []

    def epoch(run, split):  # what the messages and files need of an epoch, without its training steps
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return torch.tensor(2.0), torch.tensor(0.1)

    monkeypatch.setattr(train, "train_epoch", epoch)
    arguments = ["--epochs", "2", "--device", "cpu", "--checkpoint", str(path)]
    assert train.main([*arguments[:2], "--fresh", *arguments[2:]]) == 130
    said = capsys.readouterr().err
    assert f"To continue from there: python -m helpers.train {shlex.join(arguments)}" in said, said
    assert run_as_printed(said.split("To continue from there: ")[1].strip()) == 0
    assert "Resuming" in capsys.readouterr().out and checkpoint.load(path)["epoch"] == 2
    assert (path.parent / "learning_curves.png").exists()  # beside the run ...
    assert not (config.output_root() / "figs").exists()  # ... and not in figs/


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_clean_keeps_trained_runs_and_delete_runs_names_what_it_deletes(tmp_path):
    shutil.copy(config.REPO_ROOT / "Makefile", tmp_path)
    for made in ("runs/quick/checkpoint.pt", "runs/quick/checkpoint.before-20260101-000000.pt", "build/test/x"):
        (tmp_path / made).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / made).write_bytes(b"")
    subprocess.run(["make", "--no-print-directory", "clean"], cwd=tmp_path, check=True, capture_output=True)
    assert not (tmp_path / "build").exists() and (tmp_path / "runs/quick/checkpoint.pt").exists()
    said = subprocess.run(
        ["make", "--no-print-directory", "delete-runs"], cwd=tmp_path, check=True, capture_output=True, text=True
    ).stdout
    assert "runs/quick/checkpoint.pt" in said and "runs/quick/checkpoint.before-20260101-000000.pt" in said
    assert not (tmp_path / "runs").exists()
