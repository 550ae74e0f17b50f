"""Execution: the table from hardware facts to precision and layout, row by row with injected facts (CPU
rows as with measuring off, which conftest sets; the measurement is tests/test_autotune.py's); the facts
read off real hardware; explicit precisions; the CUDA switches; resuming under another."""

import re
import warnings
from pathlib import Path

import pytest
import torch

from helpers import train
from helpers.data import Datasets
from helpers.machinery import autotune, device, execution
from helpers.machinery.device import Hardware
from helpers.machinery.execution import SlowPrecisionWarning
from tiny import TINY

CPU = torch.device("cpu")
ZEN4 = Hardware("cpu", "AMD EPYC 9R14 96-Core Processor", True, "2 threads, AVX512")
EPYC_AVX2 = Hardware("cpu", "AMD EPYC 7R13 Processor", False, "2 threads, AVX2")
H200 = Hardware("cuda", "NVIDIA H200", True, "compute capability 9.0")
T4 = Hardware("cuda", "Tesla T4", False, "compute capability 7.5")


@pytest.fixture
def restore_cuda_switches():
    """resolve() for a CUDA device sets global backend flags: put them back after the test."""
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    yield
    torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# ---------------------------------------------------------------- the table, one row per test


def test_cuda_with_native_bf16_trains_in_bf16_channels_last_without_a_scaler(restore_cuda_switches):
    chosen = execution.resolve(torch.device("cuda"), facts=H200)
    assert (chosen.precision, chosen.channels_last) == ("bf16", True)
    assert not chosen.scales_loss


def test_older_cuda_trains_in_fp16_with_the_grad_scaler(restore_cuda_switches):
    chosen = execution.resolve(torch.device("cuda"), facts=T4)
    assert (chosen.precision, chosen.channels_last) == ("fp16", True)
    assert chosen.scales_loss  # the GradScaler new_run makes is enabled (on a machine with CUDA)


def test_a_cpu_with_native_bf16_trains_in_bf16_channels_last():
    chosen = execution.resolve(CPU, facts=ZEN4)
    assert (chosen.precision, chosen.channels_last) == ("bf16", True)
    assert not chosen.scales_loss and not chosen.grad_scaler().is_enabled()


def test_any_other_cpu_trains_in_fp32_channels_last():
    chosen = execution.resolve(CPU, facts=EPYC_AVX2)
    assert (chosen.precision, chosen.channels_last) == ("fp32", True)
    assert not chosen.scales_loss and not chosen.grad_scaler().is_enabled()


def test_the_table_has_exactly_these_four_rows():
    assert execution.AUTO == {
        ("cuda", True): ("bf16", True),
        ("cuda", False): ("fp16", True),
        ("cpu", True): ("bf16", True),
        ("cpu", False): ("fp32", True),
    }


# ---------------------------------------------------------------- facts read off the hardware


@pytest.mark.parametrize("capability, native", [((7, 5), False), ((7, 0), False), ((8, 0), True), ((9, 0), True)])
def test_cuda_has_native_bf16_from_compute_capability_8_0(monkeypatch, capability, native):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Some GPU")
    facts = device.hardware(torch.device("cuda"))
    assert facts.native_bf16 is native and facts.detail == f"compute capability {capability[0]}.{capability[1]}"


@pytest.mark.parametrize(
    "capabilities, native",
    [
        ({"avx512_bf16": True, "amx_bf16": False}, True),
        ({"avx512_bf16": False, "amx_bf16": True}, True),
        ({"avx512_bf16": False, "amx_bf16": False, "avx2": True}, False),
        ({"avx2": True}, False),
    ],
)
def test_cpu_bf16_comes_from_torchs_capability_query(monkeypatch, capabilities, native):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities, raising=False)
    monkeypatch.setattr(device, "read_cpuinfo", lambda: "flags : fpu avx512_bf16 amx_bf16\n")  # must not be asked
    assert device.cpu_native_bf16() is native


