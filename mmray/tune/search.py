"""Run a search: Ray Tune drives trials, Optuna's TPE proposes them, ASHA stops the weak ones.

`run_search` is the recipe; each step is a function below or in `storage` (where files go) and
`results` (what is kept). The Optuna study lives in `<experiment>/optuna.db` (SQLite), so
Optuna's own tools can open it. At the end the best trial's checkpoint chosen on validation is
diagnosed and evaluated once on test, and a summary of every trial is written next to it.
"""

from __future__ import annotations

import os
from dataclasses import replace

from mmray.data.registry import resolve_data_dir
from mmray.errors import UserError
from mmray.train.checkpoint import BEST_JSON, evaluate_checkpoint
from mmray.train.config import TrainConfig
from mmray.train.diagnose import diagnose_checkpoint
from mmray.train.launch import TrialSettings, run_trial
from mmray.train.resources import DATA_RESERVED_CPUS
from mmray.tune import results as res
from mmray.tune.confirm import confirm, top_configs
from mmray.tune.space import SearchSpace
from mmray.tune.storage import (RunOptions, check_storage_reachable, copy_file, experiment_stored, list_folder,
                                local_checkpoint, storage_exists, upload_experiment)

STUDY_FILE = "optuna.db"


def run_search(space: SearchSpace, options: RunOptions) -> dict:
    space, options = prepare_run(space, options)
    start_ray(options.address)
    check_storage_reachable(options)
    datasets = open_datasets(space)
    concurrency = fitting_concurrency(space)
    settings = trial_settings(space, options)
    results = build_tuner(space, options, concurrency, settings, datasets).fit()

    exp = options.experiment_dir
    table = res.summarize(results, space)
    res.write_summary(table, exp)
    best_result, _ = res.best_trial(results, table, space)
    groups = [(best_result.config, [(space.seed, best_result)])]
    if space.confirm.top_k:  # replaced by the configuration with the best mean over further seeds
        configs = top_configs(results, table, space, space.confirm.top_k)
        groups = confirm(space, options, configs, settings, concurrency, datasets)
    config, runs = groups[0]
    seeds = [evaluate_run(seed, result, space, options) for seed, result in runs]
    best = res.best_record(config, seeds, space, options.experiment_uri, f"sqlite:///{exp / STUDY_FILE}")
    if space.confirm.top_k:
        best["confirmation"] = res.confirmation_record(groups, space)
    diagnose_checkpoint(best["checkpoint"])  # the chosen model's decision-layer diagnostics, written beside it
    res.write_best(best, exp)
    upload_experiment(options)
    res.print_best(best, space, table, f"{res.SUMMARY_CSV}, {res.SUMMARY_JSON}, {BEST_JSON}, {STUDY_FILE}")
    return best


def evaluate_run(seed: int, result, space: SearchSpace, options: RunOptions) -> dict:
    """One run's checkpoint selected on validation, evaluated once on test."""
    kept, saved_metrics = res.selected_checkpoint(result, space.metric, space.mode)
    checkpoint = local_checkpoint(kept, options, f"seed{seed}")
    return {"seed": seed, "trial_id": saved_metrics.get("trial_id"), "best_epoch": int(saved_metrics["epoch"]),
            "validation": {k: float(v) for k, v in saved_metrics.items() if k.startswith("val/")},
            "test": evaluate_checkpoint(checkpoint, "test"), "checkpoint": str(checkpoint)}


