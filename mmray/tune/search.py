"""Run a search: Ray Tune drives trials, Optuna's TPE proposes them, ASHA stops the weak ones.

The Optuna study lives in `<experiment>/optuna.db` (SQLite), so Optuna's own tools can open it.
At the end the best trial's checkpoint chosen on validation is evaluated once on test, and a
summary of every trial is written as CSV and JSON next to it.

`--storage` is a local folder or a URI (s3://bucket/prefix, gs://..., file://...). With a URI,
Tune and Train keep trials and checkpoints there, and the driver's own files (the study:
SQLite cannot live in a bucket; the summaries; the selected checkpoint, downloaded for test
evaluation) go to a local `--workdir`, copied up to the bucket when the search ends.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mmray.data.registry import resolve_data_dir
from mmray.errors import UserError
from mmray.train.diagnose import DIAGNOSTICS_JSON, diagnose_checkpoint
from mmray.train.launch import DATA_RESERVED_CPUS, TrialSettings, evaluate_checkpoint, run_trial
from mmray.tune.space import SearchSpace

STUDY_FILE = "optuna.db"
SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"
BEST_JSON = "best.json"
SELECTED_CHECKPOINT = "selected_checkpoint"  # with a URI storage: the local copy of the chosen checkpoint
DEFAULT_WORKDIR = Path("~/mmray_results").expanduser()


def is_uri(storage: str | Path) -> bool:
    return "://" in str(storage)


def parse_storage(text: str) -> Path | str:
    """`--storage` as given: a URI stays a string, anything else is a local folder."""
    return text.rstrip("/") if is_uri(text) else Path(text).expanduser().resolve()


@dataclass(frozen=True)
class RunOptions:
    storage: Path | str  # folder that holds experiments, or a URI (parse_storage)
    name: str
    address: str | None = None  # a running Ray cluster ("auto" or host:port); None starts a local one
    resume: bool = False
    workdir: Path = DEFAULT_WORKDIR  # with a URI storage: the local folder for the driver's own files

    @property
    def remote(self) -> bool:
        return is_uri(self.storage)

    @property
    def experiment_dir(self) -> Path:
        """The driver's local folder: study, summaries, best.json (and Tune's trials, for a local storage)."""
        return (self.workdir if self.remote else self.storage) / self.name

    @property
    def experiment_uri(self) -> str:
        """Where Tune and Train keep the experiment's trials and checkpoints."""
        return f"{self.storage}/{self.name}" if self.remote else str(self.experiment_dir)


def storage_exists(uri: str) -> bool:
    import pyarrow.fs

    try:
        fs, path = pyarrow.fs.FileSystem.from_uri(uri)
        return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound
    except (OSError, ValueError) as e:  # unknown scheme, no such bucket, no access
        raise UserError(f"{uri}: {e}") from None


def prepare_run(space: SearchSpace, options: RunOptions) -> SearchSpace:
    """Every check that can fail on bad input, before Ray starts and before anything is written."""
    exp = options.experiment_dir
    stored = storage_exists(options.experiment_uri) if options.remote else exp.is_dir()
    if options.resume and not stored:
        raise UserError(f"{options.experiment_uri}: nothing to resume (no such experiment folder)")
    if options.resume and options.remote and not (exp / STUDY_FILE).is_file():
        raise UserError(f"{exp / STUDY_FILE}: nothing to resume: the study of a search with --storage "
                        f"{options.storage} lives in --workdir on the machine that started it; resume it there")
    if not options.resume and (stored or exp.exists()):
        where = options.experiment_uri if stored else exp
        raise UserError(f"{where}: experiment already exists; pass --resume to continue it or --name for a new one")
    data_dir, _ = resolve_data_dir(space.dataset, space.data_dir)
    # Trials run with another working directory: hand them an absolute path.
    return space.with_overrides(data_dir=str(data_dir))


def start_ray(address: str | None) -> None:
    """Connect to `address`, or start a local Ray (reusing one this process already started)."""
    import ray

    if ray.is_initialized():
        return

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    # The classic progress table shows the searched hyperparameters; the newer output ignores CLIReporter.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Tune snapshots its state at every checkpoint (that is what makes --resume safe); don't warn about it.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if address:
        context = ray.init(address=address, logging_level="WARNING")
    else:
        context = ray.init(logging_level="WARNING", dashboard_host="127.0.0.1")
    if context.dashboard_url:
        print(f"mmray: Ray dashboard at http://{context.dashboard_url}", flush=True)


