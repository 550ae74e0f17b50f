"""precision="auto" on a CPU by measurement (machinery/autotune.py): the rule driven by fake timings measured
on real machines, what is timed (never emulated bf16), the cache and its key, the budgeted interleaved timer,
and what a run reports. Only test_the_real_timer_times_the_training_step times anything for real (batch 8)."""

import json
import warnings

import pytest
import torch

from helpers import train
from helpers.data import Datasets
from helpers.machinery import autotune, checkpoint, execution
from helpers.machinery.device import Hardware
from helpers.machinery.execution import SlowPrecisionWarning
from tiny import TINY

CPU = torch.device("cpu")
ZEN4 = Hardware("cpu", "AMD EPYC 9R14 96-Core Processor", True, "2 threads, AVX512")
XEON = Hardware("cpu", "Intel(R) Xeon(R) Processor", True, "2 threads, AVX512")  # AVX512-BF16, AMX hidden
EPYC_AVX2 = Hardware("cpu", "AMD EPYC 7R13 Processor", False, "2 threads, AVX2")
# Training images/s measured on those machines (issue 21, benchmarks/results/): the rule must pick from these.
ZEN4_FIGURES = {"fp32": 45.4, "bf16": 111.3}  # bf16 2.5x
XEON_FIGURES = {"fp32": 59.5, "bf16": 46.1}  # bf16 0.77x


class FakeTimer:
    """Stands in for timing the training step: returns given figures and records what it was asked to time."""

    def __init__(self, figures: dict[str, float]):
        self.figures, self.asked = figures, []

    def __call__(self, names: list[str]) -> dict[str, float]:
        self.asked.append(list(names))
        return {name: self.figures[name] for name in names}


