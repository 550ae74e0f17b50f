"""Every result says what produced it: a checkpoint is evaluated on the data it was trained on (or says
that it was not), runs in one folder keep their own history and metrics, training throughput is timed
without validation, a configuration without a validation split is refused before anything runs, and
checkpoints written by commit 6960a31 keep evaluating, resuming and being reused."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from helpers import config, data, evaluate, plots, predict, train
from helpers.data import Datasets, Split
from helpers.machinery import checkpoint, execution, provenance
from helpers.machinery.checkpoint import CheckpointError
from tiny import MEASURED, TINY, tiny_datasets

TESTS = Path(__file__).resolve().parent
CPU_FP32 = execution.resolve(torch.device("cpu"), "fp32")
# The lead's real run of commit 6960a31 (a quick 1-epoch run), beside the checkout like ../shared/data.
REAL_OLD_RUN = config.REPO_ROOT.parent / "old-run" / "checkpoint.pt"

# What commit 6960a31 wrote (git show 6960a31:helpers/resume.py, capture; helpers/config.py, Config;
# helpers/train.py, run_epoch), written out here so that the test does not take them from the code.
OLD_STATE_KEYS = {
    "architecture",
    "format",
    "device_type",
    "execution",
    "config",
    "data",
    "epoch",
    "history",
    "mean",
    "std",
    "model",
    "optimizer",
    "scheduler",
    "scaler",
    "rng",
}
OLD_CONFIG_KEYS = (
    "name val_size val_from_test train_limit test_limit crop_padding flip_p cutout_holes cutout_length epochs "
    "batch_size lr momentum weight_decay plateau_factor plateau_patience precision compile seed eval_batch_size "
    "checkpoint_every_s"
).split()
OLD_HISTORY_KEYS = MEASURED + ["seconds", "images_per_s", "execution", "hardware"]


# ---------------------------------------------------------------- small data sets with names and fingerprints


def small_set(label: str, fingerprint: str | None, seed: int = 0) -> Datasets:
    """tiny_datasets' layout (128 training, 64 validation = test images, ten classes by brightness) with
    its own random pixels for each seed, named and fingerprinted as prepare() would."""
    if seed == 0:
        base = tiny_datasets()
    else:
        generator = torch.Generator().manual_seed(seed)
        images = torch.randint(0, 256, (192, 3, 32, 32), dtype=torch.uint8, generator=generator)
        labels = (images.float().mean((1, 2, 3)) * 10 / 256).long().clamp(0, 9)
        train_split, held_out = Split(images[:128], labels[:128]), Split(images[128:], labels[128:])
        base = Datasets(train_split, held_out, held_out, *data.channel_stats(train_split.images))
    return Datasets(base.train, base.val, base.test, base.mean, base.std, label=label, fingerprint=fingerprint)


SET_A = small_set("small set A", "a" * 40)
SET_B = small_set("small set B", "b" * 40, seed=1)  # the same classes, other pixels
SET_A_NAMED_ONLY = small_set("small set A", None)  # as a data set built by hand: no fingerprint
SETS = {"A": SET_A, "B": SET_B, "A-by-name": SET_A_NAMED_ONLY}


@pytest.fixture
def data_by_name(monkeypatch):
    """helpers.evaluate's command line loads SETS[--data] instead of CIFAR-10 (prepare is the only change)."""
    monkeypatch.setattr(evaluate, "prepare", lambda cfg, source: SETS[source])


