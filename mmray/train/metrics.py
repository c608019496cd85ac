"""Classification metrics from accumulated predictions (pure functions, no Ray), and how the loop names them."""

from __future__ import annotations

from typing import Callable

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


# What the loop's `evaluate` reports per split: each score of each head, and the modality gap.
HEADS = ("fused", "audio", "visual")  # the predictions every method makes (Method.predict)
SCORES: dict[str, Callable[[torch.Tensor], float]] = {"acc": accuracy, "f1": macro_f1}  # of a confusion matrix


def metric_name(split: str, kind: str, head: str | None = None) -> str:
    """`val/fused_acc` for a head's score, `val/gap` for the gap."""
    return f"{split}/{head}_{kind}" if head else f"{split}/{kind}"


def metric_names(split: str) -> tuple[str, ...]:
    return tuple(metric_name(split, kind, head) for head in HEADS for kind in SCORES) + (metric_name(split, "gap"),)
