"""`make series`: which notebooks it runs, what it says on a machine without a GPU, and Ctrl-C."""

import nbformat
import pytest
import torch

from helpers import config, series, train
from helpers.machinery import execution
from helpers.machinery.device import resolve_device


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