@pytest.fixture(scope="module")
def trained_on_a(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("run-a") / "checkpoint.pt"
    train.fit(TINY.replace(epochs=1), SET_A, device="cpu", checkpoint_path=path)
    return path


def evaluate_cli(path: Path, source: str, *extra: str) -> int:
    return evaluate.main(["--checkpoint", str(path), "--data", source, "--device", "cpu", *extra])


# ---------------------------------------------------------------- evaluation checks the data


def test_the_checkpoint_records_its_data_label_and_fingerprint(trained_on_a):
    state = checkpoint.load(trained_on_a)
    assert (state["data"], state["data_fingerprint"]) == ("small set A", "a" * 40)


def test_evaluating_on_other_data_is_refused_in_one_line_naming_both(trained_on_a, data_by_name, tmp_path, capsys):
    assert evaluate_cli(trained_on_a, "B", "--json", str(tmp_path / "r.json")) == 2
    captured = capsys.readouterr()
    assert captured.err == (
        "error: The checkpoint was trained on small set A [data aaaaaaaaaaaa] and this is small set B "
        "[data bbbbbbbbbbbb]: evaluate it on its own data (--data or CIFAR10_DATA), or pass --other-data "
        "(allow_other_data=True) to score it anyway, labelled 'trained on A, evaluated on B'.\n"
    )
    assert "test accuracy" not in captured.out and not (tmp_path / "r.json").exists()


def test_the_same_name_with_other_content_is_other_data(trained_on_a, data_by_name, capsys, monkeypatch):
    monkeypatch.setitem(SETS, "A-other-pixels", small_set("small set A", "c" * 40, seed=1))
    assert evaluate_cli(trained_on_a, "A-other-pixels") == 2
    assert "trained on small set A [data aaaaaaaaaaaa] and this is small set A [data cccccccccccc]" in (
        capsys.readouterr().err
    )


def test_with_other_data_allowed_every_result_says_trained_on_a_evaluated_on_b(
    trained_on_a, data_by_name, tmp_path, capsys
):
    results = tmp_path / "results.json"
    assert evaluate_cli(trained_on_a, "B", "--other-data", "--json", str(results)) == 0
    saved = json.loads(results.read_text())
    both = "trained on small set A [data aaaaaaaaaaaa], evaluated on small set B [data bbbbbbbbbbbb]"
    assert saved["data"] == both and saved["data_checked_by"] == "fingerprint"
    assert saved["trained_on_data"].startswith("small set A") and saved["evaluated_on_data"].startswith("small set B")
    assert saved["test_images"] == 64
    out = capsys.readouterr().out
    assert f"data: {both}\n" in out  # the line above the per-class table
    figures = sorted(p.name for p in trained_on_a.parent.glob("*.on-*.png"))  # beside the run
    assert figures == [
        "confusion_matrix.on-small-set-b-data-bbbbbbbbbbbb.png",
        "confusion_matrix_normalized.on-small-set-b-data-bbbbbbbbbbbb.png",
    ]  # beside, never over, the figures of the checkpoint's own data


def test_figure_titles_name_the_data_they_were_measured_on():
    cm = evaluate.confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 1]))
    fig = plots.confusion_matrix(cm, normalize=True, data_label="trained on A, evaluated on B")
    assert fig.axes[0].get_title() == "share of each true class\ntrained on A, evaluated on B"


def test_on_its_own_data_it_passes_checked_by_fingerprint(trained_on_a, data_by_name, tmp_path, capsys):
    results = tmp_path / "results.json"
    assert evaluate_cli(trained_on_a, "A", "--json", str(results)) == 0
    saved = json.loads(results.read_text())
    assert (saved["data"], saved["data_checked_by"]) == ("small set A", "fingerprint")
    out = capsys.readouterr().out
    assert "data: small set A\n" in out and "by name" not in out


def test_without_a_fingerprint_the_check_goes_by_name_and_says_so_once(trained_on_a, data_by_name, tmp_path, capsys):
    results = tmp_path / "results.json"
    assert evaluate_cli(trained_on_a, "A-by-name", "--json", str(results)) == 0
    out = capsys.readouterr().out
    assert out.count("checked by name only") == 1
    assert "The data was checked by name only ('small set A' against 'small set A'): this data set has no" in out
    assert json.loads(results.read_text())["data_checked_by"] == "name"


def test_the_notebooks_check_is_the_same_function(trained_on_a):
    state = checkpoint.load(trained_on_a)
    assert evaluate.check_data(state, SET_A).description == "small set A"
    with pytest.raises(provenance.OtherDataError, match="trained on small set A .* and this is small set B"):
        evaluate.check_data(state, SET_B)
    allowed = evaluate.check_data(state, SET_B, allow_other_data=True)
    assert (
        allowed.description.startswith("trained on small set A") and "evaluated on small set B" in allowed.description
    )


def test_resuming_on_data_with_another_fingerprint_is_refused(tmp_path):
    path = tmp_path / "c.pt"
    train.fit(TINY.replace(epochs=1), SET_A, device="cpu", checkpoint_path=path)
    relabelled = small_set("small set A", "d" * 40)  # same name, same pixels, another content key
    with pytest.raises(CheckpointError, match="data_fingerprint: 'a{40}' in the checkpoint, 'd{40}' now"):
        train.fit(TINY, relabelled, device="cpu", checkpoint_path=path)


