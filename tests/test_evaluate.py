"""Evaluation: confusion matrix, per-class metrics, mistakes and calibration against hand-computed
numbers; loading checkpoints (deterministic, clear errors); flip TTA; the command line."""

import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from torchvision.models import resnet18 as imagenet_resnet18

from helpers import evaluate
from helpers.data import CLASSES
from helpers.evaluate import Predictions
from helpers.machinery import checkpoint, execution
from helpers.machinery.checkpoint import CheckpointError

CPU = execution.resolve(torch.device("cpu"))


# ---------------------------------------------------------------- tables from labels and predictions


def test_confusion_matrix_equals_pandas_crosstab_with_absent_classes_as_zeros():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 9, (500,), generator=generator)  # class 9 (truck) never the true class
    predicted = torch.randint(1, 10, (500,), generator=generator)  # class 0 (airplane) never predicted
    names = [CLASSES[i] for i in range(10)]
    expected = pd.crosstab(
        pd.Categorical([names[i] for i in labels], categories=names),
        pd.Categorical([names[i] for i in predicted], categories=names),
        dropna=False,
    )
    expected = expected.reindex(index=names, columns=names, fill_value=0)
    cm = evaluate.confusion_matrix(labels, predicted)
    assert list(cm.index) == names and list(cm.columns) == names
    assert (cm.index.name, cm.columns.name) == ("true", "predicted")
    np.testing.assert_array_equal(cm.to_numpy(), expected.to_numpy())
    assert cm.loc["truck"].sum() == 0 and cm["airplane"].sum() == 0


# Four classes; rows are the true class, columns the predicted one:
#          a  b  c  d
#     a    3  1  0  0
#     b    0  2  1  0
#     c    1  0  2  0
#     d    0  0  1  0      (d is never predicted)
SMALL_CLASSES = ("a", "b", "c", "d")
SMALL_LABELS = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3])
SMALL_PREDICTED = torch.tensor([0, 0, 0, 1, 1, 1, 2, 0, 2, 2, 2])


def test_per_class_report_matches_hand_computed_metrics():
    cm = evaluate.confusion_matrix(SMALL_LABELS, SMALL_PREDICTED, SMALL_CLASSES)
    report = evaluate.per_class_report(cm)
    # precision = diagonal / column sum: a 3/4, b 2/3, c 2/4, d 0/0 -> 0 (never predicted)
    np.testing.assert_allclose(report.precision, [0.75, 0.6666667, 0.5, 0.0], rtol=1e-6)
    # recall = diagonal / row sum: a 3/4, b 2/3, c 2/3, d 0/1
    np.testing.assert_allclose(report.recall, [0.75, 0.6666667, 0.6666667, 0.0], rtol=1e-6)
    # F1 = 2PR / (P + R): a 0.75, b 2/3, c 2 * 1/2 * 2/3 / (1/2 + 2/3) = 4/7 = 0.5714286, d 0
    np.testing.assert_allclose(report.f1, [0.75, 0.6666667, 0.5714286, 0.0], rtol=1e-6)
    assert report.support.tolist() == [4, 3, 3, 1]
    assert list(report.index) == list(SMALL_CLASSES)


def test_accuracy_is_the_trace_over_the_sum_of_the_confusion_matrix():
    assert evaluate.accuracy(SMALL_LABELS, SMALL_PREDICTED) == pytest.approx(7 / 11)  # 3 + 2 + 2 right of 11
    generator = torch.Generator().manual_seed(1)
    labels, predicted = torch.randint(0, 10, (2, 300), generator=generator)
    counts = pd.crosstab(labels.numpy(), predicted.numpy()).reindex(index=range(10), columns=range(10), fill_value=0)
    assert evaluate.accuracy(labels, predicted) == pytest.approx(np.trace(counts.to_numpy()) / counts.to_numpy().sum())


