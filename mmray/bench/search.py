"""`mmray bench search`: what the search machinery costs over a plain PyTorch loop.

Runs a search (by default the main job's: search_spaces/gmm.yaml, 8 trials of up to 8 epochs on
synthetic-av, one trial at a time, 1-worker trials, ASHA), then trains the very
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


def fit_phases(histories, fit_start: float, fit_end: float) -> dict[str, float]:
    """Where fit()'s wall time went, from the trials' result rows (`timestamp`: when a row was
    reported, whole seconds; `time_this_iter_s`: the epoch's own time, measured inside the trial)."""
    first = min(float((h["timestamp"] - h["time_this_iter_s"]).iloc[0]) for h in histories)
    last = max(float(h["timestamp"].iloc[-1]) for h in histories)
    epochs = sum(float(h["time_this_iter_s"].sum()) for h in histories)
    # perf_counter (fit_start, fit_end) and the rows' wall-clock timestamps share only durations:
    start = first - (time.time() - (time.perf_counter() - fit_start))
    end = (time.time() - (time.perf_counter() - fit_end)) - last
    return {"start": start, "epochs": epochs, "end": end, "between": (fit_end - fit_start) - start - epochs - end}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmray bench search", description=__doc__)
    parser.add_argument("--space", default="gmm.yaml")
    parser.add_argument("--num-samples", type=int, help="default: the space's")
    parser.add_argument("--epochs", type=int, help="default: the space's")
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
    reported = [r for r in results if r.metrics_dataframe is not None]
    trials = [(r.config, len(r.metrics_dataframe)) for r in reported]
    phases = fit_phases([r.metrics_dataframe for r in reported], t1, t2)
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
    print(f"    before the first epoch         {phases['start']:8.1f} s  (Tuner, study, first trial actor)")
    print(f"    inside the trials' epochs      {phases['epochs']:8.1f} s  (training, Ray Data, checkpoints)")
    print(f"    between epochs and trials      {phases['between']:8.1f} s  (results, snapshots, next trial)")
    print(f"    after the last epoch           {phases['end']:8.1f} s  (last snapshot, actors, result grid)")
    print(f"  plain PyTorch loop, in memory    {plain_s:8.1f} s  (includes decoding the shards once per trial)")
    print(f"  ratio search / plain             {search_s / plain_s:8.2f} x   (target <= 1.10)")
    print(f"  ratio incl. Ray start-up         {(t2 - t0) / plain_s:8.2f} x")
    return 0