def prepare_run(space: SearchSpace, options: RunOptions) -> tuple[SearchSpace, RunOptions]:
    """Every check that can fail on bad input, before Ray starts and before anything is written."""
    exp = options.experiment_dir
    stored = experiment_stored(options)
    if options.resume and not stored:
        raise UserError(f"{options.experiment_uri}: nothing to resume (no such experiment folder)")
    if (stored or exp.exists()) and not tune_state_saved(options):
        # A crash between creating the folder and Tune's first save: nothing to resume, so start afresh there.
        discard_unstarted(options)
        options = replace(options, resume=False)
    elif options.resume and options.remote and not (exp / STUDY_FILE).is_file():
        restore_study(options)  # a new head: the study as the bucket last received it
    elif not options.resume and (stored or exp.exists()):
        where = options.experiment_uri if stored else exp
        raise UserError(f"{where}: experiment already exists; pass --resume to continue it or --name for a new one")
    data_dir, _ = resolve_data_dir(space.dataset, space.data_dir)
    # Trials run with another working directory: hand them an absolute path.
    return space.with_overrides(data_dir=str(data_dir)), options


def tune_state_saved(options: RunOptions) -> bool:
    """Whether Tune saved the experiment at least once (its tuner and an experiment state): resumable."""
    names = list_folder(options.experiment_uri)
    return "tuner.pkl" in names and any(n.startswith("experiment_state") for n in names)


def discard_unstarted(options: RunOptions) -> None:
    """Remove the study of an experiment that Tune never saved, once sure it holds no result: nothing but
    the study and Tune's tuner.pkl, and no finished trial in the study. Anything else is refused, never deleted."""
    import optuna

    study = options.experiment_dir / STUDY_FILE
    names = set(list_folder(options.experiment_uri)) | set(list_folder(options.experiment_dir))
    finished = []
    if study.is_file():
        url = f"sqlite:///{study}"
        finished = [t for name in optuna.get_all_study_names(url)
                    for t in optuna.load_study(study_name=name, storage=url).trials if t.state.is_finished()]
    if names - {STUDY_FILE, "tuner.pkl"} or finished:
        raise UserError(f"{options.experiment_uri}: experiment already exists but Tune never saved it (nothing "
                        "for --resume to continue) and it holds files; pass --name for a new one")
    study.unlink(missing_ok=True)


def restore_study(options: RunOptions) -> None:
    target = options.experiment_dir / STUDY_FILE
    source = f"{options.experiment_uri}/{STUDY_FILE}"
    if not storage_exists(source):
        raise UserError(f"{source}: nothing to resume: the study is neither in the bucket nor in {target}")
    options.experiment_dir.mkdir(parents=True, exist_ok=True)
    copy_file(source, str(target))
    print(f"mmray: restored the study from {source}", flush=True)


