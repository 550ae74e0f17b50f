"""precision="auto" on a CPU: the training step timed in each candidate precision, once per machine, remembered.

A CPU's flags do not say which precision trains fastest. All three CPUs below compute bf16 natively
(AVX512-BF16), yet bf16 autocast trained 2.5x as fast as fp32 on an AMD Zen 4, 0.77x as fast on an Intel
Xeon whose virtual machine hides AMX, and 2.0x on an Intel Xeon (family 6 model 207) with AMX visible, where
it had measured 0.45x while ten other jobs shared its two cores (benchmarks/results/). So the flags only say
what is worth timing: bf16 where it is native (emulated bf16 was 19x slower on an AVX2 EPYC, too slow to
time even once), and the clock decides: bf16 only when it is at least MIN_GAIN times as fast as fp32.

The result goes into a small JSON file in the cache directory (`cache_dir`), keyed by CPU model, CPU flags,
torch version, threads and batch size: measuring (at most about BUDGET_S seconds) is paid once per machine,
and a torch upgrade or another thread count measures again. A measurement taken while other work keeps the
cores busy is used but not remembered (`other_work`). CIFAR10_MEASURE=off skips measuring (the
capability table decides, as before measuring existed): the test command's notebooks run with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..config import RECIPE
from .device import Hardware, cpu_flags

if TYPE_CHECKING:
    from .execution import Execution

CACHE_ENV = "CIFAR10_CACHE"  # a directory for the remembered measurements; default: cache_dir()
SWITCH_ENV = "CIFAR10_MEASURE"  # "off": no measuring, the capability table decides
CACHE_FILE = "cpu-precision.json"
BASELINE = "fp32"  # what every other candidate must beat
MIN_GAIN = 1.10  # another precision is chosen only when at least this much faster: fp32 changes no number
BUDGET_S = 30.0  # seconds measuring may take (warm-up included), on the slowest CPU with native bf16
WARMUP_STEPS = 1  # an untimed step of each candidate first: it includes oneDNN's kernel compilation
MAX_ROUNDS = 3  # timed steps of each candidate at most, one of each in turn

Timer = Callable[[list[str]], dict[str, float]]  # candidate precisions -> training images per second


@dataclass(frozen=True)
class Measurement:
    """What was timed on this machine and what it chose."""

    chosen: str  # the precision auto resolves to
    images_per_s: tuple[tuple[str, float], ...]  # (precision, training images/s), in the order timed
    seconds: float = field(default=0.0, compare=False)  # what measuring cost; 0 when remembered
    remembered: bool = field(default=False, compare=False)  # read from the cache, not timed now

    def rate(self, precision: str) -> float | None:
        return dict(self.images_per_s).get(precision)

    def __str__(self) -> str:
        """'measured here: fp32 59 images/s, bf16 46'"""
        figures = [f"{name} {rate:.0f}" for name, rate in self.images_per_s]
        return f"measured here: {figures[0]} images/s" + "".join(f", {figure}" for figure in figures[1:])


# ---------------------------------------------------------------- the rule


def candidates(facts: Hardware) -> list[str]:
    """fp32 always; bf16 only where the CPU computes it natively (AVX512-BF16 or AMX-BF16)."""
    return [BASELINE, "bf16"] if facts.native_bf16 else [BASELINE]


def choose(images_per_s: dict[str, float]) -> str:
    """The fastest candidate if it is at least MIN_GAIN times as fast as fp32; else fp32."""
    fastest = max(images_per_s, key=lambda name: images_per_s[name])
    return fastest if images_per_s[fastest] / images_per_s[BASELINE] >= MIN_GAIN else BASELINE


def measured(facts: Hardware, batch_size: int | None = None, timer: Timer | None = None) -> Measurement | None:
    """The measurement for this CPU: remembered, or timed now (with `timer`, else the real training step)
    and remembered. None where there is nothing to choose from (no native bf16) or measuring is off."""
    batch_size = batch_size or RECIPE.batch_size
    options = candidates(facts)
    if len(options) < 2 or os.environ.get(SWITCH_ENV, "").strip().lower() == "off":
        return None
    key = cache_key(facts, batch_size)
    found = remembered(key)
    if found is not None:
        return found
    print(
        f"Timing the training step in {' and '.join(options)} to choose this CPU's precision: once per machine, "
        f"about {BUDGET_S:.0f} s on an idle machine ...",
        file=sys.stderr,
        flush=True,
    )
    busy = other_work(torch.get_num_threads())  # looked at before measuring: the measuring is load too
    start = time.perf_counter()
    rates = (timer or training_timer(facts, batch_size))(options)
    measurement = Measurement(choose(rates), tuple(rates.items()), time.perf_counter() - start)
    if busy:
        print(f"{busy}: this measurement holds for this run only; it is taken again next time.", file=sys.stderr)
    else:
        remember(key, measurement)
    return measurement


def load_average() -> float | None:
    """The system's load average over the last minute; None where the platform has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def other_work(threads: int) -> str | None:
    """Why a measurement taken now would not hold for this machine, or None. Other work on its cores slows
    the precisions unequally: on a 2-core Intel Xeon with AMX, bf16 measured 0.45x fp32 with about ten other
    jobs running and 2.0x idle. Busy: more runnable work over the last minute than the threads torch uses."""
    load = load_average()
    if load is None or load <= threads:
        return None
    return f"This machine is busy (load average {load:.1f} on {threads} threads)"


