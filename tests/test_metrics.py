"""Metrics from a confusion matrix (mmray/train/metrics.py), checked against scikit-learn."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from mmray.train.metrics import accuracy, confusion, macro_f1


def _random(n: int, k: int, seed: int, pred_classes: int | None = None):
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, k, (n,), generator=g)
    pred = torch.randint(0, pred_classes or k, (n,), generator=g)
    return pred, label


@pytest.mark.parametrize("k", [2, 3, 5, 10])
@pytest.mark.parametrize("seed", [0, 1])
def test_confusion_matches_sklearn_layout(k, seed):
    pred, label = _random(200, k, seed)
    expected = confusion_matrix(label.numpy(), pred.numpy(), labels=list(range(k)))  # rows: true, cols: predicted
    assert confusion(pred, label, k).numpy().tolist() == expected.tolist()


@pytest.mark.parametrize("k", [2, 3, 5, 10])
@pytest.mark.parametrize("seed", [0, 1])
def test_accuracy_and_macro_f1_match_sklearn(k, seed):
    pred, label = _random(200, k, seed)
    conf = confusion(pred, label, k)
    assert accuracy(conf) == pytest.approx(accuracy_score(label, pred))
    assert macro_f1(conf) == pytest.approx(f1_score(label, pred, average="macro"))


@pytest.mark.parametrize("k", [3, 6])
def test_class_never_predicted_counts_as_zero_f1(k):
    pred, label = _random(300, k, seed=2, pred_classes=k - 1)  # class k-1 is never predicted
    assert (label == k - 1).any() and not (pred == k - 1).any()
    conf = confusion(pred, label, k)
    assert accuracy(conf) == pytest.approx(accuracy_score(label, pred))
    assert macro_f1(conf) == pytest.approx(f1_score(label, pred, average="macro", zero_division=0))


def test_class_never_predicted_nor_present_counts_as_zero():
    # Documented: a class absent from both predictions and labels still counts (as 0) in the mean over all classes.
    pred, label = _random(100, 3, seed=3)
    conf = confusion(pred, label, 4)
    expected = f1_score(label, pred, average="macro", labels=[0, 1, 2, 3], zero_division=0)
    assert macro_f1(conf) == pytest.approx(expected)
    assert macro_f1(conf) == pytest.approx(macro_f1(confusion(pred, label, 3)) * 3 / 4)


def test_perfect_and_empty():
    label = torch.tensor([0, 1, 2, 2, 1])
    conf = confusion(label, label, 3)
    assert accuracy(conf) == 1.0 and macro_f1(conf) == pytest.approx(1.0)
    empty = confusion(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long), 3)
    assert accuracy(empty) == 0.0 and macro_f1(empty) == 0.0