# How a process that drives a search wants Ray and Tune to behave (set by start_ray; a search driven from a
# Ray task gets them in its runtime_env, as `mmray compare` does).
SEARCH_ENV = {
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    # The classic progress table shows the searched hyperparameters; the newer output ignores CLIReporter.
    "RAY_AIR_NEW_OUTPUT": "0",
    # Tune snapshots its state at every checkpoint (that is what makes --resume safe); don't warn about it.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}


def start_ray(address: str | None) -> None:
    """Connect to `address`, or start a local Ray (reusing one this process already started)."""
    import ray

    if ray.is_initialized():
        return

    for key, value in SEARCH_ENV.items():
        os.environ.setdefault(key, value)
    if address:
        context = ray.init(address=address, logging_level="WARNING")
    else:
        context = ray.init(logging_level="WARNING", dashboard_host="127.0.0.1")
    if context.dashboard_url:
        print(f"mmray: Ray dashboard at http://{context.dashboard_url}", flush=True)


def open_datasets(space: SearchSpace) -> dict:
    """The splits every trial trains and validates on, opened once here and shared by all trials."""
    from mmray.data.manifest import load_manifest
    from mmray.data.pipeline import configure_data_context, load_splits

    configure_data_context()
    return load_splits(space.data_dir, load_manifest(space.data_dir, verify=False),
                       decode_frames=space.fixed.get("decode_frames", TrainConfig.decode_frames))


def fitting_concurrency(space: SearchSpace) -> int:
    """`concurrent_trials` on the connected cluster, saying so when fewer than asked fit."""
    import ray

    resources = ray.cluster_resources()
    concurrency = concurrent_trials(space, resources.get("CPU", 0), resources.get("GPU", 0))
    if concurrency < space.max_concurrent:
        print(f"mmray: {concurrency} trial(s) at once fit this cluster (max_concurrent is {space.max_concurrent})",
              flush=True)
    return concurrency


def concurrent_trials(space: SearchSpace, cluster_cpus: float, cluster_gpus: float) -> int:
    """How many trials may run at once without starving Ray Data; refuse a trial that can never run."""
    per_trial = space.resources.cpus_per_trial()
    usable = cluster_cpus - DATA_RESERVED_CPUS
    if per_trial > usable:
        raise UserError(f"{space.source}: resources need {per_trial:g} CPUs per trial, but the cluster has "
                        f"{cluster_cpus:g} and {DATA_RESERVED_CPUS:g} stays free for Ray Data; lower resources")
    gpus = space.resources.workers * space.resources.gpus_per_worker
    if gpus > cluster_gpus:
        raise UserError(f"{space.source}: resources need {gpus:g} GPUs per trial, the cluster has {cluster_gpus:g}")
    fits = int(usable // per_trial + 1e-9)
    if gpus:
        fits = min(fits, int(cluster_gpus // gpus))
    return min(fits, space.max_concurrent)


def trial_settings(space: SearchSpace, options: RunOptions) -> TrialSettings:
    return TrialSettings(resources=space.resources, storage_path=f"{options.experiment_uri}/train",
                         metric=space.metric, mode=space.mode, worker_retries=space.retries.workers)


def build_tuner(space: SearchSpace, options: RunOptions, concurrency: int, settings: TrialSettings, datasets: dict,
                stop=None):
    """The search's Tuner; `stop` (a Tune stopper) may end it early, e.g. at an epoch budget (bench search-quality)."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from mmray.tune.searcher import SelectionSearch, StudySync

    exp = options.experiment_dir
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, settings=settings, datasets=datasets),
        tune.PlacementGroupFactory(space.resources.trial_bundles()),
    )
    if options.resume:
        return tune.Tuner.restore(options.experiment_uri, trainable=trainable, resume_unfinished=True,
                                  resume_errored=True)

    exp.mkdir(parents=True, exist_ok=True)  # exists only when Tune never saved it (prepare_run)
    searcher = SelectionSearch(
        epochs=space.epochs,
        space=space.define_by_run(),
        metric=space.metric,
        mode=space.mode,
        sampler=optuna.samplers.TPESampler(seed=space.seed),
        storage=optuna.storages.RDBStorage(f"sqlite:///{exp / STUDY_FILE}"),
        study_name=space.name,
    )
    scheduler = (ASHAScheduler(metric=space.metric, mode=space.mode, time_attr="training_iteration", max_t=space.epochs,
                               grace_period=space.scheduler.grace_period,
                               reduction_factor=space.scheduler.reduction_factor)
                 if space.scheduler.type == "asha" else FIFOScheduler())
    reporter = tune.CLIReporter(
        parameter_columns=[p.name for p in space.params] or ["method"],
        metric_columns={"epoch": "epoch", space.metric: space.metric, "val/audio_acc": "audio",
                        "val/visual_acc": "visual"},
        max_report_frequency=15,
    )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher,
                                    scheduler=scheduler, num_samples=space.num_samples,
                                    max_concurrent_trials=concurrency, reuse_actors=True,
                                    trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}"),
        run_config=tune.RunConfig(
            name=options.name, storage_path=str(options.storage), progress_reporter=reporter, verbose=1, stop=stop,
            # A trial whose process dies restarts from its last checkpoint, as the same trial (and Optuna trial).
            failure_config=tune.FailureConfig(max_failures=space.retries.trials),
            callbacks=[StudySync(str(exp / STUDY_FILE), f"{options.experiment_uri}/{STUDY_FILE}")]
            if options.remote else None,
            # Best checkpoint on the search metric, plus the latest one for resuming.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=space.metric,
                                                    checkpoint_score_order=space.mode),
        ),
    )
