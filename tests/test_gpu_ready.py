"""What the GPU run needs, tested on the CPU: the training step never waits for the device, in every
execution; the fused optimizer and the checkpoints written before it; the compiled step (`--compile`)
against the eager one; resuming on another GPU model. tests/test_cuda.py has the GPU's side."""

import pandas as pd
import pytest
import torch

from helpers import train
from helpers.data import Datasets
from helpers.machinery import compiled, execution
from helpers.machinery.execution import Execution
from helpers.machinery.resume import capture, restore
from tiny import MEASURED, TINY

CPU = torch.device("cpu")
FACTS = execution.resolve(CPU).hardware
# fp16 is forced here: resolve() refuses it on a CPU, but the GradScaler path it takes is the one a T4 takes.
EXECUTIONS = {precision: Execution(CPU, precision, True, FACTS) for precision in ("fp32", "bf16", "fp16")}


def two_steps(tiny: Datasets) -> Datasets:
    """64 training images, batch 32: two steps an epoch, so that the test is about the loop, not its length."""
    return Datasets(tiny.train.subset(torch.arange(64)), tiny.val, tiny.test, tiny.mean, tiny.std)


def small_net(width: int = 8) -> torch.nn.Module:
    """A conv net small enough for fp16 on a CPU, where torch's fp16 convolutions are reference loops (one
    ResNet18 step on 8 images: 518 s in fp16, 8 s in fp32 on 2 busy cores); the loop is under test here.
    Called as train.new_run calls resnet18; the width is ignored."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 10),
    )


@pytest.mark.parametrize("precision", EXECUTIONS)
def test_an_epoch_makes_no_host_sync_in_any_execution(tiny, monkeypatch, precision):
    """GradScaler.step calls Tensor.item() once a step unless the optimizer checks for infs itself (fused SGD).
    new_run builds the run (optimizer, scaler, generator) around a small net; train_epoch runs the loop."""
    monkeypatch.setattr(train, "resnet18", small_net)
    run = train.new_run(TINY, EXECUTIONS[precision], tiny.mean, tiny.std)
    assert run.scaler.is_enabled() is (precision == "fp16")
    before = [p.detach().clone() for p in run.model.parameters()]
    waits = []

    def forbidden(name):
        def record(*args, **kwargs):
            waits.append(name)
            raise AssertionError(f"the training loop waited for the device: Tensor.{name}()")

        return record

    with monkeypatch.context() as patch:
        for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__"):
            patch.setattr(torch.Tensor, name, forbidden(name))
        loss, accuracy = train.train_epoch(run, two_steps(tiny).train)
    assert waits == []
    assert torch.isfinite(loss) and 0 <= accuracy <= 1
    assert any(not torch.equal(a, b) for a, b in zip(before, run.model.parameters(), strict=True))  # it trained


def test_the_optimizer_is_torchs_fused_sgd_where_torch_offers_it():
    run = train.new_run(TINY, EXECUTIONS["fp32"], (0.5,) * 3, (0.25,) * 3)
    assert isinstance(run.optimizer, torch.optim.SGD)
    assert run.optimizer.param_groups[0]["fused"] is True  # torch has a CPU kernel since 2.4


def foreach_era_run(tiny: Datasets) -> train.Run:
    """A run with the optimizer as this project built it before the fused one (torch's default SGD)."""
    run = train.new_run(TINY, EXECUTIONS["fp32"], tiny.mean, tiny.std)
    run.optimizer = torch.optim.SGD(
        run.model.parameters(), lr=TINY.lr, momentum=TINY.momentum, weight_decay=TINY.weight_decay
    )
    run.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        run.optimizer, factor=TINY.plateau_factor, patience=TINY.plateau_patience
    )
    return run


def test_a_checkpoint_written_before_the_fused_optimizer_resumes_on_it(tiny, monkeypatch):
    """A format-2 checkpoint stores fused=None in its param_groups; loading it must not switch the fused
    optimizer back (fp16 would wait for the device again), and must carry its momentum over."""
    monkeypatch.setattr(train, "resnet18", small_net)  # an optimizer's state is the same for any model
    data = two_steps(tiny)
    old = foreach_era_run(tiny)
    old.history.append(train.run_epoch(old, data.train, data.val))
    old.epoch = 1
    state = capture(old)
    assert state["optimizer"]["param_groups"][0]["fused"] in (None, False)

    resumed = train.new_run(TINY, EXECUTIONS["fp32"], tiny.mean, tiny.std)
    restore(resumed, state)
    assert resumed.optimizer.param_groups[0]["fused"] is True
    assert resumed.optimizer.param_groups[0]["lr"] == old.optimizer.param_groups[0]["lr"]
    for index, param in enumerate(resumed.model.parameters()):  # a state_dict numbers parameters in order
        saved = state["optimizer"]["state"][index]["momentum_buffer"]
        assert torch.equal(resumed.optimizer.state[param]["momentum_buffer"], saved)
    # the next epoch: the same SGD in another kernel, so equal to rounding
    expected, got = (train.run_epoch(run, data.train, data.val) for run in (old, resumed))
    for key in ("train_loss", "val_loss", "lr"):
        assert got[key] == pytest.approx(expected[key], rel=1e-4)