@pytest.mark.parametrize(
    "flags, native",
    [("fpu avx2 avx512f", False), ("fpu avx512f avx512_bf16", True), ("fpu amx_tile amx_bf16", True), ("", False)],
)
def test_without_torchs_query_cpu_bf16_comes_from_the_cpu_flags(monkeypatch, flags, native):
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)
    monkeypatch.setattr(device, "read_cpuinfo", lambda: f"processor : 0\nmodel name : X\nflags : {flags}\n")
    assert device.cpu_native_bf16() is native


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="needs Linux's /proc/cpuinfo")
def test_on_this_machine_auto_times_bf16_only_where_its_cpu_flags_have_it(tmp_path, monkeypatch):
    text = Path("/proc/cpuinfo").read_text()
    flags = set(re.search(r"^flags\s*:(.*)$", text, flags=re.MULTILINE).group(1).split())
    native = bool(flags & {"avx512_bf16", "amx_bf16"})
    monkeypatch.delenv(autotune.SWITCH_ENV)  # measuring on, with fake timings and a cache of this test's
    monkeypatch.setenv(autotune.CACHE_ENV, str(tmp_path))
    asked = []
    chosen = execution.resolve(CPU, timer=lambda names: asked.append(names) or dict.fromkeys(names, 50.0))
    assert chosen.hardware.native_bf16 is native
    assert asked == ([["fp32", "bf16"]] if native else []) and chosen.precision == "fp32"
    model_name = re.search(r"^model name\s*:\s*(.+)$", text, flags=re.MULTILINE).group(1).strip()
    assert str(chosen).startswith(f"{chosen.described} on {model_name} (")
    assert str(chosen).endswith(f"{'native' if native else 'no native'} bf16)")


def test_the_hardware_slug_names_files_after_the_machine():
    assert (
        Hardware("cpu", "Intel(R) Xeon(R) Processor", False, "2 threads, AVX512").slug
        == "intel-xeon-processor-2-threads-avx512-no-bf16"
    )
    assert H200.slug == "nvidia-h200-9-0-bf16"


# ---------------------------------------------------------------- precisions asked for


def test_explicit_bf16_without_native_bf16_runs_and_warns_once():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        chosen = [execution.resolve(CPU, "bf16", facts=EPYC_AVX2) for _ in range(3)]
    assert [c.precision for c in chosen] == ["bf16"] * 3
    assert len(caught) == 1 and caught[0].category is SlowPrecisionWarning
    assert "several times slower than fp32" in str(caught[0].message) and "--precision auto" in str(caught[0].message)


def test_explicit_bf16_with_native_bf16_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert execution.resolve(CPU, "bf16", facts=ZEN4).precision == "bf16"


def test_explicit_fp32_and_unknown_precisions():
    assert execution.resolve(CPU, "fp32", facts=ZEN4).precision == "fp32"
    with pytest.raises(ValueError, match="precision must be one of auto, bf16, fp16, fp32"):
        execution.resolve(CPU, "fp8", facts=ZEN4)
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        execution.resolve(CPU, "fp16", facts=ZEN4)


def test_cuda_turns_on_cudnn_autotuning_and_tf32_and_leaves_cpu_matmuls_alone(restore_cuda_switches):
    cpu_matmuls = torch.backends.mkldnn.matmul.fp32_precision
    torch.backends.cudnn.benchmark = False
    execution.resolve(torch.device("cuda"), facts=H200)
    assert torch.backends.cudnn.benchmark is True
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert torch.backends.mkldnn.matmul.fp32_precision == cpu_matmuls
    torch.backends.cudnn.benchmark = False
    execution.resolve(CPU, facts=ZEN4)
    assert torch.backends.cudnn.benchmark is False  # a CPU run sets nothing


# ---------------------------------------------------------------- an execution setting, not a hyperparameter


def test_a_run_started_where_auto_meant_bf16_resumes_where_it_means_fp32(tiny, tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    one_step = Datasets(
        tiny.train.subset(torch.arange(32)), tiny.val.subset(torch.arange(16)), tiny.test, tiny.mean, tiny.std
    )  # emulated bf16 is slow on most CPUs: one step an epoch
    monkeypatch.setattr(execution, "hardware", lambda d: ZEN4)
    train.fit(TINY.replace(epochs=1), one_step, device="cpu", checkpoint_path=path)
    monkeypatch.undo()
    history = train.fit(TINY, one_step, device="cpu", checkpoint_path=path)
    real = execution.resolve(CPU)
    assert history.execution.tolist() == ["bf16, channels_last", real.label]
    assert history.hardware.tolist() == [str(ZEN4), str(real.hardware)]
    saved = torch.load(path, weights_only=True)
    assert saved["config"]["precision"] == "auto" and saved["execution"]["precision"] == real.precision
    assert saved["execution"]["hardware"] == str(real.hardware)


# ---------------------------------------------------------------- devices asked for


def test_a_gpu_index_beyond_the_machines_gpus_is_a_one_line_error(monkeypatch, capsys):
    """--device cuda:3 on a one-GPU machine: the error names what there is, before anything asks the GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(device.DeviceError, match=r"'cuda:3' was asked for, but this machine has 1 CUDA GPU \(cuda:0\)"):
        device.resolve_device("cuda:3")
    assert device.resolve_device("cuda:0") == torch.device("cuda:0")
    assert train.main(["--device", "cuda:3", "--epochs", "1"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: Device 'cuda:3'") and error.count("\n") == 1