def test_predict_names_the_execution_it_used_and_the_checkpoints_data(trained_on_a, tmp_path, capsys):
    from PIL import Image

    Image.fromarray(SET_A.test.images[0].permute(1, 2, 0).numpy()).save(tmp_path / "one.png")
    result = predict.classify([tmp_path / "one.png"], trained_on_a, device="cpu")
    assert result.execution == CPU_FP32 and result.trained_on == "small set A [data aaaaaaaaaaaa]"
    assert predict.main(["--checkpoint", str(trained_on_a), "--device", "cpu", str(tmp_path / "one.png")]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.endswith(f"classified in {CPU_FP32} by a model trained on small set A [data aaaaaaaaaaaa].")


# ---------------------------------------------------------------- checkpoints of commit 6960a31


def as_written_by_6960a31(state: dict) -> dict:
    """A checkpoint's state with only what commit 6960a31 wrote: no fingerprint, history rows without the
    separate training and validation times, the configuration without settings added since."""
    old = {key: value for key, value in state.items() if key in OLD_STATE_KEYS}
    old["config"] = {key: state["config"][key] for key in OLD_CONFIG_KEYS}
    old["history"] = [{key: row[key] for key in OLD_HISTORY_KEYS} for row in state["history"]]
    return old


def write_old_run(state: dict, path: Path) -> None:
    """checkpoint.pt with history.csv and metrics.json beside it, as 6960a31 laid a run out."""
    old = as_written_by_6960a31(state)
    checkpoint.save(old, path)
    pd.DataFrame(old["history"]).set_index("epoch").to_csv(path.with_name("history.csv"))
    path.with_name("metrics.json").write_text("{}")


def test_a_6960a31_checkpoint_is_built_as_that_commit_wrote_it(trained_on_a, tmp_path):
    write_old_run(checkpoint.load(trained_on_a), tmp_path / "checkpoint.pt")
    old = checkpoint.load(tmp_path / "checkpoint.pt")
    assert set(old) == OLD_STATE_KEYS and list(old["config"]) == OLD_CONFIG_KEYS
    assert list(pd.read_csv(tmp_path / "history.csv").columns) == OLD_HISTORY_KEYS
    if REAL_OLD_RUN.exists():  # the real one, written by a checkout of 6960a31
        real = checkpoint.load(REAL_OLD_RUN)
        assert set(real) == set(old) and set(real["config"]) == set(old["config"])
        assert set(real["history"][0]) == set(old["history"][0])
        assert list(pd.read_csv(REAL_OLD_RUN.with_name("history.csv")).columns) == OLD_HISTORY_KEYS


# Commit 6960a31 knew one width, 64: its checkpoints hold no width setting, which now means 64. The old runs
# built here are therefore full width (a narrow one would be a configuration 6960a31 could not write).
OLD_WIDTH = TINY.replace(width=64)


@pytest.fixture(scope="module")
def full_width_on_a(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("run-a-64") / "checkpoint.pt"
    train.fit(OLD_WIDTH.replace(epochs=1), SET_A, device="cpu", checkpoint_path=path)
    return path


def test_a_6960a31_checkpoint_still_evaluates_checked_by_name(full_width_on_a, data_by_name, tmp_path, capsys):
    path = tmp_path / "runs" / "checkpoint.pt"
    write_old_run(checkpoint.load(full_width_on_a), path)
    results = tmp_path / "results.json"
    assert evaluate_cli(path, "A", "--json", str(results)) == 0
    out = capsys.readouterr().out
    assert out.count("checked by name only") == 1 and "the checkpoint records no content fingerprint" in out
    assert json.loads(results.read_text())["data"] == "small set A"
    assert evaluate_cli(path, "B") == 2  # by name, other data is still other data
    assert "trained on small set A and this is small set B [data bbbbbbbbbbbb]" in capsys.readouterr().err


def no_training(*args):
    raise AssertionError("a training epoch ran")


def test_a_finished_6960a31_run_is_reused_and_its_old_history_summarised(tmp_path, monkeypatch, capsys):
    path = tmp_path / "runs" / "recipe" / "checkpoint.pt"
    train.fit(OLD_WIDTH, SET_A, device="cpu", checkpoint_path=path)
    write_old_run(checkpoint.load(path), path)
    before = {name: path.with_name(name).read_bytes() for name in ("checkpoint.pt", "history.csv")}
    monkeypatch.setattr(train, "train_epoch", no_training)
    capsys.readouterr()
    history = train.fit(OLD_WIDTH, SET_A, device="cpu", checkpoint_path=path)
    assert "holds a finished run of this configuration (2 epochs): reusing it" in capsys.readouterr().out
    assert {name: path.with_name(name).read_bytes() for name in before} == before
    for old in (history, pd.read_csv(path.with_name("history.csv"), index_col="epoch")):
        summary = train.summarize(old, "small set A")
        assert "median_images_per_s" not in summary  # old rows time whole epochs: not training throughput
        assert summary["median_epoch_images_per_s"] == round(old.images_per_s.median(), 1)
        plots.learning_curves(old)


def test_a_partial_6960a31_run_resumes_exactly_and_its_new_rows_time_training_apart(tmp_path):
    straight = train.fit(OLD_WIDTH, SET_A, device="cpu", checkpoint_path=tmp_path / "straight" / "checkpoint.pt")
    path = tmp_path / "old" / "checkpoint.pt"
    train.fit(OLD_WIDTH.replace(epochs=1), SET_A, device="cpu", checkpoint_path=path)
    write_old_run(checkpoint.load(path), path)
    resumed = train.fit(OLD_WIDTH, SET_A, device="cpu", checkpoint_path=path)
    pd.testing.assert_frame_equal(resumed[MEASURED[1:]], straight[MEASURED[1:]], check_exact=True)
    saved = pd.read_csv(path.with_name("history.csv"), index_col="epoch")
    assert saved.train_seconds.isna().tolist() == [True, False]  # epoch 1 from 6960a31, epoch 2 from now
    summary = json.loads(path.with_name("metrics.json").read_text())
    assert summary["throughput_epochs"] == 1
    assert summary["median_images_per_s"] == round(128 / saved.train_seconds[2], 1)
    assert checkpoint.load(path)["data_fingerprint"] == "a" * 40  # resumed on fingerprinted data, now recorded


@pytest.mark.slow
def test_the_real_6960a31_run_evaluates_and_is_reused(real_source, tmp_path, monkeypatch, capsys):
    if not REAL_OLD_RUN.exists():
        pytest.skip("no run of commit 6960a31 beside the checkout (../old-run/checkpoint.pt)")
    copy = tmp_path / "runs" / "quick" / "checkpoint.pt"
    copy.parent.mkdir(parents=True)
    for name in ("checkpoint.pt", "history.csv", "metrics.json"):
        copy.with_name(name).write_bytes(REAL_OLD_RUN.with_name(name).read_bytes())
    assert evaluate.main(["--checkpoint", str(copy), "--data", str(real_source), "--device", "cpu"]) == 0
    assert "checked by name only" in capsys.readouterr().out
    state = checkpoint.load(copy)
    cfg = evaluate.checkpoint_config(state)
    monkeypatch.setattr(train, "train_epoch", no_training)
    history = train.fit(cfg, data.prepare(cfg, real_source), device="cpu", checkpoint_path=copy)
    assert "reusing it" in capsys.readouterr().out and len(history) == state["epoch"]
    train.summarize(pd.read_csv(copy.with_name("history.csv"), index_col="epoch"), state["data"])


# ---------------------------------------------------------------- one run, its own files


def tiny_process(path: Path, epochs: int, lr: float | None = None) -> None:
    """`python tests/tiny.py PATH EPOCHS [lr=LR]` to the end, its output in a folder of its own."""
    arguments = [sys.executable, str(TESTS / "tiny.py"), str(path), str(epochs)] + ([f"lr={lr}"] if lr else [])
    done = subprocess.run(
        arguments,
        cwd=TESTS.parent,
        env={**os.environ, "CIFAR10_PROGRESS": "off"},
        capture_output=True,
        text=True,
        timeout=300,
        start_new_session=True,
    )
    assert done.returncode == 0, done.stderr


def test_two_runs_in_one_folder_keep_their_own_history_and_metrics(tmp_path):
    folder = tmp_path / "runs" / "recipe"
    tiny_process(folder / "checkpoint.pt", 2)  # the default name: history.csv and metrics.json, as 6960a31's
    first = {name: (folder / name).read_bytes() for name in ("checkpoint.pt", "history.csv", "metrics.json")}
    tiny_process(folder / "lr005.pt", 2, lr=0.05)  # the refusal's advice: another checkpoint path
    assert {name: (folder / name).read_bytes() for name in first} == first  # byte for byte, untouched
    assert sorted(p.name for p in folder.iterdir() if p.suffix != ".lock") == sorted(  # the runs' locks aside
        [*first, "lr005.pt", "lr005.history.csv", "lr005.metrics.json"]
    )
    tiny_process(tmp_path / "alone" / "lr005.pt", 2, lr=0.05)  # what the second run writes with no neighbour
    beside, alone = (pd.read_csv(f / "lr005.history.csv") for f in (folder, tmp_path / "alone"))
    pd.testing.assert_frame_equal(beside[MEASURED], alone[MEASURED], check_exact=True)
    assert beside.lr.iloc[0] == 0.05 and pd.read_csv(folder / "history.csv").lr.iloc[0] == TINY.lr
    timings = {"seconds", "median_epoch_seconds", "train_seconds", "val_seconds", "median_images_per_s"}
    metrics = [json.loads((f / "lr005.metrics.json").read_text()) for f in (folder, tmp_path / "alone")]
    assert [{k: v for k, v in m.items() if k not in timings} for m in metrics] == [
        {k: v for k, v in metrics[1].items() if k not in timings}
    ] * 2


def test_a_fresh_start_keeps_the_old_runs_history_with_its_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    train.fit(TINY.replace(epochs=1, lr=0.05), SET_A, device="cpu", checkpoint_path=path)
    old = {name: path.with_name(name).read_bytes() for name in ("checkpoint.pt", "history.csv", "metrics.json")}
    train.fit(TINY.replace(epochs=1), SET_A, device="cpu", checkpoint_path=path, fresh=True)
    (kept,) = tmp_path.glob("checkpoint.before-*.pt")
    stem = kept.stem
    assert kept.read_bytes() == old["checkpoint.pt"]
    assert (tmp_path / f"{stem}.history.csv").read_bytes() == old["history.csv"]
    assert (tmp_path / f"{stem}.metrics.json").read_bytes() == old["metrics.json"]
    assert pd.read_csv(tmp_path / "history.csv").lr.tolist() == [TINY.lr]  # the new run's own


# ---------------------------------------------------------------- training throughput is training


def test_history_rows_time_training_and_validation_apart(tmp_path, monkeypatch):
    """Validation made 0.3 s slower and training 0.2 s: each lands in its own column, and images/s is the
    128 training images over the training seconds alone."""
    real_validate, real_train_epoch = train.validate, train.train_epoch

    def slow_validate(run, val):
        time.sleep(0.3)
        return real_validate(run, val)

    def slow_train_epoch(run, split):
        time.sleep(0.2)
        return real_train_epoch(run, split)

    monkeypatch.setattr(train, "validate", slow_validate)
    monkeypatch.setattr(train, "train_epoch", slow_train_epoch)
    train.fit(TINY, SET_A, device="cpu", checkpoint_path=tmp_path / "checkpoint.pt")
    rows = pd.read_csv(tmp_path / "history.csv")
    assert len(SET_A.train) == 128
    for row in rows.itertuples():
        assert row.val_seconds >= 0.3 and row.train_seconds >= 0.2
        assert row.train_seconds + row.val_seconds == pytest.approx(row.seconds, rel=1e-9)
        assert row.images_per_s == pytest.approx(128 / row.train_seconds, rel=1e-12)
        assert row.images_per_s > 128 / row.seconds  # what the old column said: validation included
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["median_images_per_s"] == round((128 / rows.train_seconds).median(), 1)
    assert summary["train_seconds"] == round(rows.train_seconds.sum(), 1)
    assert summary["val_seconds"] == round(rows.val_seconds.sum(), 1)


# ---------------------------------------------------------------- no validation split, no plateau schedule


def test_val_size_zero_is_refused_by_the_configuration_check_before_data_or_steps(monkeypatch):
    monkeypatch.setattr(train, "prepare", lambda *a, **k: pytest.fail("data was loaded"))
    monkeypatch.setattr(train, "new_run", lambda *a, **k: pytest.fail("a run was built"))
    monkeypatch.setattr(train, "train_epoch", no_training)
    with pytest.raises(ValueError) as refused:
        train.check_config(config.QUICK.replace(val_size=0))
    message = str(refused.value)
    assert "\n" not in message
    assert "val_size must be at least 10, one image per class (got 0)" in message
    assert "plateau schedule" in message and "validation split" in message
    assert "--val-from-test" in message and "test accuracy is then no longer" in message
    with pytest.raises(ValueError, match="val_size must be at least 10"):
        train.fit(TINY.replace(val_size=0), SET_A, device="cpu")  # data sets already prepared
    with pytest.raises(ValueError, match="val_size must be at least 10"):
        train.fit(TINY.replace(val_size=0), device="cpu")  # would prepare them
    train.check_config(config.QUICK.replace(val_size=0, val_from_test=True))  # the test set validates
    train.check_config(config.QUICK.replace(val_size=10))


def test_the_command_line_refuses_it_before_loading_data(monkeypatch, capsys):
    monkeypatch.setattr(train, "prepare", lambda *a, **k: pytest.fail("data was loaded"))
    monkeypatch.setattr(config, "QUICK", config.QUICK.replace(val_size=0))
    assert train.main(["--quick", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "val_size must be at least 10" in err
