"""Task metrics: accuracy and F1 for classification, Pearson and Spearman for regression.

:func:`compute_metrics` returns a flat ``{name: float}`` dict with a ``main`` entry (accuracy for
classification, the mean of Pearson and Spearman for regression); :func:`trainer_metrics` adapts it
to the Hugging Face ``Trainer``'s ``compute_metrics`` hook.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np

from hashee.errors import DataError


def _as_pair(predictions: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    preds = np.asarray(predictions)
    gold = np.asarray(labels)
    if preds.ndim != 1 or gold.ndim != 1:
        raise DataError(f"predictions and labels must be 1-D, got shapes {preds.shape} and {gold.shape}")
    if preds.shape[0] != gold.shape[0]:
        raise DataError(f"{preds.shape[0]} predictions for {gold.shape[0]} labels; they must match one to one")
    if preds.shape[0] == 0:
        raise DataError("no examples to score")
    return preds, gold


def accuracy(predictions: Any, labels: Any) -> float:
    """Fraction of predictions equal to the labels."""
    preds, gold = _as_pair(predictions, labels)
    return float(np.mean(preds == gold))


def f1(predictions: Any, labels: Any, num_labels: int | None = None) -> float:
    """F1 of the positive class (id 1) for binary tasks, macro F1 over the classes otherwise.

    The task is binary when ``num_labels == 2`` or, with ``num_labels`` unknown, when every label
    and prediction is 0 or 1.  Macro F1 averages over ``range(num_labels)`` when given, else over
    the classes present in labels or predictions.
    """
    from sklearn.metrics import f1_score

    preds, gold = _as_pair(predictions, labels)
    if num_labels is None:
        binary = set(np.unique(np.concatenate([preds, gold])).tolist()) <= {0, 1}
        classes = None
    else:
        binary = num_labels == 2
        classes = list(range(num_labels))
    if binary:
        return float(f1_score(gold, preds, pos_label=1, average="binary", labels=[0, 1], zero_division=0))
    return float(f1_score(gold, preds, average="macro", labels=classes, zero_division=0))


def pearson(predictions: Any, labels: Any) -> float:
    """Pearson correlation (``nan`` when either side is constant)."""
    from scipy.stats import pearsonr

    preds, gold = _as_pair(predictions, labels)
    if len(preds) < 2 or np.ptp(preds) == 0 or np.ptp(gold) == 0:
        return float("nan")
    return float(pearsonr(preds.astype(np.float64), gold.astype(np.float64))[0])


def spearman(predictions: Any, labels: Any) -> float:
    """Spearman rank correlation (``nan`` when either side is constant)."""
    from scipy.stats import spearmanr

    preds, gold = _as_pair(predictions, labels)
    if len(preds) < 2 or np.ptp(preds) == 0 or np.ptp(gold) == 0:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(spearmanr(preds, gold)[0])


def reduce_predictions(predictions: Any, is_regression: bool) -> np.ndarray:
    """Logits ``[N, C]`` -> class ids ``[N]`` (argmax); regression outputs ``[N, 1]`` -> ``[N]``."""
    if isinstance(predictions, tuple):
        predictions = predictions[0]  # (logits, extra outputs...) as the Trainer gathers them
    preds = np.asarray(predictions)
    if is_regression:
        if preds.ndim == 2 and preds.shape[1] == 1:
            preds = preds[:, 0]
        if preds.ndim != 1:
            raise DataError(f"regression predictions must be [N] or [N, 1], got shape {preds.shape}")
        return preds.astype(np.float64)
    if preds.ndim == 2:
        return preds.argmax(axis=1)
    if preds.ndim != 1:
        raise DataError(f"classification predictions must be logits [N, C] or class ids [N], got shape {preds.shape}")
    return preds


def compute_metrics(predictions: Any, labels: Any, is_regression: bool,
                    num_labels: int | None = None) -> dict[str, float]:
    """Score predictions (class ids, logits, or regression outputs) against labels.

    Classification: ``accuracy``, ``f1`` (see :func:`f1`), ``accuracy_f1_mean``, and ``main`` =
    accuracy.  Regression: ``pearson``, ``spearman``, ``pearson_spearman_mean``, and ``main`` = that
    mean.  Values are Python floats (``nan`` for an undefined correlation).
    """
    preds = reduce_predictions(predictions, is_regression)
    gold = np.asarray(labels)
    if is_regression:
        gold = gold.astype(np.float64).reshape(-1)
        p, s = pearson(preds, gold), spearman(preds, gold)
        mean = (p + s) / 2
        return {"pearson": p, "spearman": s, "pearson_spearman_mean": mean, "main": mean}
    gold = gold.reshape(-1)
    acc = accuracy(preds, gold)
    score = f1(preds, gold, num_labels)
    return {"accuracy": acc, "f1": score, "accuracy_f1_mean": (acc + score) / 2, "main": acc}


def trainer_metrics(is_regression: bool, num_labels: int | None = None) -> Callable[[Any], dict[str, float]]:
    """A ``compute_metrics`` callable for the Hugging Face ``Trainer`` (takes an ``EvalPrediction``)."""

    def _compute(eval_prediction: Any) -> dict[str, float]:
        predictions = eval_prediction.predictions
        if isinstance(predictions, tuple):
            predictions = predictions[0]
        labels = eval_prediction.label_ids
        if isinstance(labels, tuple):
            labels = labels[0]
        return compute_metrics(predictions, labels, is_regression, num_labels)

    return _compute