# ---------------------------------------------------------------- the compiled step


def ragged(tiny: Datasets) -> tuple[Datasets, object]:
    """128 training images in batches of 48 (48, 48 and a last batch of 32, as the recipe's 72), 64 to
    validate in one chunk, 3 epochs."""
    return tiny, TINY.replace(epochs=3, batch_size=48)


@pytest.mark.slow  # aot_eager 32 s, inductor longer, on 2 busy cores
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_a_compiled_run_gives_the_eager_history_and_compiles_each_shape_once(tiny, tmp_path, monkeypatch, backend):
    """torch.compile on the CPU: the same history to float tolerance; the full batch, the last batch and
    the validation chunk each compiled once, in the first epoch, and nothing again after it. aot_eager
    traces the same graphs as inductor, forward and backward, without generating code: fast; inductor
    (the real compiler) is marked slow. A small net with BatchNorm: the ResNet18 compiled is compared with
    eager in tests/test_model.py (forward) and tests/test_cuda.py (training, on a GPU)."""
    from torch._dynamo.utils import counters

    monkeypatch.setattr(compiled, "BACKEND", backend)
    monkeypatch.setattr(train, "resnet18", small_net)  # what recompiles is the shapes and modes, not the model
    data, cfg = ragged(tiny)
    eager = train.fit(cfg, data, device="cpu", checkpoint_path=tmp_path / "eager.pt")
    torch._dynamo.reset()
    counters.clear()
    graphs_per_epoch = []
    real_run_epoch = train.run_epoch

    def counting(*args):
        record = real_run_epoch(*args)
        graphs_per_epoch.append(counters["stats"]["unique_graphs"])
        return record

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "run_epoch", counting)
        compiled_history = train.fit(cfg.replace(compile=True), data, device="cpu", checkpoint_path=tmp_path / "c.pt")
    assert graphs_per_epoch == [3, 3, 3]  # train at 48, train at 32, validation at 64; then none
    assert counters["frames"]["total"] == 3  # the first compilation and two recompilations, all in epoch 1
    pd.testing.assert_frame_equal(
        compiled_history.reset_index()[MEASURED], eager.reset_index()[MEASURED], check_exact=False, rtol=1e-3
    )


def test_the_compile_mode_captures_cuda_graphs_on_a_gpu_only():
    assert compiled.mode_for(torch.device("cuda")) == "reduce-overhead" and compiled.uses_cuda_graphs(
        torch.device("cuda:1")
    )
    assert compiled.mode_for(CPU) == "default" and not compiled.uses_cuda_graphs(CPU)


# ---------------------------------------------------------------- resuming on another GPU model


def test_resuming_on_another_gpu_model_says_that_the_run_goes_on_differently(capsys):
    from types import SimpleNamespace

    from helpers.machinery.device import Hardware
    from helpers.machinery.resume import note_another_gpu

    t4 = Hardware("cuda", "Tesla T4", False, "compute capability 7.5")
    h200 = Hardware("cuda", "NVIDIA H200", True, "compute capability 9.0")
    state = {"execution": {"hardware": str(t4)}}
    for now, said in ((h200, True), (t4, False)):
        note_another_gpu(SimpleNamespace(device=torch.device("cuda"), execution=SimpleNamespace(hardware=now)), state)
        error = capsys.readouterr().err
        assert ("trained on Tesla T4 and resumes on NVIDIA H200" in error) is said


# ---------------------------------------------------------------- a trained run carried off the GPU machine


def test_a_run_split_into_fp16_parts_joins_into_a_finished_checkpoint(tiny_checkpoint, tmp_path, monkeypatch):
    """Two parts under the 16 MiB a lent machine returns; joined, the weights are the fp16 rounding of the
    originals and everything else is the checkpoint's own, so that the run is reused and evaluated."""
    from helpers import config, evaluate
    from helpers.machinery import checkpoint

    monkeypatch.syspath_prepend(str(config.REPO_ROOT / "benchmarks"))
    import model_parts

    assert model_parts.main(["split", str(tiny_checkpoint), str(tmp_path / "out")]) == 0
    sizes = [(tmp_path / "out" / part).stat().st_size for part in model_parts.PARTS]
    assert max(sizes) < 16 * 2**20 and max(sizes) < 0.6 * sum(sizes)  # halves, by bytes
    assert model_parts.main(["join", str(tmp_path / "out"), str(tmp_path / "joined.pt")]) == 0
    original, joined = checkpoint.load(tiny_checkpoint), checkpoint.load(tmp_path / "joined.pt")
    assert list(joined["model"]) == list(original["model"])
    for key, tensor in original["model"].items():
        expected = tensor.half().float() if tensor.is_floating_point() else tensor
        assert torch.equal(joined["model"][key], expected), key
    for key in ("config", "history", "epoch", "mean", "std", "data", "execution", "scheduler", "rng"):
        assert str(joined[key]) == str(original[key]), key
    evaluate.load_model(tmp_path / "joined.pt", EXECUTIONS["fp32"])  # checked against the model's shapes
