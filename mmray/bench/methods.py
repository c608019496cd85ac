"""`mmray bench methods`: methods side by side on the same data, epochs and seeds.

Each (method, seed) trains in this process through the one training loop (Ray Data feeding it),
keeps its best-on-validation checkpoint, and is evaluated on validation and test. Prints every
run, the mean +- std over seeds of the fused and per-modality accuracies, and each method's
training seconds per epoch (its last epoch, evaluation excluded) relative to the first method's.

    mmray bench methods --methods joint gmm --seeds 3 --epochs 8 --set gmm:warmup_epochs=2
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from mmray.config import parse_assignment

COLUMNS = ("val/fused_acc", "test/fused_acc", "test/audio_acc", "test/visual_acc")
# A method's own state at the last epoch, printed next to its row (mean over seeds).
LAST_EPOCH_STATE = {"gmm/auroc_corrupted", "aug/heads_audio", "aug/heads_visual", "mmpareto/conflict_frac_audio",
                    "mmpareto/conflict_frac_visual", "mla/weight_audio", "reconboost/beta"}
EPOCH_SECONDS = "train/epoch_s"


def train_and_evaluate(method: str, seed: int, settings: dict, data_dir: str, out: Path,
                       threads: int) -> dict[str, float]:
    """Train one run in-process; the best-validation checkpoint's val and test metrics (+ its last epoch's)."""
    from mmray.train.checkpoint import evaluate_checkpoint
    from mmray.train.config import TrainConfig
    from mmray.train.launch import run_in_process

    cfg = TrainConfig.from_flat({**settings, "method": method, "seed": seed, "data_dir": data_dir})
    last, best = run_in_process(cfg, out / f"{method}-seed{seed}", threads=threads, quiet=True)
    return {**{k: v for k, v in last.items() if "/" in k and not k.startswith("val/")},
            **evaluate_checkpoint(best, "val"), **evaluate_checkpoint(best, "test")}


def parse_arguments(argv: list[str] | None, prog: str, description: str, methods: list[str]) -> argparse.Namespace:
    """The options of a bench that trains methods over seeds (`bench methods`, `bench decision`)."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=methods)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--dataset", default="synthetic-av")
    parser.add_argument("--data-dir")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--set", action="append", default=[], metavar="[METHOD:]KEY=VALUE",
                        help="a setting for every run, or only for METHOD's runs")
    parser.add_argument("--out", help="work folder (default: a temp folder)")
    return parser.parse_args(argv)


def train_runs(args: argparse.Namespace, out: Path):
    """Train every (method, seed) of the command line in turn under one local Ray.

    Yields (method, seed, metrics, run folder); `--set [METHOD:]KEY=VALUE` applies to every run or to METHOD's.
    """
    import ray

    from mmray.data.registry import resolve_data_dir
    from mmray.train.launch import start_local_ray

    data_dir, _ = resolve_data_dir(args.dataset, args.data_dir)
    start_local_ray(args.threads, worker_logs=False)
    try:
        for method in args.methods:
            settings = {"dataset": args.dataset, "epochs": args.epochs}
            for item in args.set:
                scope, _, assignment = item.rpartition(":")
                if scope in ("", method):
                    settings.update([parse_assignment(assignment)])
            for seed in range(args.seeds):
                metrics = train_and_evaluate(method, seed, settings, str(data_dir), out, args.threads)
                yield method, seed, metrics, out / f"{method}-seed{seed}"
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv, "mmray bench methods", __doc__, ["joint", "gmm"])
    out = Path(args.out or tempfile.mkdtemp(prefix="mmray-methods-"))
    rows = []
    for method, seed, metrics, _ in train_runs(args, out):
        rows.append((method, seed, metrics))
        shown = [*COLUMNS, *sorted(LAST_EPOCH_STATE & set(metrics))]
        print(f"{method:>12} seed {seed}  " + "  ".join(f"{c}={metrics[c]:.4f}" for c in shown), flush=True)

    print(f"\nmmray bench methods: {args.dataset}, {args.epochs} epochs, {args.seeds} seeds, "
          f"mean +- std (accuracy %), checkpoint selected on validation")
    print(f"{'method':>12}  " + "  ".join(f"{c:>16}" for c in COLUMNS))
    for method in args.methods:
        runs = [m for name, _, m in rows if name == method]
        cells = [f"{100 * np.mean([r[c] for r in runs]):7.2f} +- {100 * np.std([r[c] for r in runs]):5.2f}"
                 for c in COLUMNS]
        extra = sorted({k for r in runs for k in r} & LAST_EPOCH_STATE)
        extras = "  ".join(f"{k}={np.mean([r[k] for r in runs if k in r]):.3f}" for k in extra)
        print(f"{method:>12}  " + "  ".join(f"{c:>16}" for c in cells) + (f"  ({extras}, last epoch)" if extras else ""))
    seconds = {method: np.mean([m[EPOCH_SECONDS] for name, _, m in rows if name == method]) for method in args.methods}
    print(f"\ntraining seconds per epoch (last epoch, mean over seeds), relative to {args.methods[0]}")
    for method in args.methods:
        print(f"{method:>12}  {seconds[method]:7.2f} s  {seconds[method] / seconds[args.methods[0]]:5.2f}x")
    print(f"runs in {out}")
    return 0