def test_most_confused_lists_the_largest_off_diagonal_cells_in_order():
    cm = pd.DataFrame(
        [[5, 4, 1], [2, 6, 0], [7, 3, 9]],
        index=pd.Index(["a", "b", "c"], name="true"),
        columns=pd.Index(["a", "b", "c"], name="predicted"),
    )
    top = evaluate.most_confused(cm, k=3)
    # off-diagonal cells by count: c->a 7, a->b 4, c->b 3, b->a 2, a->c 1, b->c 0
    assert list(zip(top["true"], top["predicted"], top["count"], strict=True)) == [
        ("c", "a", 7),
        ("a", "b", 4),
        ("c", "b", 3),
    ]
    # share of the true class's images: 7 / (7+3+9), 4 / (5+4+1), 3 / 19
    np.testing.assert_allclose(top["share of true class"], [7 / 19, 4 / 10, 3 / 19])


def test_misclassified_lists_exactly_the_wrong_predictions_most_confident_first():
    probs = torch.tensor(
        [
            [0.7, 0.2, 0.1],  # 0: true a, predicted a (right)
            [0.6, 0.3, 0.1],  # 1: true b, predicted a with 0.6
            [0.1, 0.05, 0.85],  # 2: true c, predicted c (right)
            [0.1, 0.8, 0.1],  # 3: true a, predicted b with 0.8
            [0.2, 0.3, 0.5],
        ]
    )  # 4: true b, predicted c with 0.5
    p = Predictions(torch.tensor([0, 1, 2, 0, 1]), probs)
    wrong = evaluate.misclassified(p, classes=("a", "b", "c"))
    assert wrong["index"].tolist() == [3, 1, 4]
    assert wrong["true"].tolist() == ["a", "b", "b"] and wrong["predicted"].tolist() == ["b", "a", "c"]
    np.testing.assert_allclose(wrong["confidence"], [0.8, 0.6, 0.5], rtol=1e-6)
    assert evaluate.misclassified(p, classes=("a", "b", "c"), k=2)["index"].tolist() == [3, 1]


# ---------------------------------------------------------------- calibration


def predictions_with_confidence(confidences, right) -> Predictions:
    """Ten-class predictions of class 0 with the given top probability, right or wrong as listed."""
    rows = [[c] + [(1 - c) / 9] * 9 for c in confidences]
    return Predictions(torch.tensor([0 if ok else 1 for ok in right]), torch.tensor(rows))


def test_reliability_table_and_ece_match_a_hand_computed_example():
    p = predictions_with_confidence([0.3, 0.35, 0.5, 0.9, 0.9, 0.9, 0.95], [True, False, True, True, True, True, False])
    table = evaluate.reliability_table(p, bins=5)
    used = table[table["count"] > 0]
    # bins of width 0.2: (0.2, 0.4] holds 0.3 and 0.35; (0.4, 0.6] holds 0.5; (0.8, 1] holds 0.9 x3 and 0.95
    np.testing.assert_allclose(used[["low", "high"]].to_numpy(), [[0.2, 0.4], [0.4, 0.6], [0.8, 1.0]], rtol=1e-6)
    assert used["count"].tolist() == [2, 1, 4] and table["count"].sum() == 7
    # mean confidence: (0.3 + 0.35) / 2 = 0.325, 0.5, (3 * 0.9 + 0.95) / 4 = 0.9125; accuracy 1/2, 1, 3/4
    np.testing.assert_allclose(used["confidence"], [0.325, 0.5, 0.9125], rtol=1e-6)
    np.testing.assert_allclose(used["accuracy"], [0.5, 1.0, 0.75])
    # ECE = (2 * |0.325 - 0.5| + 1 * |0.5 - 1| + 4 * |0.9125 - 0.75|) / 7 = (0.35 + 0.5 + 0.65) / 7 = 1.5 / 7
    assert evaluate.expected_calibration_error(table) == pytest.approx(1.5 / 7, rel=1e-6)


def test_a_confidence_on_a_bin_edge_belongs_to_the_bin_it_closes():
    p = predictions_with_confidence([0.6], [True])
    table = evaluate.reliability_table(p, bins=5)
    assert table.loc[table["count"] > 0, ["low", "high"]].to_numpy().ravel().tolist() == pytest.approx([0.4, 0.6])


