"""Three ways to run the one training loop:

- `run_in_process`: in this process, for debugging and benchmarks (`mmray train`);
- `run_trial` with one worker: as a Ray Tune trial, the loop right in the trial (no Ray Train
  start-up cost);
- `run_trial` with N workers: the trial drives a Ray Train `TorchTrainer` whose workers each run
  `train_worker` under DDP.

Ray Data feeds all three through the same pipeline; each hands the loop a `report` that saves the
state as a checkpoint of its kind, and a saved state to resume from.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from mmray.data.manifest import load_manifest
from mmray.data.pipeline import DeviceDecode, RayDataSource, configure_data_context, load_splits, own_share
from mmray.errors import UserError
from mmray.train.checkpoint import KeepBestAndLast, load_state, save_state
from mmray.train.config import TrainConfig
from mmray.train.loop import Report, train
from mmray.train.resources import DATA_RESERVED_CPUS, WorkerResources
from mmray.train.telemetry import TrialGauges
from mmray.world import World


def start_local_ray(threads: int, worker_logs: bool = True) -> None:
    """A local Ray for runs in this process: the trainer's threads plus the CPU kept for Ray Data."""
    import ray

    ray.init(num_cpus=int(threads + DATA_RESERVED_CPUS), include_dashboard=False, logging_level="WARNING",
             log_to_driver=worker_logs)


def run_in_process(cfg: TrainConfig, out_dir: str | Path, threads: int = 1, quiet: bool = False) -> tuple[dict, Path]:
    """Train in this process; keep the best-on-validation checkpoint. Returns (last metrics, best folder)."""
    from mmray.data.registry import resolve_data_dir

    torch.set_num_threads(threads)
    configure_data_context()
    data_dir, manifest = resolve_data_dir(cfg.dataset, cfg.data_dir)
    cfg.data_dir = str(data_dir)
    out_dir = Path(out_dir)
    resume = load_state(out_dir / "last") if (out_dir / "last").exists() else None
    # Another run's folder: never overwrite it. Settings added to mmray since that run was saved take their
    # defaults, so a run saved by an older mmray still resumes.
    saved, given = (TrainConfig.from_flat(resume["config"]).to_flat() if resume else None), cfg.to_flat()
    if resume is not None and saved != given:
        changed = sorted(k for k in set(saved) | set(given) if saved.get(k) != given.get(k))
        raise UserError(f"{out_dir}: holds a run with other settings ({', '.join(changed)}); give the same "
                        "settings to resume it, or another --out")
    data = RayDataSource(load_splits(cfg.data_dir, manifest, decode_frames=cfg.decode_frames), cfg.batch_size,
                         cfg.seed, torch.device("cpu"), cfg.shuffle_buffer, device_decode(cfg, manifest))
    metrics = train(cfg, manifest, data, KeepBestAndLast(out_dir, echo=not quiet), World.current(), resume)
    return metrics, out_dir / "best"


@dataclass(frozen=True)
class TrialSettings:
    """What a trial needs beyond its hyperparameters: resources, where Train stores runs, what to select on."""
    resources: WorkerResources
    storage_path: str
    metric: str
    mode: str  # "max" | "min"
    worker_retries: int = 0  # restarts of a trial's Train run (from its last checkpoint) when a worker dies


def run_trial(config: dict, settings: TrialSettings, datasets: dict) -> None:
    """A Tune trial: the loop in the trial itself (1 worker) or a TorchTrainer over N workers.

    `datasets` ("train", "val") are opened once by the search driver and shared by every trial.
    """
    import ray.tune

    configure_data_context()
    for name in ("ray.tune", "ray.train"):  # no "checkpoint created" line per epoch in the progress output
        logging.getLogger(name).setLevel(logging.WARNING)
    resources = settings.resources
    if resources.workers > 1:
        _run_train_driver(config, settings, datasets)
        return

    torch.set_num_threads(resources.torch_threads)
    cfg = TrainConfig.from_flat(config)
    manifest = load_manifest(cfg.data_dir, verify=False)  # verified once by the search driver
    data = RayDataSource(datasets, cfg.batch_size, cfg.seed, resources.device, cfg.shuffle_buffer,
                         device_decode(cfg, manifest))
    report = checkpointing_report(ray.tune.report, ray.tune.Checkpoint, TrialGauges.for_tune_trial(cfg.method))
    train(cfg, manifest, data, report, World.current(resources.device), resumed_state(ray.tune.get_checkpoint()))


