"""Confirmation over seeds: the search's top configurations trained again, with further seeds.

One seed's validation score is a lucky draw as much as a property of the configuration, and the
search's best trial is, by construction, the luckiest one seen. So the `top_k` configurations by
validation are trained again with `seeds` further seeds (seed + 1, ..., seed + seeds), as Tune trials
with the search's resources, concurrently where they fit, every epoch (no early stopping). The chosen
configuration is the one with the best mean validation value over those seeds; the search trial
itself is left out of the mean, since it was picked for being high.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from mmray.train.launch import TrialSettings, run_trial
from mmray.tune import results as res
from mmray.tune.space import SearchSpace
from mmray.tune.storage import RunOptions

CONFIRM_DIR = "confirm"  # inside the experiment: Tune's record of the confirmation trials


@dataclass(frozen=True)
class Candidates:
    """What a confirmation trial trains: candidate `c` of `configs` with `seed` (Tune pickles this)."""
    configs: tuple[dict, ...]

    def config(self, trial_config: dict) -> dict:
        return {**self.configs[trial_config["candidate"]], "seed": trial_config["seed"]}


def run_candidate(trial_config: dict, candidates: Candidates, settings: TrialSettings, datasets: dict) -> None:
    run_trial(candidates.config(trial_config), settings, datasets)


def top_configs(results, table: pd.DataFrame, space: SearchSpace, k: int) -> list[dict]:
    """The configurations of the `k` best trials by their best validation value (finite values only)."""
    ranked = table[table[space.metric].map(lambda v: pd.notna(v) and abs(v) != float("inf"))] \
        if space.metric in table else table.iloc[0:0]
    ranked = ranked.sort_values(space.metric, ascending=space.mode == "min").head(k)
    by_path = {r.path: r for r in results}
    return [dict(by_path[path].config) for path in ranked["path"]]


def confirm(space: SearchSpace, options: RunOptions, configs: list[dict], settings: TrialSettings,
            concurrency: int, datasets: dict) -> list[tuple[dict, list]]:
    """Train every config with the further seeds; returns (config, [(seed, result), ...]) per config,
    best mean validation first."""
    from ray import tune

    seeds = [space.seed + i for i in range(1, space.confirm.seeds + 1)]
    candidates = Candidates(tuple(configs))
    trainable = tune.with_resources(
        tune.with_parameters(run_candidate, candidates=candidates, settings=settings, datasets=datasets),
        tune.PlacementGroupFactory(space.resources.trial_bundles()),
    )
    uri = f"{options.experiment_uri}/{CONFIRM_DIR}"
    if options.resume and tune.Tuner.can_restore(uri):
        tuner = tune.Tuner.restore(uri, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"candidate": tune.grid_search(list(range(len(configs)))), "seed": tune.grid_search(seeds)},
            tune_config=tune.TuneConfig(max_concurrent_trials=concurrency, reuse_actors=True,
                                        trial_dirname_creator=lambda trial: f"confirm_{trial.trial_id}"),
            run_config=tune.RunConfig(
                name=CONFIRM_DIR, storage_path=options.experiment_uri, verbose=1,
                failure_config=tune.FailureConfig(max_failures=space.retries.trials),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=space.metric,
                                                        checkpoint_score_order=space.mode)),
        )
    print(f"\nmmray: confirming the top {len(configs)} configuration(s) with seeds {seeds}", flush=True)
    results = tuner.fit()
    runs: list[list] = [[] for _ in configs]
    for result in results:
        runs[result.config["candidate"]].append((result.config["seed"], result))
    groups = [(config, sorted(r, key=lambda seed_result: seed_result[0])) for config, r in zip(configs, runs)]
    return sorted(groups, key=lambda group: _mean_best(group[1], space), reverse=space.mode == "max")


def _mean_best(runs: list, space: SearchSpace) -> float:
    """Mean over seeds of each run's best validation value; a failed seed makes the config rank last."""
    values = [res.best_value(result, space) for _, result in runs]
    if not values or any(v is None for v in values):
        return float("-inf") if space.mode == "max" else float("inf")
    return sum(values) / len(values)
