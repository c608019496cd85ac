"""`mmray bench search`: what the search machinery costs over a plain PyTorch loop.

Runs a small search on synthetic-av (one trial at a time, 1-worker trials), then trains the very
same trial configurations, for the same number of epochs each, with the same loop and torch
threads over tensors held in memory (no Ray, no Tune, no checkpoints). Prints both wall times
and their ratio. Target: at most 1.10x for 1-worker trials.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmray bench search", description=__doc__)
    parser.add_argument("--space", default="joint.yaml")
    parser.add_argument("--num-samples", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--storage", help="experiment folder (default: a temp folder)")
    args = parser.parse_args(argv)

    import ray

    from mmray.data.manifest import load_manifest
    from mmray.data.memory import InMemoryDataSource
    from mmray.train.config import TrainConfig
    from mmray.train.loop import train
    from mmray.world import World
    from mmray.tune.search import build_tuner, open_datasets, prepare_run, start_ray, trial_settings
    from mmray.tune.space import load_space
    from mmray.tune.storage import RunOptions

    space = load_space(args.space).with_overrides(num_samples=args.num_samples, epochs=args.epochs, max_concurrent=1)
    storage = Path(args.storage or tempfile.mkdtemp(prefix="mmray-bench-"))
    options = RunOptions(storage=storage, name=f"bench-{space.name}")
    space, options = prepare_run(space, options)

    t0 = time.perf_counter()
    start_ray(None)
    t1 = time.perf_counter()
    results = build_tuner(space, options, 1, trial_settings(space, options), open_datasets(space)).fit()
    t2 = time.perf_counter()
    trials = [(r.config, len(r.metrics_dataframe)) for r in results if r.metrics_dataframe is not None]
    ray.shutdown()

    manifest = load_manifest(space.data_dir, verify=False)
    torch.set_num_threads(space.resources.torch_threads)
    t3 = time.perf_counter()
    for config, epochs in trials:
        cfg = TrainConfig.from_flat({**config, "epochs": epochs})
        data = InMemoryDataSource(space.data_dir, manifest, cfg.batch_size, cfg.seed)
        train(cfg, manifest, data, lambda metrics, state: None, World.current())
    t4 = time.perf_counter()

    search_s, plain_s = t2 - t1, t4 - t3
    epochs = sum(e for _, e in trials)
    print(f"\nmmray bench search: {len(trials)} trials, {epochs} epochs in all, "
          f"{space.resources.torch_threads} torch thread(s), space {space.source.name}")
    print(f"  Ray start-up                     {t1 - t0:8.1f} s")
    print(f"  search (Tune + Ray Data), fit()  {search_s:8.1f} s")
    print(f"  plain PyTorch loop, in memory    {plain_s:8.1f} s  (includes decoding the shards once per trial)")
    print(f"  ratio search / plain             {search_s / plain_s:8.2f} x   (target <= 1.10)")
    print(f"  ratio incl. Ray start-up         {(t2 - t0) / plain_s:8.2f} x")
    return 0
