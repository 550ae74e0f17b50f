"""Shared fixtures, each made once a session: the real CIFAR-10 (JPEG copy) when it is beside the checkout,
one quick run trained on it and shared by the tests that need a network trained on real images, tiny
random data and checkpoints trained on it (tiny.py), and isolated outputs."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from helpers import config, data, train
from helpers.data import Datasets
from helpers.machinery import autotune
from tiny import TINY, tiny_datasets

TEST_COMMAND_OUTPUT = os.environ.get("CIFAR10_OUTPUT")  # build/test under `make test`; read before any test changes it


@pytest.fixture(scope="session")
def real_source() -> Path:
    """Where every command finds CIFAR-10 (config.data_source): CIFAR10_DATA, else the project's JPEG copy
    beside the checkout; skipped where neither is (the tests never download)."""
    source = config.data_source()
    if not source or not Path(source).exists():
        pytest.skip("real CIFAR-10 is absent: set CIFAR10_DATA or put the JPEG copy in ../shared/data/")
    return Path(source)


@pytest.fixture(scope="session")
def real_raw(real_source):
    """All 60,000 real images (decoded once, then from the cache)."""
    return data.load_raw(real_source)


def pytest_configure(config):
    """precision="auto" on a CPU times the training step once per machine (machinery/autotune.py). No test
    does that for real: measuring is off, so auto follows the capability table as before measuring existed
    (the tests train as fast as they did), and the cache is a folder of the session's, never the user's.
    Set here, before any test module is imported: some resolve an execution at import (test_train's CPU),
    and notebook kernels started by nbval inherit it. The tests of the measurement turn it on, with fake
    timings and caches of their own (tests/test_autotune.py)."""
    os.environ[autotune.SWITCH_ENV] = "off"
    os.environ[autotune.CACHE_ENV] = tempfile.mkdtemp(prefix="resnet18-cifar10-test-cache-")


def pytest_unconfigure(config):
    shutil.rmtree(os.environ.pop(autotune.CACHE_ENV, ""), ignore_errors=True)
    os.environ.pop(autotune.SWITCH_ENV, None)


@pytest.fixture(autouse=True)
def environment_put_back():
    """The environment is put back after each test, whole, after monkeypatch's own undo: series.main sets
    CIFAR10_FRESH for the kernels it starts, and a later test's fit would otherwise start fresh."""
    before = os.environ.copy()
    yield
    os.environ.clear()
    os.environ.update(before)


@pytest.fixture(autouse=True)
def isolated_outputs(environment_put_back, tmp_path, monkeypatch):
    """Figures, checkpoints and histories of a test go to its own temporary folder."""
    monkeypatch.setenv("CIFAR10_OUTPUT", str(tmp_path / "out"))
    monkeypatch.setenv("CIFAR10_PROGRESS", os.environ.get("CIFAR10_PROGRESS", "off"))


@pytest.fixture(scope="session")
def tiny() -> Datasets:
    return tiny_datasets()


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny, tmp_path_factory) -> Path:
    """A checkpoint of the tiny configuration (width 8) written by helpers.train.fit after one epoch."""
    path = tmp_path_factory.mktemp("tiny-run") / "checkpoint.pt"
    train.fit(TINY.replace(epochs=1), tiny, device="cpu", checkpoint_path=path)
    return path


@pytest.fixture(scope="session")
def full_width_checkpoint(tiny, tmp_path_factory) -> Path:
    """A checkpoint of the recipe's width (64: ResNet18 itself) written by helpers.train.fit after one epoch
    (four steps) on the tiny data: the tests that need the real architecture's weights share it."""
    path = tmp_path_factory.mktemp("full-width-run") / "checkpoint.pt"
    train.fit(TINY.replace(width=config.RECIPE.width, epochs=1), tiny, device="cpu", checkpoint_path=path)
    return path


@pytest.fixture(scope="session")
def quick_run(real_source, tmp_path_factory) -> Path:
    """The quick configuration (2 epochs on 5,000 real images) trained once by the command line, on the CPU;
    the checkpoint's path. The slowest thing the tests do, so done once: under the test command it goes
    where notebook 03 will look, and nbval's run of the notebook reuses it (train.fit's rule) instead of
    training the same run again. Elsewhere it goes to a folder of its own."""
    out = config.output_root() if TEST_COMMAND_OUTPUT else tmp_path_factory.mktemp("quick-run")
    path = out / "runs" / "quick" / "checkpoint.pt"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CIFAR10_OUTPUT", str(out))
        env.setenv("CIFAR10_PROGRESS", "off")
        assert train.main(["--quick", "--data", str(real_source), "--device", "cpu", "--checkpoint", str(path)]) == 0
    return path
