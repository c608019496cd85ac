"""Helpers for tests of distributed code: a free local port, two real processes in one gloo group
(without Ray) to check that DDP workers stay in step, and whole runs through the loop on one or two workers."""

from __future__ import annotations

import copy
import socket
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mmray.data.memory import InMemoryDataSource
from mmray.data.manifest import load_manifest
from mmray.train.config import TrainConfig
from mmray.train.loop import train
from mmray.world import World


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_on_two_workers(fn, *args) -> None:
    """Run `fn(world, *args)` in two spawned processes joined in one gloo group (`fn`: a module-level function)."""
    mp.spawn(_worker, args=(free_port(), fn, args), nprocs=2, join=True)


def _worker(rank: int, port: int, fn, args) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=120))
    try:
        fn(World(rank, 2, torch.device("cpu")), *args)
    finally:
        dist.destroy_process_group()


class HalfData(InMemoryDataSource):
    """One of two workers' data: train's even or odd rows (different batches per rank); all of validation."""

    def __init__(self, *args, rank: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.rank = rank

    def train_batches(self, epoch):
        n = len(self.tensors["train"]["label"])
        order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch))
        return self._batches("train", order[order % 2 == self.rank])


def train_reports(settings: dict, world: World | None = None, resume: dict | None = None) -> list[tuple[dict, dict]]:
    """Train one run through the loop on `settings` (a flat config with `data_dir`); every epoch's (metrics, state).

    With a two-worker `world`, each worker trains on its half of train (HalfData)."""
    cfg = TrainConfig.from_flat(settings)
    manifest = load_manifest(cfg.data_dir)
    world = world or World(0, 1, torch.device("cpu"))
    if world.size == 1:
        data = InMemoryDataSource(cfg.data_dir, manifest, cfg.batch_size, cfg.seed)
    else:
        data = HalfData(cfg.data_dir, manifest, cfg.batch_size, cfg.seed, rank=world.rank)
    reports = []
    train(cfg, manifest, data, lambda m, s: reports.append((m, copy.deepcopy(s))), world, resume)
    return reports


def _train_and_save(world: World, settings: dict, out_dir) -> None:
    torch.save(train_reports(settings, world), out_dir / f"rank{world.rank}.pt")


def train_on_two_workers(settings: dict, out_dir) -> list[list[tuple[dict, dict]]]:
    """Both workers' reports of one run on two gloo workers, each on its half of train."""
    run_on_two_workers(_train_and_save, settings, out_dir)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


def parameters(state: dict) -> dict[str, torch.Tensor]:
    """A checkpoint's network tensors without BatchNorm statistics (each worker keeps its own)."""
    return {k: v for k, v in state["network"].items() if "running" not in k and "num_batches" not in k}
