"""A machine with an NVIDIA GPU that this torch cannot use says so, and what to install, instead of quietly
training on the CPU. nvidia-smi is faked on PATH: a script that answers as the real one does."""

import os
import stat
from pathlib import Path

import pytest
import torch

from helpers import series
from helpers.machinery import device

# What nvidia-smi prints on a Colab T4 (header abridged), and its answer to the query the check makes.
HEADER = """\
+-----------------------------------------------------------------------------+
| NVIDIA-SMI 535.104.05   Driver Version: 535.104.05   CUDA Version: 12.2     |
+-----------------------------------------------------------------------------+"""
QUERY = "Tesla T4, 535.104.05"


def fake_nvidia_smi(folder: Path, answer: str, code: int = 0) -> Path:
    """An nvidia-smi in `folder` that prints QUERY for --query-gpu, else `answer`, and exits with `code`."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "nvidia-smi"
    script.write_text(
        f'#!/bin/sh\ncase "$*" in *--query-gpu*) echo "{QUERY}";; *) cat <<"END"\n{answer}\nEND\n;; esac\nexit {code}\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return folder


@pytest.fixture
def without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    device.say_if_gpu_unused.cache_clear()
    yield
    device.say_if_gpu_unused.cache_clear()


def on_path(monkeypatch, folder: Path) -> None:
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")


@pytest.mark.parametrize(
    "build, said", [(None, "(a CPU-only build)"), ("13.0", "(built for CUDA 13.0)")], ids=["cpu-only", "newer-cuda"]
)
def test_a_gpu_that_torch_cannot_use_is_named_with_why_and_what_to_install(
    without_cuda, tmp_path, monkeypatch, build, said
):
    on_path(monkeypatch, fake_nvidia_smi(tmp_path / "bin", HEADER))
    monkeypatch.setattr(torch.version, "cuda", build)
    message = device.gpu_unused()
    assert message is not None and "\n" not in message
    assert "NVIDIA Tesla T4 (driver 535.104.05, which supports CUDA up to 12.2)" in message
    assert f"torch {torch.__version__} {said} cannot use it: everything will run on the CPU" in message
    assert "Install a torch built for CUDA 12.2 or older" in message
    assert "https://download.pytorch.org/whl/cu122" in message and "https://pytorch.org/get-started/locally/" in message


def test_auto_says_it_once_then_runs_on_the_cpu(without_cuda, tmp_path, monkeypatch, capsys):
    on_path(monkeypatch, fake_nvidia_smi(tmp_path / "bin", HEADER))
    assert device.resolve_device("auto") == torch.device("cpu")
    assert device.resolve_device("auto") == torch.device("cpu")
    said = capsys.readouterr().err
    assert said.count("This machine has an NVIDIA Tesla T4") == 1


def test_make_series_says_it_before_running_anything(without_cuda, tmp_path, monkeypatch, capsys):
    on_path(monkeypatch, fake_nvidia_smi(tmp_path / "bin", HEADER))
    monkeypatch.setattr(series, "warn_without_gpu", lambda cfg: None)
    monkeypatch.setattr(series, "run", lambda paths: 0)
    assert series.main(["--quick"]) == 0
    assert "This machine has an NVIDIA Tesla T4" in capsys.readouterr().err


def test_nothing_is_said_where_nvidia_smi_is_absent_or_reaches_no_driver(without_cuda, tmp_path, monkeypatch):
    with monkeypatch.context() as absent:
        absent.setattr(device.shutil, "which", lambda name: None)
        assert device.gpu_unused() is None
    failing = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
    on_path(monkeypatch, fake_nvidia_smi(tmp_path / "bin", failing, code=9))
    assert device.gpu_unused() is None
