"""`make series`: which notebooks it runs, and what it says on a machine without a GPU."""
import pytest
import torch

from helpers import config, series


def test_the_series_is_notebooks_01_to_04_in_order():
    names = [path.name[:2] for path in series.notebooks()]
    assert names == ["01", "02", "03", "04"]
    assert [path.name[:2] for path in series.notebooks(["03"])] == ["03"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_a_gpu_the_full_recipe_says_how_long_and_how_to_run_quick(capsys, monkeypatch):
    monkeypatch.setattr(series, "estimated_hours", lambda cfg: 12.3)
    series.warn_without_gpu(config.RECIPE)
    said = capsys.readouterr().out
    assert "No CUDA GPU found" in said and "about 12 hours" in said and "make series QUICK=1" in said
    series.warn_without_gpu(config.QUICK)
    assert capsys.readouterr().out == ""


def test_the_estimate_times_real_training_steps():
    hours = series.estimated_hours(config.RECIPE.replace(batch_size=8, epochs=1), steps=2)
    assert 0 < hours < 24  # 45,000 images at the measured per-image time of this machine
