"""hashee.metrics against hand-computed values and independent numpy computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hashee.errors import DataError
from hashee.metrics import accuracy, compute_metrics, f1, pearson, reduce_predictions, spearman, trainer_metrics


def numpy_f1(preds, labels, cls):
    preds, labels = np.asarray(preds), np.asarray(labels)
    tp = np.sum((preds == cls) & (labels == cls))
    fp = np.sum((preds == cls) & (labels != cls))
    fn = np.sum((preds != cls) & (labels == cls))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def average_ranks(x):
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    for value in np.unique(x):  # ties share the mean of their ranks
        ranks[x == value] = ranks[x == value].mean()
    return ranks


def test_accuracy_by_hand():
    assert accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
    assert accuracy(np.array([2, 2, 0]), np.array([2, 2, 0])) == 1.0


def test_binary_f1_is_positive_class_f1():
    preds, labels = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]
    # tp = 2, fp = 1, fn = 1 -> precision = recall = 2/3 -> F1 = 2/3
    assert f1(preds, labels) == pytest.approx(2 / 3)
    assert f1(preds, labels, num_labels=2) == pytest.approx(2 / 3)
    # flipping which class is positive changes the value: it is not macro F1
    assert f1([0, 0, 0, 1], [0, 0, 1, 1]) == pytest.approx(numpy_f1([0, 0, 0, 1], [0, 0, 1, 1], 1))
    assert f1([0, 0, 0, 1], [0, 0, 1, 1]) == pytest.approx(2 / 3)
    assert f1([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0  # no positives at all


def test_macro_f1_multiclass():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    preds = np.where(rng.random(200) < 0.6, labels, rng.integers(0, 3, 200))
    expected = np.mean([numpy_f1(preds, labels, c) for c in range(3)])
    assert f1(preds, labels) == pytest.approx(expected)
    assert f1(preds, labels, num_labels=3) == pytest.approx(expected)
    # by hand: class 0: tp1 fp1 fn0 -> 2/3; class 1: 0; class 2: 1 -> mean 5/9
    assert f1([0, 0, 2], [0, 1, 2]) == pytest.approx(5 / 9)
    # a class of the task absent from both sides counts as F1 0 when num_labels says it exists
    assert f1([0, 1, 2], [0, 1, 2], num_labels=4) == pytest.approx(3 / 4)


def test_correlations_against_numpy():
    rng = np.random.default_rng(1)
    gold = rng.normal(size=50)
    preds = gold + rng.normal(scale=0.5, size=50)
    assert pearson(preds, gold) == pytest.approx(np.corrcoef(preds, gold)[0, 1])
    assert spearman(preds, gold) == pytest.approx(np.corrcoef(average_ranks(preds), average_ranks(gold))[0, 1])
    tied_p, tied_g = [1.0, 2.0, 2.0, 3.0, 5.0], [0.5, 1.0, 3.0, 3.0, 2.0]
    assert spearman(tied_p, tied_g) == pytest.approx(
        np.corrcoef(average_ranks(tied_p), average_ranks(tied_g))[0, 1])
    assert math.isnan(pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    assert math.isnan(spearman([1.0, 2.0, 3.0], [4.0, 4.0, 4.0]))


def test_compute_metrics_classification_from_logits():
    logits = np.array([[0.1, 0.9], [2.0, -1.0], [0.3, 0.2], [-1.0, 1.0]])  # argmax 1, 0, 0, 1
    labels = np.array([1, 0, 1, 0])
    out = compute_metrics(logits, labels, is_regression=False)
    assert out["accuracy"] == 0.5
    assert out["f1"] == pytest.approx(0.5)  # tp 1, fp 1, fn 1
    assert out["accuracy_f1_mean"] == pytest.approx(0.5)
    assert out["main"] == out["accuracy"]
    assert all(isinstance(v, float) for v in out.values())
    assert compute_metrics(np.array([1, 0, 0, 1]), labels, False) == out  # ids work as well as logits


def test_compute_metrics_regression():
    preds = np.array([[0.5], [1.5], [2.0], [4.0]])
    gold = np.array([0.0, 2.0, 1.0, 5.0])
    out = compute_metrics(preds, gold, is_regression=True)
    p = np.corrcoef(preds[:, 0], gold)[0, 1]
    s = np.corrcoef(average_ranks(preds[:, 0]), average_ranks(gold))[0, 1]
    assert out["pearson"] == pytest.approx(p) and out["spearman"] == pytest.approx(s)
    assert out["pearson_spearman_mean"] == pytest.approx((p + s) / 2) == pytest.approx(out["main"])


def test_trainer_adapter():
    from transformers import EvalPrediction

    logits = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    extra = np.zeros((3, 7))  # e.g. exit layers a model returns beside the logits
    metric = trainer_metrics(is_regression=False, num_labels=3)
    out = metric(EvalPrediction(predictions=(logits, extra), label_ids=np.array([1, 0, 0])))
    assert out["accuracy"] == pytest.approx(2 / 3) and "main" in out
    assert metric(EvalPrediction(predictions=logits, label_ids=np.array([1, 0, 2])))["f1"] == 1.0
    regression = trainer_metrics(is_regression=True)
    assert regression(EvalPrediction(predictions=np.array([[1.0], [2.0], [3.0]]),
                                     label_ids=np.array([1.0, 2.0, 3.5])))["spearman"] == pytest.approx(1.0)


def test_bad_inputs_raise_data_error():
    with pytest.raises(DataError, match="3 predictions for 2 labels"):
        accuracy([1, 0, 1], [1, 0])
    with pytest.raises(DataError, match="no examples"):
        compute_metrics(np.zeros((0, 2)), np.zeros(0), False)
    with pytest.raises(DataError, match="regression predictions"):
        reduce_predictions(np.zeros((3, 2)), is_regression=True)
    with pytest.raises(DataError, match="logits"):
        reduce_predictions(np.zeros((3, 2, 2)), is_regression=False)
