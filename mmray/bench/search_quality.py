"""`mmray bench search-quality`: does TPE + ASHA find what an exhaustive grid finds, for less?

On synthetic-av, a small space (by default lr x weight decay x fusion of joint training, 12
configurations) is searched twice with the same trial seed: once exhaustively (every
configuration, every epoch: the reference) and once by mmray's searcher (Optuna TPE + ASHA) with a
budget of a quarter of the grid's epochs, enforced by stopping the search when it is spent. Prints
the best validation value each found and the epochs each used. Target: TPE + ASHA reaches at least
0.99 of the grid's best with at most 25% of its epochs.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from ray.tune import Stopper

GRID = {"lr": [3e-4, 1e-3, 3e-3], "weight_decay": [1e-4, 1e-1], "fusion": ["concat", "sum"]}


class EpochBudget(Stopper):
    """A Tune stopper: ends the whole search once its trials have reported `budget` epochs in all."""

    def __init__(self, budget: int):
        self.budget, self.used = budget, 0

    def __call__(self, trial_id: str, result: dict) -> bool:
        self.used += 1
        return False

    def stop_all(self) -> bool:
        return self.used >= self.budget


def best_of(results, metric: str) -> tuple[float, int]:
    """The best value over every trial's epochs, and how many epochs the trials ran in all."""
    best, epochs = float("-inf"), 0
    for result in results:
        history = result.metrics_dataframe
        if history is not None and metric in history:
            best, epochs = max(best, float(history[metric].max())), epochs + len(history)
    return best, epochs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmray bench search-quality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="joint.yaml", help="the method, data and fixed settings to search over")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--budget", type=float, default=0.25, help="TPE + ASHA's epochs as a fraction of the grid's")
    parser.add_argument("--storage", help="experiment folder (default: a temp folder)")
    args = parser.parse_args(argv)

    from ray import tune

    from mmray.train.launch import run_trial
    from mmray.tune.search import build_tuner, open_datasets, prepare_run, start_ray, trial_settings
    from mmray.tune.space import Param, Scheduler, load_space
    from mmray.tune.storage import RunOptions

    params = tuple(Param(name, "categorical", choices=tuple(values)) for name, values in GRID.items())
    space = replace(load_space(args.space).with_overrides(epochs=args.epochs, max_concurrent=1), params=params)
    storage = Path(args.storage or tempfile.mkdtemp(prefix="mmray-bench-quality-"))
    space, _ = prepare_run(space, RunOptions(storage=storage, name="grid"))
    start_ray(None)
    datasets = open_datasets(space)
    configs = [dict(zip(GRID, values)) for values in itertools.product(*GRID.values())]
    grid_epochs = len(configs) * space.epochs

    # The reference: every configuration, every epoch (FIFO), one at a time as in the main job.
    grid = RunOptions(storage=storage, name="grid")
    grid.experiment_dir.mkdir(parents=True)
    t0 = time.perf_counter()
    results = tune.Tuner(
        tune.with_resources(tune.with_parameters(run_trial, settings=trial_settings(space, grid), datasets=datasets),
                            tune.PlacementGroupFactory(space.resources.trial_bundles())),
        param_space={**space.constants(), **{name: tune.grid_search(values) for name, values in GRID.items()}},
        tune_config=tune.TuneConfig(max_concurrent_trials=1, reuse_actors=True),
        run_config=tune.RunConfig(name="grid", storage_path=str(storage), verbose=0),
    ).fit()
    grid_best, grid_used = best_of(results, space.metric)
    grid_s = time.perf_counter() - t0
    curves = {", ".join(f"{k} {r.config[k]}" for k in GRID): [round(float(v), 4) for v in r.metrics_dataframe[space.metric]]
              for r in results if r.metrics_dataframe is not None}

    # mmray's searcher on the same space, stopped when a quarter of the grid's epochs is spent.
    budget = int(args.budget * grid_epochs)
    searched = replace(space, num_samples=len(configs),
                       scheduler=Scheduler(type="asha", grace_period=1, reduction_factor=3))
    tpe = RunOptions(storage=storage, name="tpe-asha")
    t1 = time.perf_counter()
    stopper = EpochBudget(budget)
    results = build_tuner(searched, tpe, 1, trial_settings(searched, tpe), datasets, stop=stopper).fit()
    tpe_best, tpe_used = best_of(results, space.metric)
    tpe_s = time.perf_counter() - t1

    print(f"\nmmray bench search-quality: {space.method} on {space.dataset}, {len(configs)} configurations "
          f"({', '.join(f'{k} {v}' for k, v in GRID.items())}), {space.epochs} epochs, trial seed {space.seed}")
    print(f"  the grid's {space.metric} per epoch:")
    for config, curve in curves.items():
        print(f"    {config:45} {' '.join(f'{v:.3f}' for v in curve)}")
    print(f"  {'':12} {'best ' + space.metric:>20} {'epochs':>8} {'wall s':>8}")
    print(f"  {'grid':12} {grid_best:20.4f} {grid_used:8d} {grid_s:8.1f}")
    print(f"  {'TPE + ASHA':12} {tpe_best:20.4f} {tpe_used:8d} {tpe_s:8.1f}   (budget {budget} epochs)")
    print(f"  TPE + ASHA / grid: {tpe_best / grid_best:.3f} of the best value (target >= 0.99) with "
          f"{tpe_used / grid_used:.0%} of the epochs (target <= 25%)")
    return 0