@pytest.fixture
def measuring(tmp_path, monkeypatch):
    """Measuring on (conftest turns it off for every other test), into an empty cache of this test's."""
    monkeypatch.delenv(autotune.SWITCH_ENV, raising=False)
    monkeypatch.setenv(autotune.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(autotune, "load_average", lambda: 0.0)  # an idle machine, whatever this one is doing
    return tmp_path / "cache" / autotune.CACHE_FILE


# ---------------------------------------------------------------- the rule


def test_zen4_figures_choose_bf16(measuring):
    chosen = execution.resolve(CPU, facts=ZEN4, timer=FakeTimer(ZEN4_FIGURES))
    assert (chosen.precision, chosen.channels_last) == ("bf16", True)
    assert chosen.described == "bf16, channels_last (measured here: fp32 45 images/s, bf16 111)"


def test_xeon_figures_choose_fp32(measuring):
    chosen = execution.resolve(CPU, facts=XEON, timer=FakeTimer(XEON_FIGURES))
    assert (chosen.precision, chosen.channels_last) == ("fp32", True)
    assert str(chosen) == f"fp32, channels_last (measured here: fp32 60 images/s, bf16 46) on {XEON}"


def test_without_native_bf16_nothing_is_timed_and_fp32_is_chosen(measuring):
    timer = FakeTimer({"fp32": 40.5, "bf16": 2.1})  # an AVX2 EPYC's figures: bf16 emulated, 19x slower
    chosen = execution.resolve(CPU, facts=EPYC_AVX2, timer=timer)
    assert chosen.precision == "fp32" and chosen.measured is None and timer.asked == []
    assert not measuring.exists()


@pytest.mark.parametrize("bf16, expected", [(65.4, "fp32"), (66.0, "bf16"), (59.5, "fp32"), (30.0, "fp32")])
def test_bf16_only_when_at_least_ten_percent_faster(measuring, bf16, expected):
    # 66.0 / 60.0 = 1.10 exactly; 65.4 / 60.0 = 1.09
    assert execution.resolve(CPU, facts=XEON, timer=FakeTimer({"fp32": 60.0, "bf16": bf16})).precision == expected


def test_an_explicit_precision_measures_nothing(measuring):
    timer = FakeTimer(ZEN4_FIGURES)
    assert execution.resolve(CPU, "fp32", facts=ZEN4, timer=timer).precision == "fp32"
    assert execution.resolve(CPU, "bf16", facts=ZEN4, timer=timer).precision == "bf16"
    assert timer.asked == [] and not measuring.exists()


def test_measuring_off_follows_the_capability_table(measuring, monkeypatch):
    monkeypatch.setenv(autotune.SWITCH_ENV, "off")
    timer = FakeTimer(XEON_FIGURES)
    chosen = execution.resolve(CPU, facts=XEON, timer=timer)
    assert chosen.precision == "bf16" and chosen.measured is None and timer.asked == []


def test_gpus_keep_the_table_and_time_nothing(measuring, monkeypatch):
    monkeypatch.setattr(execution, "use_fast_cuda_kernels", lambda: None)  # no global CUDA switches here
    timer = FakeTimer(XEON_FIGURES)
    a100 = Hardware("cuda", "NVIDIA A100", True, "compute capability 8.0")
    t4 = Hardware("cuda", "Tesla T4", False, "compute capability 7.5")
    assert execution.resolve(torch.device("cuda"), facts=a100, timer=timer).precision == "bf16"
    assert execution.resolve(torch.device("cuda"), facts=t4, timer=timer).precision == "fp16"
    assert timer.asked == []


# ---------------------------------------------------------------- remembered once per machine


def test_the_second_call_uses_the_cache(measuring):
    first, second = FakeTimer(XEON_FIGURES), FakeTimer(ZEN4_FIGURES)
    execution.resolve(CPU, facts=XEON, timer=first)
    again = execution.resolve(CPU, facts=XEON, timer=second)
    assert first.asked == [["fp32", "bf16"]] and second.asked == []
    assert again.precision == "fp32" and again.measured.remembered
    assert dict(again.measured.images_per_s) == XEON_FIGURES
    [record] = json.loads(measuring.read_text())
    assert record["key"]["cpu"] == XEON.name and record["key"]["torch"] == torch.__version__
    assert record["chosen"] == "fp32" and record["images_per_s"] == XEON_FIGURES


def test_a_torch_upgrade_measures_again(measuring, monkeypatch):
    execution.resolve(CPU, facts=XEON, timer=FakeTimer(XEON_FIGURES))
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    timer = FakeTimer(ZEN4_FIGURES)
    assert execution.resolve(CPU, facts=XEON, timer=timer).precision == "bf16"
    assert timer.asked == [["fp32", "bf16"]]
    assert len(json.loads(measuring.read_text())) == 2  # both remembered, each for its torch


@pytest.mark.parametrize(
    "change",
    [
        lambda mp: mp.setattr(torch, "get_num_threads", lambda: 97),
        lambda mp: mp.setattr(autotune, "cpu_flags", lambda: {"avx512f", "amx_bf16"}),
    ],
    ids=["threads", "flags"],
)
def test_other_threads_or_flags_measure_again(measuring, monkeypatch, change):
    execution.resolve(CPU, facts=XEON, timer=FakeTimer(XEON_FIGURES))
    change(monkeypatch)
    timer = FakeTimer(ZEN4_FIGURES)
    execution.resolve(CPU, facts=XEON, timer=timer)
    assert timer.asked == [["fp32", "bf16"]]


def test_another_cpu_model_and_batch_size_measure_again(measuring):
    execution.resolve(CPU, facts=XEON, timer=FakeTimer(XEON_FIGURES))
    for facts, batch_size in ((ZEN4, None), (XEON, 64)):
        timer = FakeTimer(ZEN4_FIGURES)
        execution.resolve(CPU, facts=facts, batch_size=batch_size, timer=timer)
        assert timer.asked == [["fp32", "bf16"]]


def test_a_broken_cache_file_is_measured_again_and_replaced(measuring):
    measuring.parent.mkdir(parents=True)
    measuring.write_text("{not json")
    timer = FakeTimer(XEON_FIGURES)
    assert execution.resolve(CPU, facts=XEON, timer=timer).precision == "fp32" and timer.asked
    assert json.loads(measuring.read_text())[0]["chosen"] == "fp32"


def test_the_cache_directory_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(autotune.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert autotune.cache_dir() == tmp_path / "xdg" / "resnet18-cifar10"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert autotune.cache_dir() == tmp_path / "home" / ".cache" / "resnet18-cifar10"
    monkeypatch.setenv(autotune.CACHE_ENV, str(tmp_path / "mine"))
    assert autotune.cache_dir() == tmp_path / "mine"


# ---------------------------------------------------------------- explicit bf16: warned from the measurement


def test_explicit_bf16_is_warned_from_the_measurement_where_one_exists(measuring):
    execution.resolve(CPU, facts=XEON, timer=FakeTimer(XEON_FIGURES))  # remembered: bf16 slower here
    with pytest.warns(SlowPrecisionWarning, match="trained 46 images/s against fp32's 60 .measured here."):
        assert execution.resolve(CPU, "bf16", facts=XEON).precision == "bf16"


def test_explicit_bf16_where_measured_faster_or_unmeasured_is_not_warned(measuring):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        execution.resolve(CPU, "bf16", facts=ZEN4)  # native, nothing measured yet: the flag says fine
        execution.resolve(CPU, facts=ZEN4, timer=FakeTimer(ZEN4_FIGURES))
        execution.resolve(CPU, "bf16", facts=ZEN4)


# ---------------------------------------------------------------- the timer


def test_the_timer_warms_up_then_interleaves_and_keeps_each_fastest_step():
    now, calls = [0.0], []
    cost = {"fp32": [9.0, 2.0, 3.0, 2.5], "bf16": [9.0, 1.0, 4.0, 1.0]}  # seconds per call, in order

    def step(name):
        def run():
            now[0] += cost[name][sum(1 for c in calls if c == name)]
            calls.append(name)

        return run

    rates = autotune.time_steps({n: step(n) for n in cost}, 128, budget_s=1000, clock=lambda: now[0])
    assert calls == ["fp32", "bf16"] + ["fp32", "bf16"] * 3  # a warm-up step each, then 3 rounds in turn
    assert rates == {"fp32": 128 / 2.0, "bf16": 128 / 1.0}


def test_the_timer_stops_when_another_round_would_pass_the_budget():
    now, calls = [0.0], []

    def step(name):
        def run():
            now[0] += 4.0
            calls.append(name)

        return run

    # 8 s of warm-up, then rounds of 8 s: after round 2 (24 s) a third would end at 32 s, past 30 s
    autotune.time_steps({n: step(n) for n in ("fp32", "bf16")}, 128, budget_s=30, clock=lambda: now[0])
    assert len(calls) == 2 + 2 * 2
    calls.clear()
    autotune.time_steps({n: step(n) for n in ("fp32", "bf16")}, 128, budget_s=1, clock=lambda: now[0])
    assert len(calls) == 2 + 2  # one round even when warming up took the whole budget


def test_the_real_timer_times_the_training_step_and_leaves_the_generator_alone(monkeypatch):
    monkeypatch.setattr(autotune, "MAX_ROUNDS", 1)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    rates = autotune.training_timer(XEON, batch_size=8)(["fp32", "bf16"])
    assert set(rates) == {"fp32", "bf16"} and all(rate > 0 for rate in rates.values())
    assert torch.equal(torch.rand(3), expected)


# ---------------------------------------------------------------- what a run reports, and resuming elsewhere


def one_step_data(tiny) -> Datasets:
    return Datasets(
        tiny.train.subset(torch.arange(32)), tiny.val.subset(torch.arange(16)), tiny.test, tiny.mean, tiny.std
    )  # bf16 is slow on many CPUs: one step an epoch


def machine(monkeypatch, facts: Hardware, figures: dict[str, float]) -> None:
    """Make fit run on `facts`, whose training step times as `figures`."""
    monkeypatch.setattr(execution, "hardware", lambda device: facts)
    monkeypatch.setattr(autotune, "training_timer", lambda facts, batch_size: FakeTimer(figures))


def test_a_runs_history_and_metrics_name_the_measured_figures(measuring, tiny, tmp_path, monkeypatch):
    machine(monkeypatch, XEON, XEON_FIGURES)
    path = tmp_path / "run" / "checkpoint.pt"
    history = train.fit(TINY.replace(epochs=1), one_step_data(tiny), device="cpu", checkpoint_path=path)
    shown = "fp32, channels_last (measured here: fp32 60 images/s, bf16 46)"
    assert history.execution.tolist() == [shown]
    assert json.loads(checkpoint.companion(path, "metrics.json").read_text())["execution"] == shown
    saved = torch.load(path, weights_only=True)["execution"]
    assert saved["precision"] == "fp32" and saved["measured_images_per_s"] == XEON_FIGURES


def test_a_run_resumed_on_another_cpu_chooses_again_there(measuring, tiny, tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    machine(monkeypatch, ZEN4, ZEN4_FIGURES)
    train.fit(TINY.replace(epochs=1), one_step_data(tiny), device="cpu", checkpoint_path=path)
    machine(monkeypatch, XEON, XEON_FIGURES)
    history = train.fit(TINY, one_step_data(tiny), device="cpu", checkpoint_path=path)
    assert history.execution.tolist() == [
        "bf16, channels_last (measured here: fp32 45 images/s, bf16 111)",
        "fp32, channels_last (measured here: fp32 60 images/s, bf16 46)",
    ]
    assert history.hardware.tolist() == [str(ZEN4), str(XEON)]
    assert json.loads(checkpoint.companion(path, "metrics.json").read_text())["execution"] == " then ".join(
        history.execution
    )


def test_a_measurement_on_a_busy_machine_is_used_but_not_remembered(measuring, monkeypatch, capsys):
    """Ten other jobs on two cores once made bf16 measure 0.45x fp32 on a Xeon where it is 2.0x idle."""
    monkeypatch.setattr(autotune, "load_average", lambda: 20.0)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    busy = FakeTimer({"fp32": 18.2, "bf16": 8.2})
    assert execution.resolve(CPU, facts=XEON, timer=busy).precision == "fp32"  # used for this run
    assert "busy (load average 20.0 on 2 threads)" in capsys.readouterr().err
    assert not measuring.exists()
    monkeypatch.setattr(autotune, "load_average", lambda: 0.3)
    idle = FakeTimer({"fp32": 60.0, "bf16": 118.3})
    assert execution.resolve(CPU, facts=XEON, timer=idle).precision == "bf16"  # measured again, idle
    assert idle.asked == [["fp32", "bf16"]] and measuring.exists()
    assert execution.resolve(CPU, facts=XEON, timer=idle).precision == "bf16" and len(idle.asked) == 1
