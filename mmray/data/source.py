"""What the training loop iterates: a data source of `Batch`es.

Two sources satisfy it: `RayDataSource` (mmray/data/pipeline.py), which streams prepared shards
through Ray Data, and `InMemoryDataSource` (mmray/data/memory.py), tensors decoded once in
memory, which tests and benchmarks use. Methods see the same interface in `MethodContext.data`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

import torch


@dataclass
class Batch:
    audio: torch.Tensor  # (B, C, F, T)
    frames: torch.Tensor  # (B, T, C, H, W) uint8 pixels; the model normalises them
    label: torch.Tensor  # (B,)
    index: torch.Tensor  # (B,) sample index within the split


class DataSource(Protocol):
    def train_batches(self, epoch: int) -> Iterator[Batch]:
        """This worker's part of train, shuffled; the order depends only on (seed, epoch)."""

    def eval_batches(self, split: str) -> Iterator[Batch]:
        """A split in stored order, unshuffled; for "train", this worker's share of every row, not augmented."""
