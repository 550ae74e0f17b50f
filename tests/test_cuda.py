"""What only a GPU can show, skipped without one; benchmarks/gpu_check.sh runs this file first on a GPU.

Every execution's epoch with torch's sync debugging set to error (any host sync raises), eager and
compiled; exact resume on CUDA; a checkpoint trained on the CPU evaluated on the GPU; the AUTO table's
choice for this GPU; a device index this machine lacks. Imports nothing that a bare GPU machine may lack
(Jupyter, nbformat, yaml).
"""

import pandas as pd
import pytest
import torch

from helpers import evaluate, train
from helpers.data import Datasets, Split
from helpers.machinery import execution
from helpers.machinery.device import DeviceError, resolve_device
from helpers.machinery.execution import Execution
from tiny import MEASURED, TINY

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def restore_cuda_switches():
    """resolve() and these tests set global cuDNN and sync-debug flags: put them back after each test."""
    cudnn = torch.backends.cudnn
    saved = (cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    yield
    torch.cuda.set_sync_debug_mode(0)
    cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def native_bf16() -> bool:
    """The reference for the table: compute capability 8.0 (Ampere) or later, read from the device's properties."""
    properties = torch.cuda.get_device_properties(CUDA)
    return (properties.major, properties.minor) >= (8, 0)


def recipe_shaped(seed: int = 0) -> Datasets:
    """Random images in the recipe's shapes on the GPU: 200 training images (a batch of 128, then the
    ragged 72), 1,000 validation images (one evaluation chunk)."""
    generator = torch.Generator(CUDA).manual_seed(seed)

    def split(n):
        images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, device=CUDA, generator=generator)
        return Split(images, (images.float().mean((1, 2, 3)) * 10 / 256).long().clamp(0, 9))

    train_split, val = split(200), split(1000)
    return Datasets(train_split, val, val, (0.5,) * 3, (0.25,) * 3)


EXECUTIONS = ["fp32", "bf16", "fp16"]


def execution_of(precision: str) -> Execution:
    if precision == "bf16" and not native_bf16():
        pytest.skip("bf16 is emulated on this GPU")
    return execution.resolve(CUDA, precision)


def epoch_without_sync(run: train.Run, data: Datasets) -> None:
    """One epoch and its validation with every host sync an error, then a check that it really computed."""
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss, accuracy = train.train_epoch(run, data.train)
        val_loss, val_accuracy = train.validate(run, data.val)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize(CUDA)
    assert all(torch.isfinite(t) for t in (loss, accuracy, val_loss, val_accuracy))


@pytest.mark.parametrize("precision", EXECUTIONS)
def test_an_epoch_never_waits_for_the_gpu(precision):
    """After a first epoch (cuDNN autotuning, allocations), an epoch and its validation make no host sync."""
    data = recipe_shaped()
    run = train.new_run(TINY.replace(batch_size=128), execution_of(precision), data.mean, data.std)
    assert run.scaler.is_enabled() is (precision == "fp16")
    train.train_epoch(run, data.train)
    epoch_without_sync(run, data)


def test_the_compiled_step_gives_the_eager_history_compiles_each_shape_once_and_never_waits(tmp_path):
    """--compile on this GPU (CUDA graphs): the eager history to the execution's tolerance; graphs for the
    full batch, the ragged last batch and the evaluation chunk made in the first epoch and never again;
    then an epoch with every host sync an error."""
    from torch._dynamo.utils import counters

    data, chosen = recipe_shaped(), execution.resolve(CUDA)
    cfg = TINY.replace(batch_size=128, epochs=3)
    eager = train.fit(cfg, data, chosen, checkpoint_path=tmp_path / "eager.pt")
    torch._dynamo.reset()
    counters.clear()
    run = train.new_run(cfg.replace(compile=True), chosen, data.mean, data.std)
    graphs = []
    for _ in range(cfg.epochs):
        record = train.run_epoch(run, data.train, data.val)
        run.history.append(record)
        run.epoch += 1
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs == [graphs[0]] * 3 and graphs[0] <= 3, graphs
    compiled, eager = train.history_frame(run.history).reset_index()[MEASURED], eager.reset_index()[MEASURED]
    # other kernels, other roundings (bf16, TF32): losses to 2%, accuracies to a few images of 200 and 1,000
    for column in ("train_loss", "val_loss"):
        torch.testing.assert_close(torch.tensor(compiled[column]), torch.tensor(eager[column]), rtol=0.02, atol=0)
    for column in ("train_acc", "val_acc"):
        assert (compiled[column] - eager[column]).abs().max() <= 0.03, (compiled[column], eager[column])
    assert compiled.lr.tolist() == eager.lr.tolist()
    epoch_without_sync(run, data)
    assert counters["stats"]["unique_graphs"] == graphs[0]


def test_resume_continues_exactly_on_the_gpu(tiny, tmp_path):
    """The generator is a CUDA one here: its state must carry over as the CPU's does. cuDNN is asked for
    deterministic kernels, so that any difference is the resume's."""
    torch.backends.cudnn.deterministic = True
    chosen = execution.resolve(CUDA)

    def fit(cfg, path, **kwargs):
        return train.fit(cfg, tiny, chosen, checkpoint_path=tmp_path / path, **kwargs).reset_index()[MEASURED]

    straight = fit(TINY, "a.pt")
    fit(TINY.replace(epochs=1), "b.pt")
    resumed = fit(TINY, "b.pt", resume=True)
    pd.testing.assert_frame_equal(resumed, straight, check_exact=False, rtol=1e-6)
    a, b = (torch.load(tmp_path / path, weights_only=True)["rng"]["generator"] for path in ("a.pt", "b.pt"))
    assert torch.equal(a, b)  # the same shuffles and augmentations were drawn


def test_a_checkpoint_trained_on_the_cpu_evaluates_on_the_gpu(tiny, tiny_checkpoint):
    """The same network on either device: in fp32 without TF32 the CPU's probabilities to float rounding;
    in the execution auto picks here, to that precision's rounding."""
    cpu = execution.resolve(torch.device("cpu"), "fp32")
    reference = evaluate.predict(*load_and_inputs(tiny, tiny_checkpoint, cpu))
    fp32, auto = execution.resolve(CUDA, "fp32"), execution.resolve(CUDA)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # the fixture restores them
    for chosen, tolerance in ((fp32, 1e-4), (auto, 0.1)):
        got = evaluate.predict(*load_and_inputs(tiny, tiny_checkpoint, chosen))
        assert torch.equal(got.labels, reference.labels)
        torch.testing.assert_close(got.probs, reference.probs, atol=tolerance, rtol=0, msg=str(chosen))


def load_and_inputs(tiny: Datasets, path, chosen: Execution):
    model, state = evaluate.load_model(path, chosen)
    return model, tiny.test.images, tiny.test.labels, state["mean"], state["std"], chosen


def test_auto_picks_this_gpus_row_of_the_table():
    chosen = execution.resolve(CUDA)
    assert chosen.hardware.name == torch.cuda.get_device_name(CUDA)
    assert chosen.hardware.native_bf16 is native_bf16()
    assert (chosen.precision, chosen.channels_last) == ("bf16" if native_bf16() else "fp16", True)
    assert chosen.scales_loss is (chosen.precision == "fp16")


def test_a_gpu_index_this_machine_lacks_is_a_one_line_error():
    missing = f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(DeviceError, match=f"'{missing}' was asked for, but this machine has"):
        resolve_device(missing)
