"""`mmray bench gpu`: does mmray keep a GPU as busy as a plain PyTorch loop does?

ResNet-18 audio-visual (joint training) on CREMA-D-shaped generated shards (6 classes, a
1 x 257 x 188 spectrogram and JPEG frames of 3 x 224 x 224 per clip), with bf16 autocast and
channels-last when a GPU is present. Samples per second, over the training epochs after the first:
- plain: a PyTorch loop over tensors in memory on the device (no Ray, no validation, no checkpoints);
- mmray trial: the loop a 1-worker Tune trial runs, fed by Ray Data (validation and a checkpoint
  every epoch included);
- Ray Train: the same loop on one Ray Train worker (`train_worker`);
- delivered: what Ray Data hands the worker when the worker does nothing else.
Targets: mmray / plain >= 0.95, delivered / consumed (plain) >= 1.5. `--tiny` runs small shapes
on CPU in about a minute, to check that it runs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmray bench gpu", description=__doc__)
    parser.add_argument("--clips", type=int, default=1024, help="training clips")
    parser.add_argument("--freq", type=int, default=257)
    parser.add_argument("--time", type=int, default=188)
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--image", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=4, help="torch threads of the worker")
    parser.add_argument("--tiny", action="store_true", help="small shapes (CPU check): 64 clips of 1x33x24, 32x32 frames")
    args = parser.parse_args(argv)
    if args.tiny:
        args.clips, args.freq, args.time, args.image, args.batch, args.epochs = 64, 33, 24, 32, 16, 2

    import ray
    import torch

    from mmray.data import synthetic
    from mmray.data.manifest import load_manifest
    from mmray.data.memory import InMemoryDataSource
    from mmray.data.source import Batch
    from mmray.data.pipeline import RayDataSource, configure_data_context, load_splits, own_share
    from mmray.train.config import TrainConfig
    from mmray.train.checkpoint import KeepBestAndLast
    from mmray.train.launch import start_local_ray, train_worker
    from mmray.train.loop import build_method_and_network, build_optimizer, train
    from mmray.world import World

    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="mmray-bench-gpu-"))
    data_dir = work / "data"
    synthetic.prepare(data_dir, synthetic.SyntheticConfig(
        num_classes=6, audio_distinct=5, sizes=(args.clips, max(args.batch, args.clips // 8), 8),
        freq_bins=args.freq, time_frames=args.time, frames=args.frames, image_size=args.image,
        max_shift=max(1, args.image // 8), frame_encoding="jpeg"))
    manifest = load_manifest(data_dir)
    flat = {"method": "joint", "dataset": "synthetic-av", "data_dir": str(data_dir), "model": "resnet18",
            "batch_size": args.batch, "epochs": args.epochs, "precision": "bf16" if gpu else "fp32",
            "channels_last": gpu}
    cfg = TrainConfig.from_flat(flat)
    timed = args.clips * (args.epochs - 1)  # every epoch but the first (warm-up: cuDNN, caches)

    # plain: tensors on the device, the bare step
    memory = InMemoryDataSource(data_dir, manifest, cfg.batch_size, cfg.seed, splits=("train",))
    method, network = build_method_and_network(cfg, manifest, memory, World.current(device))
    network = network.to(device, memory_format=torch.channels_last if gpu else torch.contiguous_format)
    optimizer = build_optimizer(cfg, network.parameters())
    batches = [Batch(b.audio.to(device), b.frames.to(device), b.label.to(device), b.index.to(device))
               for b in memory.train_batches(0)]
    start = None
    for epoch in range(args.epochs):
        if epoch == 1:
            if gpu:
                torch.cuda.synchronize()
            start = time.perf_counter()
        for batch in batches:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=gpu):
                out, extras = network(batch.audio, batch.frames)
                loss = method.loss(out, extras, batch, epoch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    if gpu:
        torch.cuda.synchronize()
    plain = timed / (time.perf_counter() - start)

    start_local_ray(args.threads, worker_logs=False)
    configure_data_context()

    # delivered: Ray Data alone, from the object-store cache (what splits of this size use)
    source = RayDataSource(load_splits(str(data_dir), manifest, ("train",)), cfg.batch_size, cfg.seed, device)
    rates = []
    for epoch in range(args.epochs):
        t0, n = time.perf_counter(), 0
        for batch in source.train_batches(epoch):
            n += len(batch.label)
        rates.append(n / (time.perf_counter() - t0))
    delivered = min(rates[1:])

    # mmray trial: the loop a 1-worker trial runs, fed by Ray Data, saving a checkpoint every epoch
    saves, reported = KeepBestAndLast(work / "trial"), []

    def report(metrics, state):
        saves(metrics, state)
        reported.append(time.perf_counter())
    train(cfg, manifest, RayDataSource(load_splits(str(data_dir), manifest), cfg.batch_size, cfg.seed, device),
          report, World.current(device))
    trial = timed / (reported[-1] - reported[0])

    # Ray Train: one worker running train_worker
    import ray.train
    from ray.train.torch import TorchTrainer
    datasets = load_splits(str(data_dir), manifest)
    t0 = time.perf_counter()
    result = TorchTrainer(
        train_worker,
        train_loop_config={"config": flat, "threads": args.threads,
                           "gauge_tags": {"experiment": "bench", "trial": "gpu", "method": "joint"}},
        scaling_config=ray.train.ScalingConfig(num_workers=1, use_gpu=gpu,
                                               resources_per_worker={"CPU": args.threads}),
        datasets={"train": datasets["train"], "val": datasets["val"], "train_all_0": own_share(datasets["train"], 0, 1)},
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
        run_config=ray.train.RunConfig(storage_path=str(work / "train"), name="bench-gpu"),
    ).fit()
    train_s = result.metrics_dataframe["train/epoch_s"].tolist()  # each epoch's training time, as the loop reports it
    ray_train = timed / sum(train_s[1:])
    ray.shutdown()

    where = torch.cuda.get_device_name() if gpu else "CPU (no GPU: fp32, no channels-last)"
    print(f"\nmmray bench gpu: ResNet-18 joint, {args.clips} clips of audio 1x{args.freq}x{args.time} and "
          f"{args.frames} JPEG frames 3x{args.image}x{args.image}, batch {args.batch}, on {where}")
    print(f"  plain PyTorch loop, in memory   {plain:9.1f} samples/s")
    print(f"  mmray trial (1 worker)          {trial:9.1f} samples/s  (validation and checkpoint per epoch)")
    print(f"  Ray Train (1 worker)            {ray_train:9.1f} samples/s")
    print(f"  delivered by Ray Data           {delivered:9.1f} samples/s")
    print(f"  ratio mmray / plain             {trial / plain:9.2f} x   (target >= 0.95)")
    print(f"  ratio Ray Train / plain         {ray_train / plain:9.2f} x")
    print(f"  ratio delivered / consumed      {delivered / plain:9.2f} x   (target >= 1.5)")
    return 0