# ---------------------------------------------------------------- remembering


def cache_dir() -> Path:
    """CIFAR10_CACHE, else $XDG_CACHE_HOME/resnet18-cifar10, else ~/.cache/resnet18-cifar10."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "resnet18-cifar10"


def cache_key(facts: Hardware, batch_size: int) -> dict:
    """What a measurement holds for: another CPU, flag set, torch, thread count or batch size measures again."""
    flags = " ".join(sorted(cpu_flags()))
    return {
        "cpu": facts.name,
        "flags": hashlib.sha1(flags.encode()).hexdigest()[:12],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch_size": batch_size,
    }


def read_cache() -> list[dict]:
    """The remembered records; an unreadable or foreign file counts as empty (it is measured again)."""
    try:
        records = json.loads((cache_dir() / CACHE_FILE).read_text())
    except (OSError, ValueError):
        return []
    return records if isinstance(records, list) else []


def remembered_for(facts: Hardware, batch_size: int | None = None) -> Measurement | None:
    """This CPU's remembered measurement, if any; never times anything."""
    return remembered(cache_key(facts, batch_size or RECIPE.batch_size))


def remembered(key: dict) -> Measurement | None:
    for record in read_cache():
        if isinstance(record, dict) and record.get("key") == key:
            try:
                rates = tuple((str(name), float(rate)) for name, rate in record["images_per_s"].items())
                return Measurement(str(record["chosen"]), rates, remembered=True)
            except (KeyError, AttributeError, TypeError, ValueError):
                return None
    return None


def remember(key: dict, measurement: Measurement) -> None:
    """Add (or replace) this key's record; written atomically. A cache that cannot be written only costs
    measuring again next time."""
    records = [r for r in read_cache() if not (isinstance(r, dict) and r.get("key") == key)]
    records.append(
        {
            "key": key,
            "chosen": measurement.chosen,
            "images_per_s": {name: round(rate, 1) for name, rate in measurement.images_per_s},
            "seconds": round(measurement.seconds, 1),
            "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
    )
    path = cache_dir() / CACHE_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps(records, indent=1) + "\n")
        os.replace(partial, path)
    except OSError:
        pass


# ---------------------------------------------------------------- timing the real step


def training_timer(facts: Hardware, batch_size: int) -> Timer:
    """Times the project's own training step (train.new_run + train_epoch on one batch of `batch_size`
    images, channels_last, this process's threads) in each candidate precision."""

    def timer(names: list[str]) -> dict[str, float]:
        from .execution import Execution  # execution imports this module

        with torch.random.fork_rng(devices=[]), no_progress_bars():  # new_run seeds the global generator
            steps = {
                name: training_step(Execution(torch.device("cpu"), name, True, facts), batch_size) for name in names
            }
            return time_steps(steps, batch_size)

    return timer


def training_step(execution: Execution, batch_size: int) -> Callable[[], object]:
    """One SGD step of the lesson's training loop on a batch of random images. The only import of the lesson
    beyond config in machinery, made when measuring: the step timed must be the one that trains."""
    from ..data import Split
    from ..train import new_run, train_epoch

    cfg = RECIPE.replace(batch_size=batch_size, precision=execution.precision)
    run = new_run(cfg, execution, (0.5,) * 3, (0.25,) * 3)
    generator = torch.Generator().manual_seed(0)
    batch = Split(
        torch.randint(0, 256, (batch_size, 3, 32, 32), dtype=torch.uint8, generator=generator),
        torch.randint(0, 10, (batch_size,), generator=generator),
    )
    return lambda: float(train_epoch(run, batch)[0])


def time_steps(
    steps: dict[str, Callable[[], object]],
    batch_size: int,
    budget_s: float = BUDGET_S,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Images/s of each step: WARMUP_STEPS untimed of each, then rounds of one timed step of each in
    turn (background load slows them alike), up to MAX_ROUNDS while the budget lasts; one round at least.
    Each candidate's fastest step counts: load only ever slows a step."""
    start = clock()
    for step in steps.values():
        for _ in range(WARMUP_STEPS):
            step()
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(MAX_ROUNDS):
        round_start = clock()
        for name, step in steps.items():
            began = clock()
            step()
            best[name] = min(best[name], clock() - began)
        now = clock()
        if now + (now - round_start) > start + budget_s:
            break
    return {name: batch_size / seconds for name, seconds in best.items()}


@contextmanager
def no_progress_bars() -> Iterator[None]:
    """train_epoch draws a bar; none while measuring."""
    mode = os.environ.get("CIFAR10_PROGRESS")
    os.environ["CIFAR10_PROGRESS"] = "off"
    try:
        yield
    finally:
        if mode is None:
            del os.environ["CIFAR10_PROGRESS"]
        else:
            os.environ["CIFAR10_PROGRESS"] = mode
