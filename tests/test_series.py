"""`make series`: which notebooks it runs, what it says on a machine without a GPU, and Ctrl-C."""

import nbformat
import pytest
import torch

from helpers import config, series, train
from helpers.machinery import execution
from helpers.machinery.device import resolve_device
from tiny import TINY


def test_the_series_is_notebooks_01_to_04_in_order():
    names = [path.name[:2] for path in series.notebooks()]
    assert names == ["01", "02", "03", "04"]
    assert [path.name[:2] for path in series.notebooks(["03"])] == ["03"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_a_gpu_the_full_recipe_says_how_long_as_what_and_how_to_run_quick(capsys, monkeypatch):
    cpu = execution.resolve(torch.device("cpu"))
    monkeypatch.setattr(series, "timed_execution", lambda cfg: (cpu, 1 / 50))  # 50 images/s
    series.warn_without_gpu(config.RECIPE)
    said = " ".join(capsys.readouterr().out.split())
    # 50 epochs x 45,000 images at 1/50 s each = 45,000 s = 12.5 hours
    assert "No CUDA GPU found" in said and "about 12 hours" in said and "make series QUICK=1" in said
    assert f"as {cpu} (50 images/s)" in said
    series.warn_without_gpu(config.QUICK)
    assert capsys.readouterr().out == ""


def test_the_estimate_times_one_real_step_of_the_execution_that_will_run(monkeypatch):
    """Seconds, not minutes, where a step is slow: one small untimed step, then one timed step of a full batch."""
    batches, real_epoch = [], train.train_epoch

    def counted(run, split):
        batches.append((len(split), run.execution))
        return real_epoch(run, split)

    monkeypatch.setattr(train, "train_epoch", counted)
    cfg = config.RECIPE.replace(batch_size=32)
    used, seconds_per_image = series.timed_execution(cfg)
    assert [size for size, _ in batches] == [16, 32]
    assert all(ran == used for _, ran in batches) and used == execution.resolve(resolve_device("auto"))
    assert 0 < seconds_per_image < 10
    assert series.estimated_hours(cfg, 1 / 50) == pytest.approx(12.5)


def test_a_failing_cell_reaches_the_terminal_as_one_line_naming_the_notebook_and_the_cell(tmp_path, capsys):
    notebook = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell("# a refusal"),
            nbformat.v4.new_code_cell("from helpers.machinery.checkpoint import CheckpointError"),
            nbformat.v4.new_code_cell(
                'raise CheckpointError("runs/quick/checkpoint.pt holds 3 epochs;\\nleft as it is.")'
            ),
        ]
    )
    path = tmp_path / "refusing.ipynb"
    nbformat.write(notebook, path)
    stored = path.read_bytes()
    assert series.run([path]) == 1
    err = capsys.readouterr().err
    assert err.strip() == (
        "refusing.ipynb, cell 3: CheckpointError: runs/quick/checkpoint.pt holds 3 epochs; left as it is. "
        "(refusing.ipynb was left as it was.) With make series, FRESH=1 starts again."
    ), err
    assert path.read_bytes() == stored


def test_fresh_reaches_the_notebooks_training_which_then_starts_again(tiny, tmp_path, monkeypatch):
    monkeypatch.delenv("CIFAR10_FRESH", raising=False)
    monkeypatch.setattr(series, "run", lambda paths: 0)  # the notebooks' kernels inherit this environment
    assert series.main(["--quick", "--fresh"]) == 0
    asked = []

    def decided(*args, fresh, required, **more):  # resume.decide's fresh start is tested in test_resume
        asked.append(fresh)
        raise InterruptedError

    monkeypatch.setattr(train, "decide", decided)
    with pytest.raises(InterruptedError):
        train.fit(TINY, tiny, device="cpu", checkpoint_path=tmp_path / "checkpoint.pt")  # as notebook 03 calls it
    monkeypatch.delenv("CIFAR10_FRESH")
    with pytest.raises(InterruptedError):
        train.fit(TINY, tiny, device="cpu", checkpoint_path=tmp_path / "checkpoint.pt")
    assert asked == [True, False]


def test_after_a_stop_fresh_is_dropped_only_once_training_has_started_over(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR10_OUTPUT", str(tmp_path))
    monkeypatch.setenv("CIFAR10_FRESH", "1")
    config.checkpoint_path().parent.mkdir(parents=True)
    config.checkpoint_path().write_bytes(b"the old run")
    at_start = series.checkpoint_state()
    assert "with FRESH=1" in series.how_to_carry_on(at_start)  # stopped in notebook 01: nothing set aside yet
    config.checkpoint_path().rename(tmp_path / "aside.pt")
    assert "without FRESH=1" in series.how_to_carry_on(at_start)  # set aside: the fresh run has begun
    monkeypatch.delenv("CIFAR10_FRESH")
    assert series.how_to_carry_on(at_start) == "Run the series again"


@pytest.mark.slow
def test_a_notebook_the_series_ran_opens_unmodified_in_jupyterlab(tmp_path):
    """JupyterLab writes the kernel's display name, "Python 3 (ipykernel)" (ipykernel's kernel.json), over any
    other, and then asks to save an unchanged notebook on closing. The series stores that name, and no widget state."""
    path = tmp_path / "plain.ipynb"
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(6 * 7)")])
    notebook.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nbformat.write(notebook, path)
    series.execute(path)
    stored = nbformat.read(path, as_version=4)
    assert stored.metadata["kernelspec"] == {
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
        "name": "python3",
    }
    assert "widgets" not in stored.metadata
    assert stored.cells[0].outputs[0]["text"] == "42\n"