def _run_train_driver(config: dict, settings: TrialSettings, datasets: dict) -> None:
    import ray.train
    import ray.tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    resources = settings.resources
    whole = datasets.get("train_all", datasets["train"])  # load_splits' un-augmented train_all, if any
    shares = {f"train_all_{rank}": own_share(whole, rank, resources.workers) for rank in range(resources.workers)}
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"config": config, "threads": resources.torch_threads,
                           "gauge_tags": TrialGauges.for_tune_trial(TrainConfig.from_flat(config).method).tags},
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources.workers, use_gpu=bool(resources.gpus_per_worker),
            resources_per_worker=resources.worker_bundle()),
        datasets={"train": datasets["train"], "val": datasets["val"], **shares},
        # Each worker streams its own part of train; every worker sees all of validation; worker r
        # sweeps train_all_r, its own rows of train (gmm refits, aug's alpha).
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
        run_config=ray.train.RunConfig(
            # A name fixed by the trial id: a retried or resumed trial finds its Train run again.
            name=f"train-{ray.tune.get_context().get_trial_id()}",
            storage_path=settings.storage_path,
            callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(max_failures=settings.worker_retries),
            # Keeps the best checkpoint on the search metric (and always the latest, for resuming).
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=settings.metric, checkpoint_score_order=settings.mode),
        ),
    )
    trainer.fit()


def train_worker(loop_config: dict) -> None:
    """Runs on every Ray Train worker: the same loop, fed by this worker's data shard."""
    import ray.train

    configure_data_context()
    torch.set_num_threads(loop_config["threads"])
    cfg = TrainConfig.from_flat(loop_config["config"])
    manifest = load_manifest(cfg.data_dir, verify=False)
    world = World.current(ray.train.torch.get_device())
    shards = {"train": "train", "train_all": f"train_all_{world.rank}", "val": "val"}
    data = RayDataSource({name: ray.train.get_dataset_shard(shard) for name, shard in shards.items()},
                         cfg.batch_size, cfg.seed, world.device, cfg.shuffle_buffer, device_decode(cfg, manifest))
    # Rank 0's metrics and state are the run's (as Tune sees them); the others only report, a barrier.
    report = checkpointing_report(ray.train.report, ray.train.Checkpoint, TrialGauges(**loop_config["gauge_tags"]),
                                  saves=world.is_main)
    train(cfg, manifest, data, report, world, resumed_state(ray.train.get_checkpoint()))


def device_decode(cfg: TrainConfig, manifest) -> DeviceDecode | None:
    """What decodes the frames in the worker: nothing ("host", Ray Data did), or a `DeviceDecode`."""
    return DeviceDecode(manifest) if cfg.decode_frames == "device" else None


def resumed_state(checkpoint) -> dict | None:
    """The saved state in a Tune or Train checkpoint (a retried or resumed trial), or None for a fresh one."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return load_state(folder)


def checkpointing_report(ray_report, checkpoint_type, gauges: TrialGauges, saves: bool = True) -> Report:
    """The loop's `report` for a Tune trial (`ray.tune.report`) or a Train worker (`ray.train.report`):
    metrics to the dashboard gauges and to Ray, the state as a checkpoint of `checkpoint_type`."""
    def report(metrics: dict, state: dict) -> None:
        if not saves:
            ray_report(metrics)
            return
        gauges.set(metrics)  # live in the Ray dashboard and Prometheus
        with tempfile.TemporaryDirectory() as folder:
            save_state(state, folder)
            ray_report(metrics, checkpoint=checkpoint_type.from_directory(folder))
    return report
