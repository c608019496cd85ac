"""The method and network a test trains, built the way the loop builds them."""

from __future__ import annotations

import torch

from mmray.data.memory import InMemoryDataSource
from mmray.data.manifest import load_manifest
from mmray.train.config import TrainConfig
from mmray.train.loop import build_method_and_network
from mmray.world import World


def method_and_network(cfg: TrainConfig, data=None, world: World | None = None):
    """Seeded, so the same weights every time; over `cfg.data_dir` in memory and as one CPU worker unless told."""
    manifest = load_manifest(cfg.data_dir)
    data = data or InMemoryDataSource(cfg.data_dir, manifest, cfg.batch_size, cfg.seed)
    return build_method_and_network(cfg, manifest, data, world or World(0, 1, torch.device("cpu")))
