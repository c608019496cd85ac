"""Helpers for tests of distributed code: a free local port, and two real processes in one gloo group
(without Ray) to check that DDP workers stay in step."""

from __future__ import annotations

import socket
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

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