# ---------------------------------------------------------------- checkpoints


def test_evaluating_a_checkpoint_twice_gives_identical_probabilities(tiny, tiny_checkpoint):
    def evaluate_once(model, state):
        return evaluate.predict(model, tiny.test.images, tiny.test.labels, state["mean"], state["std"], CPU, 16)

    model, state = evaluate.load_model(tiny_checkpoint, CPU)
    first, again = evaluate_once(model, state), evaluate_once(model, state)
    reloaded = evaluate_once(*evaluate.load_model(tiny_checkpoint, CPU))
    assert torch.equal(first.probs, again.probs) and torch.equal(first.probs, reloaded.probs)
    assert torch.equal(first.labels, tiny.test.labels)
    torch.testing.assert_close(first.probs.sum(1), torch.ones(len(tiny.test)))


def test_flip_tta_is_the_log_of_the_mean_softmax_of_each_image_and_its_mirror(tiny, tiny_checkpoint):
    model, state = evaluate.load_model(tiny_checkpoint, CPU)
    fp32 = execution.resolve(torch.device("cpu"), "fp32")
    images = tiny.test.images
    mean, std = torch.tensor(state["mean"])[:, None, None], torch.tensor(state["std"])[:, None, None]
    x = (images.float() / 255 - mean) / std
    with torch.no_grad():
        model.eval()
        by_hand = ((model(x).softmax(1) + model(x.flip(-1)).softmax(1)) / 2).log()
    tta = evaluate.logits(model, images, state["mean"], state["std"], fp32, batch_size=16, flip_tta=True)
    torch.testing.assert_close(tta, by_hand, rtol=1e-4, atol=1e-5)


def test_a_checkpoint_of_another_architecture_is_a_clear_error(tiny_checkpoint, tmp_path):
    state = checkpoint.load(tiny_checkpoint)
    state["model"] = imagenet_resnet18(num_classes=10).state_dict()
    checkpoint.save(state, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other.pt holds weights of another architecture: conv1.weight"):
        evaluate.load_model(tmp_path / "other.pt", CPU)


def test_corrupt_and_missing_checkpoints_are_clear_errors(tmp_path):
    (tmp_path / "corrupt.pt").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="corrupt.pt is not a readable checkpoint"):
        evaluate.load_model(tmp_path / "corrupt.pt", CPU)
    with pytest.raises(CheckpointError, match="No checkpoint at missing.pt"):
        evaluate.load_model(tmp_path / "missing.pt", CPU)


def test_the_command_line_reports_a_missing_checkpoint_and_exits_2(tmp_path, capsys):
    assert evaluate.main(["--checkpoint", str(tmp_path / "missing.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: No checkpoint at missing.pt") and "Traceback" not in err


# ---------------------------------------------------------------- the command line on real data


@pytest.mark.slow
def test_evaluate_cli_reports_the_checkpoint_the_train_cli_wrote(quick_run, real_source, capsys):
    open_before = plt.get_fignums()
    assert evaluate.main(["--checkpoint", str(quick_run), "--data", str(real_source), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    line = re.search(
        r"test accuracy (\d+\.\d\d)% and loss (\d+\.\d{4}) on 2000 images \(quick configuration, "
        r"epoch 2; (.+)\)",
        out,
    )
    assert line, out
    assert line.group(3) == str(CPU)  # the execution and hardware it was measured with
    rows = re.findall(r"^(\w+)\s+(\d\.\d+)\s+(\d\.\d+)\s+(\d\.\d+)\s+(\d+)$", out, flags=re.MULTILINE)
    assert [row[0] for row in rows] == list(CLASSES) and all(int(row[4]) == 200 for row in rows)
    # overall accuracy = support-weighted mean recall, from the printed (rounded) table
    weighted_recall = sum(float(row[2]) * int(row[4]) for row in rows) / 2000
    assert abs(weighted_recall - float(line.group(1)) / 100) < 0.001
    assert out.count("wrote ") == 2 and plt.get_fignums() == open_before  # saved, and closed
