"""Classification metrics from accumulated predictions (pure functions, no Ray)."""

from __future__ import annotations

import torch


def confusion(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.bincount(label * num_classes + pred, minlength=num_classes ** 2).view(num_classes, num_classes)


def accuracy(conf: torch.Tensor) -> float:
    total = conf.sum().item()
    return conf.diag().sum().item() / total if total else 0.0


def macro_f1(conf: torch.Tensor) -> float:
    """Mean over classes of 2PR/(P+R); a class never predicted nor present counts as 0."""
    tp = conf.diag().double()
    predicted = conf.sum(0).double()
    actual = conf.sum(1).double()
    f1 = torch.where(predicted + actual > 0, 2 * tp / (predicted + actual), torch.zeros_like(tp))
    return f1.mean().item()
