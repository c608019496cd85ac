"""Three ways to run the one training loop:

- `run_in_process`: in this process, for debugging (`mmray train`);
- `run_trial`: as a Ray Tune trial. With one worker the loop runs right in the trial (no Ray Train
  start-up cost); with N workers the trial drives a Ray Train `TorchTrainer` whose workers run
  `train_worker` under DDP.

Ray Data feeds all three through the same pipeline.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from mmray.data.manifest import load_manifest
from mmray.data.pipeline import RayDataSource, configure_data_context, load_splits, open_split
from mmray.train.checkpoint import KeepBestAndLast, load_state, save_state
from mmray.train.config import TrainConfig
from mmray.train.loop import train
from mmray.train.telemetry import TrialGauges
from mmray.world import World

# CPUs that no trial and no Train worker may reserve, so Ray Data can always run. Ray Data
# schedules its tasks outside the trials' placement groups, and its file-listing task needs a
# whole CPU: if trials and workers hold every CPU, the pipeline (and so the trial) waits forever.
DATA_RESERVED_CPUS = 1.0
# A trial that only drives a Ray Train run holds no CPU, only a little memory (a placement-group
# bundle cannot be empty): its CPUs are the Train workers'.
DRIVER_BUNDLE = {"memory": 256 * 1024**2}


@dataclass(frozen=True)
class WorkerResources:
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0

    @property
    def torch_threads(self) -> int:
        return max(1, int(self.cpus_per_worker))

    def trial_bundles(self) -> list[dict]:
        """The trial's own placement group. With N workers Ray Train reserves the workers separately."""
        if self.workers > 1:
            return [dict(DRIVER_BUNDLE)]
        own = {"CPU": self.cpus_per_worker}
        if self.gpus_per_worker:
            own["GPU"] = self.gpus_per_worker
        return [own]

    def cpus_per_trial(self) -> float:
        if self.workers > 1:
            return self.workers * self.cpus_per_worker
        return self.cpus_per_worker


def device_for(resources: WorkerResources) -> torch.device:
    return torch.device("cuda") if resources.gpus_per_worker and torch.cuda.is_available() else torch.device("cpu")


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
    data = RayDataSource(load_splits(cfg.data_dir, manifest), cfg.batch_size, cfg.seed, torch.device("cpu"),
                         cfg.shuffle_buffer)
    resume = load_state(out_dir / "last") if (out_dir / "last").exists() else None
    metrics = train(cfg, manifest, data, KeepBestAndLast(out_dir, echo=not quiet), World.current(), resume)
    return metrics, out_dir / "best"


@dataclass(frozen=True)
class TrialSettings:
    """What a trial needs beyond its hyperparameters: resources, where Train stores runs, what to select on."""
    resources: WorkerResources
    storage_path: str
    metric: str
    mode: str  # "max" | "min"


def run_trial(config: dict, settings: TrialSettings, datasets: dict) -> None:
    """A Tune trial: the loop in the trial itself (1 worker) or a TorchTrainer over N workers.

    `datasets` ("train", "val") are opened once by the search driver and shared by every trial.
    """
    import ray.tune

    configure_data_context()
    for name in ("ray.tune", "ray.train"):  # no "checkpoint created" line per epoch in the progress output
        logging.getLogger(name).setLevel(logging.WARNING)
    cfg = TrainConfig.from_flat(config)
    manifest = load_manifest(cfg.data_dir, verify=False)  # verified once by the search driver
    resources = settings.resources
    if resources.workers > 1:
        _run_train_driver(config, settings, datasets)
        return

    torch.set_num_threads(resources.torch_threads)
    device = device_for(resources)
    data = RayDataSource(datasets, cfg.batch_size, cfg.seed, device, cfg.shuffle_buffer)
    checkpoint = ray.tune.get_checkpoint()
    resume = None
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume = load_state(folder)

    gauges = TrialGauges.for_tune_trial(cfg.method)

    def report(metrics: dict, state: dict) -> None:
        gauges.set(metrics)  # live in the Ray dashboard and Prometheus
        with tempfile.TemporaryDirectory() as folder:
            save_state(state, folder)
            ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(folder))

    train(cfg, manifest, data, report, World.current(device), resume)


def _run_train_driver(config: dict, settings: TrialSettings, datasets: dict) -> None:
    import ray.train
    import ray.tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    resources = settings.resources
    worker_resources = {"CPU": resources.cpus_per_worker}
    if resources.gpus_per_worker:
        worker_resources["GPU"] = resources.gpus_per_worker
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"config": config, "threads": resources.torch_threads,
                           "gauge_tags": TrialGauges.for_tune_trial(TrainConfig.from_flat(config).method).tags},
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources.workers, use_gpu=bool(resources.gpus_per_worker),
            resources_per_worker=worker_resources),
        datasets={"train_all": datasets["train"], **datasets},  # load_splits' un-augmented train_all wins
        # Each worker streams its own part of train; every worker sees all of validation.
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
        run_config=ray.train.RunConfig(
            # A name fixed by the trial id: a retried or resumed trial finds its Train run again.
            name=f"train-{ray.tune.get_context().get_trial_id()}",
            storage_path=settings.storage_path,
            callbacks=[TuneReportCallback()],
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
    device = ray.train.torch.get_device()
    world = World.current(device)
    data = RayDataSource({name: ray.train.get_dataset_shard(name) for name in ("train", "train_all", "val")},
                         cfg.batch_size, cfg.seed, device, cfg.shuffle_buffer, world.rank, world.size)
    checkpoint = ray.train.get_checkpoint()
    resume = None
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume = load_state(folder)

    gauges = TrialGauges(**loop_config["gauge_tags"])

    def report(metrics: dict, state: dict) -> None:
        if world.is_main:
            gauges.set(metrics)  # rank 0's metrics, as Tune sees them
            with tempfile.TemporaryDirectory() as folder:
                save_state(state, folder)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
        else:
            ray.train.report(metrics)  # a barrier: every rank reports every epoch

    train(cfg, manifest, data, report, world, resume)


def open_checkpoint(folder: str | Path, splits: tuple[str, ...]):
    """A saved run, rebuilt for evaluation: (method, network in eval mode, data source over `splits`, manifest)."""
    from mmray.train.loop import build_method_and_network

    configure_data_context()
    state = load_state(folder)
    cfg = TrainConfig.from_flat(state["config"])
    manifest = load_manifest(cfg.data_dir, verify=False)
    device = torch.device("cpu")
    data = RayDataSource({s: open_split(cfg.data_dir, manifest, s) for s in splits}, cfg.batch_size, cfg.seed, device)
    method, network = build_method_and_network(cfg, manifest, data, World.current(device))
    network.load_state_dict(state["network"])
    method.load_state_dict(state["method"])
    return method, network.eval(), data, manifest


def evaluate_checkpoint(folder: str | Path, split: str) -> dict[str, float]:
    """Metrics of a saved checkpoint on one split (run once, after selection on validation)."""
    from mmray.train.loop import evaluate

    method, network, data, manifest = open_checkpoint(folder, (split,))
    return evaluate(network, method, data.eval_batches(split), manifest.num_classes, split)
