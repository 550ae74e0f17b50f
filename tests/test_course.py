"""The series as a course: what the notebooks show is what the helpers run, the remedies they teach work,
and every notebook ends with exercises, references and the way on."""

import json
import math
import re

import matplotlib
import pandas as pd
import pytest
import torch

from helpers import evaluate, plots, residual, train
from helpers.config import REPO_ROOT
from helpers.data import Split
from helpers.machinery import execution
from tiny import TINY

matplotlib.use("Agg")

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
ARXIV = re.compile(r"\]\(https://arxiv\.org/abs/\d{4}\.\d{4,5}\)")


def cells(notebook, kind: str) -> list[str]:
    return ["".join(cell["source"]) for cell in json.loads(notebook.read_text())["cells"] if cell["cell_type"] == kind]


def section(notebook, heading: str) -> str:
    """The markdown cell that opens with `## heading`, or ''."""
    return next((text for text in cells(notebook, "markdown") if text.startswith(f"## {heading}")), "")


# ---------------------------------------------------------------- every notebook ends as a lesson should


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_has_three_to_five_exercises(notebook):
    exercises = [line for line in section(notebook, "Try this").splitlines() if re.match(r"^(\d+\.|[*-]) ", line)]
    assert 3 <= len(exercises) <= 5, f"a '## Try this' cell with 3-5 exercises, found {len(exercises)}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_links_the_next_notebook_or_further_reading(notebook):
    following = [path.name for path in NOTEBOOKS if path.name > notebook.name]
    text = section(notebook, "Next")
    if following:
        assert f"]({following[0]})" in text, f"a '## Next' cell linking {following[0]}"
    else:
        assert len(re.findall(r"\]\(https://", text)) >= 2, "a '## Next' cell with links to what to read next"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_links_the_papers_it_uses(notebook):
    assert ARXIV.search(section(notebook, "References")), "a '## References' cell with arXiv links"


def test_training_notebook_shows_the_step_in_plain_pytorch():
    code = cells(REPO_ROOT / "notebooks" / "03_training.ipynb", "code")
    assert any(all(word in text for word in ("backward(", "zero_grad", "step(")) for text in code)


# ---------------------------------------------------------------- the step shown is the step trained


def notebook_training_step():
    """`training_step` as notebook 03 defines it, run from the notebook's own source with its imports."""
    code = cells(REPO_ROOT / "notebooks" / "03_training.ipynb", "code")
    imports = "\n".join(line for line in code[0].splitlines() if line.startswith(("import ", "from ")))
    (source,) = [text for text in code if "def training_step(" in text]
    namespace: dict = {}
    exec(compile(imports + "\n" + source, "03_training.ipynb", "exec"), namespace)
    return namespace["training_step"]


def test_the_notebooks_step_gives_train_epochs_loss_and_weights(tiny):
    """Two steps of 16 images: train_epoch's shuffling and augmentation replayed from the same generator."""
    cfg = TINY.replace(batch_size=16)
    fp32 = execution.resolve(torch.device("cpu"), "fp32")
    batch = Split(tiny.train.images[:32], tiny.train.labels[:32])
    trained, shown = (train.new_run(cfg, fp32, tiny.mean, tiny.std) for _ in range(2))  # same seed, same start
    before = [p.detach().clone() for p in shown.model.parameters()]
    loss, _ = train.train_epoch(trained, batch)

    step = notebook_training_step()
    order = torch.randperm(len(batch), generator=shown.generator)  # train_epoch shuffles first
    losses = [
        step(shown.model, shown.optimizer, batch.images[i], batch.labels[i], tiny.mean, tiny.std, cfg, shown.generator)
        for i in order.split(cfg.batch_size)
    ]
    assert sum(losses) / len(losses) == pytest.approx(loss.item(), rel=1e-5)
    for (name, a), b in zip(trained.model.named_parameters(), shown.model.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=f"{name} differs")
    assert any(not torch.equal(p, q) for p, q in zip(before, shown.model.parameters(), strict=True))


# ---------------------------------------------------------------- temperature scaling


def overconfident(temperature: float, n: int = 20_000, classes: int = 10, seed: int = 0):
    """Labels drawn from softmax(z): calibrated logits z, returned multiplied by `temperature`, so the
    temperature that calibrates them again is known."""
    generator = torch.Generator().manual_seed(seed)
    z = 2 * torch.randn(n, classes, generator=generator)
    labels = torch.multinomial(z.softmax(1), 1, generator=generator).squeeze(1)
    return z * temperature, labels


def ece(p: evaluate.Predictions) -> float:
    return evaluate.expected_calibration_error(evaluate.reliability_table(p))


@pytest.mark.parametrize("known", [2.5, 0.5])
def test_temperature_scaling_recovers_a_known_temperature(known):
    logits, labels = overconfident(known)
    assert evaluate.fit_temperature(logits, labels) == pytest.approx(known, rel=0.03)


def test_temperature_scaling_lowers_the_ece_it_is_fitted_on_and_keeps_every_argmax():
    logits, labels = overconfident(2.5)
    before = evaluate.Predictions(labels, logits.softmax(1))
    after = evaluate.with_temperature(before, evaluate.fit_temperature(before.probs.log(), labels))
    assert ece(after) < ece(before) / 3
    assert torch.equal(after.predicted, logits.argmax(1))
    assert evaluate.accuracy(labels, after.predicted) == evaluate.accuracy(labels, before.predicted)


# ---------------------------------------------------------------- learning curves that can be read


def test_learning_curves_mark_chance_and_each_drop_of_the_learning_rate():
    lr = [0.1, 0.1, 0.05, 0.05, 0.05, 0.025]
    history = pd.DataFrame({"train_loss": 2.0, "val_loss": 2.1, "train_acc": 0.3, "val_acc": 0.3, "lr": lr})
    history.index = pd.RangeIndex(1, len(lr) + 1, name="epoch")
    fig = plots.learning_curves(history)
    loss_axis = fig.axes[0]
    level = [line.get_ydata()[0] for line in loss_axis.lines if line.get_label().startswith("chance")]
    assert level == [pytest.approx(math.log(10))]
    for ax in fig.axes:
        drops = sorted({line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == ":"})
        assert drops == [2.5, 5.5]  # between epochs 2 and 3, 5 and 6: by hand from `lr`


# ---------------------------------------------------------------- residual blocks


def test_a_plain_block_is_the_residual_block_without_its_shortcut():
    with_shortcut, plain = residual.block_stack(1, 8), residual.block_stack(1, 8, shortcuts=False)
    block = with_shortcut[0].eval()
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        main_path = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x)))))
        torch.testing.assert_close(plain.eval()(x), torch.relu(main_path))
        torch.testing.assert_close(with_shortcut(x), torch.relu(main_path + x))


def test_gradient_at_each_depth_is_autograds_gradient_at_each_block_input():
    stack = residual.block_stack(3, 4, shortcuts=False)
    x = torch.randn(4, 4, 5, 5)
    gains = residual.gradient_at_each_depth(stack, x, seed=1)
    direction = torch.randn(4, 4, 5, 5, generator=torch.Generator().manual_seed(1))
    inputs = [x.clone().requires_grad_(True)]
    for block in stack:
        inputs.append(block(inputs[-1]))
    grads = torch.autograd.grad((inputs[-1] * direction).sum(), inputs[:-1])
    expected = [(g.norm() / direction.norm()).item() for g in reversed(grads)]
    assert gains == pytest.approx(expected, rel=1e-5)