def nodes_missing(path: Path) -> list[str]:
    """Addresses of the cluster's live nodes on which `path` does not exist (a zero-CPU task on each)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n["Alive"]]
    exists = ray.remote(num_cpus=0)(os.path.exists)
    seen = ray.get([exists.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                    .remote(str(path)) for n in nodes])
    return [n["NodeManagerAddress"] for n, ok in zip(nodes, seen) if not ok]


def check_shared_storage(storage: Path) -> None:
    """On a multi-node cluster trials on every node write results and checkpoints under `storage`,
    and the driver reads them back: refuse a folder that some node cannot see."""
    import ray

    if sum(n["Alive"] for n in ray.nodes()) < 2:
        return
    storage.mkdir(parents=True, exist_ok=True)
    marker = storage / f".mmray-shared-check-{os.getpid()}"
    marker.touch()
    try:
        missing = nodes_missing(marker)
    finally:
        marker.unlink()
    if missing:
        raise UserError(f"--storage {storage}: this Ray cluster has several nodes and {', '.join(missing)} cannot "
                        "see this folder; pass a folder on storage shared by every node, mounted at the same path "
                        "(cluster/gpu.yaml mounts one at /mnt/mmray)")


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


def build_tuner(space: SearchSpace, options: RunOptions, concurrency: int):
    from mmray.data.manifest import load_manifest
    from mmray.data.pipeline import configure_data_context, load_splits

    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    exp = options.experiment_dir
    settings = TrialSettings(resources=space.resources, storage_path=f"{options.experiment_uri}/train",
                             metric=space.metric, mode=space.mode)
    configure_data_context()
    datasets = load_splits(space.data_dir, load_manifest(space.data_dir, verify=False))
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, settings=settings, datasets=datasets),
        tune.PlacementGroupFactory(space.resources.trial_bundles()),
    )
    if options.resume:
        return tune.Tuner.restore(options.experiment_uri, trainable=trainable, resume_unfinished=True,
                                  resume_errored=True)

    exp.mkdir(parents=True)
    searcher = OptunaSearch(
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
            name=options.name, storage_path=str(options.storage), progress_reporter=reporter, verbose=1,
            # Best checkpoint on the search metric, plus the latest one for resuming.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=space.metric,
                                                    checkpoint_score_order=space.mode),
        ),
    )


def best_index(values: pd.Series, epochs: pd.Series, mode: str):
    """Index of the best value; on a tie the later epoch wins (it is the checkpoint Ray keeps)."""
    order = pd.DataFrame({"v": values if mode == "max" else -values, "e": epochs}).sort_values(["v", "e"])
    return order.index[-1]


def selected_checkpoint(result, metric: str, mode: str):
    """The trial's kept checkpoint (a ray.train.Checkpoint) with the best validation metric, and the
    metrics it was saved with.

    1-worker trials keep Tune checkpoints; N-worker trials keep Ray Train's, whose paths come in
    the `checkpoint_path` metric, as paths on the storage's filesystem (a bucket's, or the local one).
    """
    import pyarrow.fs
    from ray.train import Checkpoint

    fs = result.filesystem
    kept = lambda path: isinstance(path, str) and fs.get_file_info(path).type == pyarrow.fs.FileType.Directory
    candidates = list(result.best_checkpoints)
    history = result.metrics_dataframe
    if history is not None and "checkpoint_path" in history:
        candidates += [(Checkpoint(row["checkpoint_path"], filesystem=fs), row.to_dict())
                       for _, row in history.iterrows() if kept(row["checkpoint_path"])]
    candidates = [(checkpoint, m) for checkpoint, m in candidates if metric in m]
    if not candidates:
        return None
    table = pd.DataFrame([m for _, m in candidates])
    return candidates[best_index(table[metric], table["epoch"], mode)]


def summarize(results, space: SearchSpace) -> pd.DataFrame:
    rows = []
    for result in results:
        history = result.metrics_dataframe
        row = {"trial_id": result.metrics.get("trial_id") if result.metrics else None,
               "status": "ERROR" if result.error else "TERMINATED",
               **{f"config/{p.name}": result.config.get(p.name) for p in space.params}}
        if history is not None and not history.empty and space.metric in history:
            best = history.loc[best_index(history[space.metric], history["epoch"], space.mode)]
            row.update({"epochs_run": int(history["epoch"].max()), "best_epoch": int(best["epoch"])})
            row.update({k: float(best[k]) for k in history.columns if k.startswith("val/")})
        row["path"] = result.path
        rows.append(row)
    return pd.DataFrame(rows)


def run_search(space: SearchSpace, options: RunOptions) -> dict:
    space = prepare_run(space, options)
    start_ray(options.address)
    if not options.remote:  # every node reaches a bucket; a local folder may be on one node only
        check_shared_storage(options.storage)
    import ray

    resources = ray.cluster_resources()
    concurrency = concurrent_trials(space, resources.get("CPU", 0), resources.get("GPU", 0))
    if concurrency < space.max_concurrent:
        print(f"mmray: {concurrency} trial(s) at once fit this cluster (max_concurrent is {space.max_concurrent})",
              flush=True)
    results = build_tuner(space, options, concurrency).fit()

    exp = options.experiment_dir
    table = summarize(results, space)
    table.to_csv(exp / SUMMARY_CSV, index=False)
    (exp / SUMMARY_JSON).write_text(table.to_json(orient="records", indent=2))
    if results.num_errors:
        print(f"mmray: {results.num_errors} trial(s) failed; see {options.experiment_uri} for their logs", flush=True)
    ok = table.dropna(subset=[space.metric]) if space.metric in table else table.iloc[0:0]
    if ok.empty:
        raise RuntimeError(f"no trial of {exp} reported {space.metric}")
    best_row = ok.loc[best_index(ok[space.metric], ok["best_epoch"], space.mode)]
    best_result = next(r for r in results if r.path == best_row["path"])
    selected = selected_checkpoint(best_result, space.metric, space.mode)
    if selected is None:
        raise RuntimeError(f"trial {best_row['trial_id']} kept no checkpoint with {space.metric}")
    kept, saved_metrics = selected
    checkpoint = Path(kept.path)
    if options.remote:  # evaluated and diagnosed here, on a local copy
        shutil.rmtree(exp / SELECTED_CHECKPOINT, ignore_errors=True)
        checkpoint = Path(kept.to_directory(str(exp / SELECTED_CHECKPOINT)))
    diagnose_checkpoint(checkpoint)  # the selected model's decision-layer diagnostics, written beside it
    best = {
        "trial_id": best_row["trial_id"],
        "config": {k: v for k, v in best_result.config.items() if not _is_nan(v)},
        "validation": {k: float(v) for k, v in saved_metrics.items() if k.startswith("val/")},
        "best_epoch": int(saved_metrics["epoch"]),
        "test": evaluate_checkpoint(checkpoint, "test"),
        "checkpoint": str(checkpoint),
        "diagnostics": str(checkpoint / DIAGNOSTICS_JSON),
        "experiment": options.experiment_uri,
        "study": f"sqlite:///{exp / STUDY_FILE}",
    }
    (exp / BEST_JSON).write_text(json.dumps(best, indent=2, default=str))
    if options.remote:  # the bucket holds the whole record: study, summaries, best.json, diagnosed checkpoint
        import pyarrow.fs

        # One thread: pyarrow's threaded uploads to S3 can hang (apache/arrow#32372; Ray avoids them too).
        pyarrow.fs.copy_files(str(exp), options.experiment_uri, use_threads=False)
    print_best(best, space)
    return best


def _is_nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def print_best(best: dict, space: SearchSpace) -> None:
    searched = {p.name: best["config"].get(p.name) for p in space.params}
    fmt = lambda d: "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items())
    print("\n== mmray: best trial", best["trial_id"], f"(epoch {best['best_epoch']}, selected on {space.metric})")
    print("config     ", fmt(searched) or "(nothing searched)")
    print("validation ", fmt(best["validation"]))
    print("test       ", fmt(best["test"]))
    print("results    ", best["experiment"], f"({SUMMARY_CSV}, {SUMMARY_JSON}, {BEST_JSON}, {STUDY_FILE})", flush=True)
