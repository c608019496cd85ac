"""A data source over tensors in memory (no Ray): a split decoded once. Tests use it, and the
benchmarks compare Ray Data against it."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow.parquet as pq
import torch

from mmray.data.manifest import Manifest
from mmray.data.shards import Decode
from mmray.data.source import Batch


def load_split(root: str | Path, manifest: Manifest, split: str) -> dict[str, torch.Tensor]:
    decode = Decode(manifest)
    parts = []
    for path in manifest.shard_paths(root, split):
        table = pq.read_table(path, columns=["index", "label", "audio", "frames"])
        parts.append(decode({name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}))
    return {key: torch.from_numpy(np.concatenate([p[key] for p in parts])) for key in parts[0]}


class InMemoryDataSource:
    """A `DataSource` (mmray/data/source.py) over the splits' decoded tensors."""

    def __init__(self, root: str | Path, manifest: Manifest, batch_size: int, seed: int, splits=("train", "val")):
        self.tensors = {split: load_split(root, manifest, split) for split in splits}
        self.batch_size = batch_size
        self.seed = seed

    def _batches(self, split: str, order: torch.Tensor) -> Iterator[Batch]:
        t = self.tensors[split]
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            yield Batch(audio=t["audio"][rows], frames=t["frames"][rows], label=t["label"][rows], index=t["index"][rows])

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        n = len(self.tensors["train"]["label"])
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return self._batches("train", torch.randperm(n, generator=generator))

    def eval_batches(self, split: str) -> Iterator[Batch]:
        return self._batches(split, torch.arange(len(self.tensors[split]["label"])))
