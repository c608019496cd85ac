"""`mmray bench search-quality`: does TPE + ASHA find what an exhaustive grid finds, for less?

On synthetic-av, a small space (by default lr x width x fusion of joint training, 18
configurations) is searched with the same trial seed: once exhaustively (every configuration,
every epoch: the reference), then by mmray's searcher (Optuna TPE + ASHA) with a budget of a
quarter of the grid's epochs, enforced by stopping the search when it is spent, once per sampler
seed (which configurations TPE happens to draw first decides much, so one draw says little).
Prints the grid's curves, and the best validation value each search found and the epochs each
used; then the same search replayed on the grid's curves (a configuration trained with the grid's
seed repeats the grid's curve, so no training is needed) over many sampler seeds. Target: TPE +
ASHA reaches at least 0.99 of the grid's best with at most 25% of its epochs.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from ray.tune import Stopper

# Three settings that each matter (an earlier grid's weight decay of 1e-4 vs 1e-1 changed nothing, so its
# 12 configurations were 6 twice over).
GRID = {"lr": [1e-3, 3e-3, 1e-2], "width": [16, 32, 48], "fusion": ["concat", "sum"]}


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


def replay(curves: dict[tuple, list[float]], sampler_seed: int, budget: int, epochs: int, trials: int,
           grace_period: int, reduction_factor: int) -> float:
    """TPE + ASHA replayed on the grid's curves: the best value it finds within `budget` epochs.

    A trial of a configuration with the grid's trial seed trains exactly as the grid's did (same data
    order, same initialisation), so its epochs can be read off the grid instead of trained. Optuna's
    TPE is told what mmray's searcher tells it (PRUNED with the epochs' values, COMPLETE with the best);
    the stopping decisions are Ray's own ASHA bracket's, one trial at a time as in the real search.
    """
    from types import SimpleNamespace

    import optuna
    from ray.tune.schedulers import TrialScheduler
    from ray.tune.schedulers.async_hyperband import _Bracket

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=sampler_seed))
    distributions = {name: optuna.distributions.CategoricalDistribution(values) for name, values in GRID.items()}
    bracket = _Bracket(min_t=grace_period, max_t=epochs, reduction_factor=reduction_factor, s=0)
    used, best = 0, float("-inf")
    for number in range(trials):
        trial = study.ask(distributions)
        curve = curves[tuple(trial.params[name] for name in GRID)]
        for epoch, value in enumerate(curve, start=1):
            used, best = used + 1, max(best, value)
            trial.report(value, epoch)
            if used >= budget:
                return best
            decision = bracket.on_result(SimpleNamespace(trial_id=number), epoch, value) if epoch < epochs else None
            if decision == TrialScheduler.STOP:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, max(curve))
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmray bench search-quality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="joint.yaml", help="the method, data and fixed settings to search over")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--budget", type=float, default=0.25, help="TPE + ASHA's epochs as a fraction of the grid's")
    parser.add_argument("--sampler-seeds", type=int, nargs="+", default=[0, 1, 2], metavar="SEED",
                        help="one TPE + ASHA search per seed of the sampler (default: 0 1 2)")
    parser.add_argument("--replays", type=int, default=40,
                        help="sampler seeds over which the search is replayed on the grid's curves (no training)")
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
    curves = {tuple(r.config[name] for name in GRID): [float(v) for v in r.metrics_dataframe[space.metric]]
              for r in results if r.metrics_dataframe is not None}

    # mmray's searcher on the same space, stopped when a quarter of the grid's epochs is spent, once per
    # sampler seed: which configurations TPE happens to draw first decides much, so one draw says little.
    budget = int(args.budget * grid_epochs)
    asha = Scheduler(type="asha", grace_period=1, reduction_factor=3)
    searches = []
    for sampler_seed in args.sampler_seeds:
        # The trials keep the grid's seed (a fixed setting wins over the run's seed); only TPE's changes.
        searched = replace(space, num_samples=len(configs), seed=sampler_seed,
                           fixed={**space.fixed, "seed": space.seed},
                           scheduler=asha)
        tpe = RunOptions(storage=storage, name=f"tpe-asha-sampler-{sampler_seed}")
        t1 = time.perf_counter()
        results = build_tuner(searched, tpe, 1, trial_settings(searched, tpe), datasets, stop=EpochBudget(budget)).fit()
        searches.append((sampler_seed, *best_of(results, space.metric), time.perf_counter() - t1))
    replayed = {seed: replay(curves, seed, budget, space.epochs, len(configs), asha.grace_period, asha.reduction_factor)
                for seed in range(max(args.replays, max(args.sampler_seeds) + 1))}

    print(f"\nmmray bench search-quality: {space.method} on {space.dataset}, {len(configs)} configurations "
          f"({', '.join(f'{k} {v}' for k, v in GRID.items())}), {space.epochs} epochs, trial seed {space.seed}")
    print(f"  the grid's {space.metric} per epoch:")
    for config, curve in curves.items():
        name = ", ".join(f"{k} {v}" for k, v in zip(GRID, config))
        print(f"    {name:45} {' '.join(f'{v:.3f}' for v in curve)}")
    print(f"  {'':24} {'best ' + space.metric:>20} {'of grid':>8} {'epochs':>8} {'wall s':>8} {'replayed':>9}")
    print(f"  {'grid':24} {grid_best:20.4f} {1:8.3f} {grid_used:8d} {grid_s:8.1f}")
    for sampler_seed, best, used, seconds in searches:
        print(f"  {f'TPE + ASHA, sampler {sampler_seed}':24} {best:20.4f} {best / grid_best:8.3f} {used:8d} "
              f"{seconds:8.1f} {replayed[sampler_seed]:9.4f}")
    ratios = [best / grid_best for _, best, _, _ in searches]
    print(f"  TPE + ASHA / grid: {sum(ratios) / len(ratios):.3f} of the best value on average, at least 0.99 in "
          f"{sum(r >= 0.99 for r in ratios)} of {len(ratios)} sampler seeds (target >= 0.99), with at most "
          f"{max(used for _, _, used, _ in searches) / grid_used:.0%} of the epochs (target <= 25%, budget {budget})")
    ratios = [best / grid_best for best in replayed.values()]
    print(f"  replayed on the grid's curves (column 'replayed': the same search without training) over "
          f"{len(ratios)} sampler seeds: {sum(ratios) / len(ratios):.3f} of the best value on average, at least "
          f"0.99 in {sum(r >= 0.99 for r in ratios)}, lowest {min(ratios):.3f}")
    return 0
