"""`mmray bench data`: can Ray Data feed a training worker faster than the step consumes?

Measures, with the same torch threads:
- delivered: samples per second that the Ray Data pipeline hands to the worker when the worker
  does nothing else, over whole epochs (start-up included), both ways mmray feeds training:
  from the object-store cache (read and decoded once; what splits under 2 GiB use) and streamed
  from the shards every epoch (read, decode, shuffle, batch; what larger splits use);
- consumed: samples per second the training step (forward, backward, optimizer step) processes
  on batches already in memory.
Target: delivered >= 3x consumed.
"""

from __future__ import annotations

import argparse
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmray bench data", description=__doc__)
    parser.add_argument("--dataset", default="synthetic-av")
    parser.add_argument("--data-dir")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the worker")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                        help="training settings for the step, e.g. --set model=resnet18")
    args = parser.parse_args(argv)

    import ray
    import torch
    from mmray.config import parse_assignment
    from mmray.data.memory import InMemoryDataSource
    from mmray.data.pipeline import CACHE_LIMIT_BYTES, RayDataSource, configure_data_context, decoded_bytes, load_splits, open_split
    from mmray.data.registry import resolve_data_dir
    from mmray.train.config import TrainConfig
    from mmray.train.launch import start_local_ray
    from mmray.train.loop import build_method_and_network, build_optimizer
    from mmray.world import World

    data_dir, manifest = resolve_data_dir(args.dataset, args.data_dir)
    cfg = TrainConfig.from_flat({"dataset": args.dataset, "data_dir": str(data_dir),
                                 **dict(parse_assignment(item) for item in args.set)})
    torch.set_num_threads(args.threads)

    start_local_ray(args.threads)
    configure_data_context()
    modes = {"cached": lambda: load_splits(str(data_dir), manifest, ("train",))["train"],
             "streamed": lambda: open_split(str(data_dir), manifest, "train")}
    delivered = {}
    for mode, dataset in modes.items():
        source = RayDataSource({"train": dataset()}, cfg.batch_size, cfg.seed, torch.device("cpu"), cfg.shuffle_buffer)
        delivered[mode] = []
        for epoch in range(args.epochs):
            start, n = time.perf_counter(), 0
            for batch in source.train_batches(epoch):
                n += len(batch.label)
            delivered[mode].append(n / (time.perf_counter() - start))
    ray.shutdown()

    memory = InMemoryDataSource(str(data_dir), manifest, cfg.batch_size, cfg.seed, splits=("train",))
    method, network = build_method_and_network(cfg, manifest, memory, World.current())
    optimizer = build_optimizer(cfg, network.parameters())
    start, n = time.perf_counter(), 0
    for batch in memory.train_batches(0):
        out, extras = network(batch.audio, batch.frames)
        loss = method.loss(out, extras, batch, 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        n += len(batch.label)
    consumed = n / (time.perf_counter() - start)

    used = "cached" if decoded_bytes(manifest, "train") + decoded_bytes(manifest, "val") <= CACHE_LIMIT_BYTES else "streamed"
    print(f"\nmmray bench data: {manifest.dataset}, model {cfg.model}, batch {cfg.batch_size}, {args.threads} torch thread(s)")
    for mode, rates in delivered.items():
        note = "  <- what training uses for this dataset" if mode == used else ""
        print(f"  delivered, {mode:8}, per epoch  " + "  ".join(f"{d:9.0f}" for d in rates) + f"  samples/s{note}")
    print(f"  consumed by the training step     {consumed:9.0f} samples/s")
    for mode, rates in delivered.items():
        print(f"  ratio delivered / consumed, {mode:8} {min(rates) / consumed:7.2f} x (slowest epoch; target >= 3)")
    return 0
