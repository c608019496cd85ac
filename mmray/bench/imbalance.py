"""`mmray bench imbalance`: does synthetic-av show modality imbalance the way the papers describe?

For each seed, trains `joint`, `audio-only` and `visual-only` with the same settings and epochs
(in-process, through the one loop), selects each run's checkpoint on validation, and compares on
test:
- the joint model's visual half of the decision layer against the visual-only model: joint
  training under-trains vision when visual-half accuracy is clearly lower;
- joint fused accuracy against the two unimodal models fused by averaging their logits: joint
  training under-uses a modality when the unimodal ensemble is clearly better.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch


@torch.no_grad()
def checkpoint_logits(folder: Path, split: str) -> dict[str, torch.Tensor]:
    """Per-sample logits (fused, audio, visual) and labels of a saved run on one split."""
    from mmray.train.checkpoint import open_checkpoint

    saved = open_checkpoint(folder, (split,))
    method, network, data = saved.method, saved.network, saved.data
    parts: dict[str, list] = {"fused": [], "audio": [], "visual": [], "label": []}
    for batch in data.eval_batches(split):
        out, extras = network(batch.audio, batch.frames)
        for key, logits in method.predict(out, extras).items():
            parts[key].append(logits)
        parts["label"].append(batch.label)
    return {key: torch.cat(values) for key, values in parts.items()}


def accuracy(logits: torch.Tensor, label: torch.Tensor) -> float:
    return 100.0 * (logits.argmax(1) == label).float().mean().item()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmray bench imbalance", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--data-dir", help="a prepared synthetic-av folder (default: the cache)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", help="work folder (default: a temp folder)")
    args = parser.parse_args(argv)

    import ray

    from mmray.data.registry import resolve_data_dir
    from mmray.train.config import TrainConfig
    from mmray.train.launch import run_in_process, start_local_ray

    data_dir, _ = resolve_data_dir("synthetic-av", args.data_dir)
    out = Path(args.out or tempfile.mkdtemp(prefix="mmray-imbalance-"))
    start_local_ray(args.threads, worker_logs=False)
    columns = ("joint fused", "joint audio", "joint visual", "audio-only", "visual-only", "ensemble")
    rows = []
    for seed in range(args.seeds):
        test = {}
        for method in ("joint", "audio-only", "visual-only"):
            cfg = TrainConfig.from_flat({"method": method, "seed": seed, "epochs": args.epochs,
                                         "data_dir": str(data_dir)})
            _, best = run_in_process(cfg, out / f"{method}-seed{seed}", threads=args.threads, quiet=True)
            test[method] = checkpoint_logits(best, "test")
        label = test["joint"]["label"]
        ensemble = (test["audio-only"]["audio"] + test["visual-only"]["visual"]) / 2
        row = [accuracy(test["joint"]["fused"], label), accuracy(test["joint"]["audio"], label),
               accuracy(test["joint"]["visual"], label), accuracy(test["audio-only"]["audio"], label),
               accuracy(test["visual-only"]["visual"], label), accuracy(ensemble, label)]
        rows.append(row)
        print(f"seed {seed}: " + "  ".join(f"{c}={v:.1f}" for c, v in zip(columns, row)), flush=True)
    ray.shutdown()

    table = np.array(rows)
    print(f"\nmmray bench imbalance: synthetic-av, {args.epochs} epochs, {args.seeds} seeds, "
          f"test accuracy % (checkpoints selected on validation)")
    print("  " + "".join(f"{c:>15}" for c in ["seed"] + list(columns)))
    for seed, row in enumerate(rows):
        print("  " + f"{seed:>15}" + "".join(f"{v:>15.1f}" for v in row))
    mean, std = table.mean(0), table.std(0)
    print("  " + f"{'mean':>15}" + "".join(f"{m:>9.1f} +-{s:4.1f}" for m, s in zip(mean, std)))
    visual_gap = table[:, 4] - table[:, 2]
    fusion_gap = table[:, 5] - table[:, 0]
    print(f"\n  visual-only - joint's visual half : {visual_gap.mean():+.1f} points (min {visual_gap.min():+.1f})")
    print(f"  unimodal ensemble - joint fused   : {fusion_gap.mean():+.1f} points (min {fusion_gap.min():+.1f})")
    print(f"  runs in {out}")
    return 0
