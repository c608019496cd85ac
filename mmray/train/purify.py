"""Data purification for `gmm`: drop what a trained model finds imbalanced, fine-tune on the rest.

With a trained gmm checkpoint: recompute every training sample's modality gap, refit the mixture,
keep the samples with P(balanced) > threshold, write the kept sample ids (and the dropped ones
with their posteriors) next to the run, then fine-tune on the kept subset, through the same Ray
Data path filtered to those samples, with the warm-up's plain cross-entropy terms (no adaptive
loss) at a reduced learning rate. Reports the kept fraction and accuracy before and after.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from mmray.data.manifest import load_manifest
from mmray.data.pipeline import RayDataSource, configure_data_context, load_splits
from mmray.data.shards import read_column_by_index
from mmray.errors import UserError
from mmray.train.checkpoint import STATE_FILE, KeepBestAndLast, load_state
from mmray.train.config import TrainConfig
from mmray.train.loop import build_method_and_network, evaluate, train
from mmray.world import World

BEST_JSON = "best.json"  # written by a search into its experiment folder


def find_checkpoint(run: str | Path) -> Path:
    """A checkpoint folder, or a search's experiment folder (its selected checkpoint)."""
    run = Path(run).expanduser()
    if (run / STATE_FILE).is_file():
        return run
    if (run / BEST_JSON).is_file():
        return Path(json.loads((run / BEST_JSON).read_text())["checkpoint"])
    raise UserError(f"{run}: neither a checkpoint (no {STATE_FILE}) nor an experiment folder (no {BEST_JSON})")


def _evaluate(network, method, data, manifest, splits=("val", "test")) -> dict[str, float]:
    out = {}
    for split in splits:
        out.update(evaluate(network, method, data.eval_batches(split), manifest.num_classes, split))
    return out


def purify(run: str | Path, threshold: float | None = None, epochs: int | None = None,
           lr_factor: float = 0.1, threads: int = 1) -> dict:
    checkpoint = find_checkpoint(run)
    state = load_state(checkpoint)
    cfg = TrainConfig.from_flat(state["config"])
    if cfg.method != "gmm":
        raise UserError(f"{checkpoint}: purification needs a gmm run (its unimodal heads give the gaps), "
                        f"this one is {cfg.method!r}")
    params = cfg.method_params
    threshold = params.purify_threshold if threshold is None else threshold
    epochs = (params.purify_epochs or 2) if epochs is None else epochs
    if not 0.0 < threshold < 1.0:
        raise UserError(f"--threshold: {threshold} must be between 0 and 1")
    out_dir = checkpoint.parent / f"purified-t{threshold:g}"
    if out_dir.exists():
        raise UserError(f"{out_dir}: already purified with this threshold (move it away to redo it)")

    torch.set_num_threads(threads)
    configure_data_context()
    manifest = load_manifest(cfg.data_dir)
    world = World.current()
    splits = ("train", "val", "test")
    data = RayDataSource(load_splits(cfg.data_dir, manifest, splits), cfg.batch_size, cfg.seed,
                         torch.device("cpu"), cfg.shuffle_buffer)
    method, network = build_method_and_network(cfg, manifest, data, world)
    network.load_state_dict(state["network"])
    method.load_state_dict(state["method"])
    before = _evaluate(network, method, data, manifest)

    fit = method.refit(network)  # the gaps of the trained model, over all of train
    r = method.posteriors.numpy()
    index = np.flatnonzero(~np.isnan(r))
    kept = index[(1.0 - r[index]) > threshold]
    dropped = np.setdiff1d(index, kept)
    sample_ids, corrupted = _train_metadata(cfg.data_dir, manifest)

    # Fine-tune on the kept samples: warm-up loss only (plain CE terms), reduced learning rate.
    tuned_cfg = dataclasses.replace(
        cfg, epochs=epochs, lr=cfg.lr * lr_factor, lr_schedule="constant",
        method_params=dataclasses.replace(params, warmup_epochs=epochs, purify_epochs=0))
    tuned_data = RayDataSource(load_splits(cfg.data_dir, manifest, ("train", "val"), keep_train=kept),
                               cfg.batch_size, cfg.seed, torch.device("cpu"), cfg.shuffle_buffer)
    out_dir.mkdir(parents=True)
    _write_selection(out_dir, kept, dropped, r, sample_ids, corrupted, method.last_gaps, index)
    # Selection on validation includes the model before fine-tuning: `best` only appears if an epoch beats it.
    reporter = KeepBestAndLast(out_dir)
    reporter.best_score = before["val/fused_acc"]
    train(tuned_cfg, manifest, tuned_data, reporter, world, init_network=state["network"])
    improved = (out_dir / "best").exists()
    if improved:
        network.load_state_dict(load_state(out_dir / "best")["network"])
    after = _evaluate(network, method, data, manifest) if improved else before

    summary = {
        "checkpoint": str(checkpoint), "threshold": threshold, "fine_tune_epochs": epochs,
        "fine_tune_lr": tuned_cfg.lr, "train_samples": int(len(index)), "kept": int(len(kept)),
        "kept_fraction": len(kept) / len(index), "fit": fit, "before": before, "after": after,
        "fine_tuned_model_selected": improved,
        "output": str(out_dir),
    }
    if corrupted is not None and len(dropped):
        summary["dropped_precision_corrupted"] = float(corrupted[dropped].mean())
        summary["corrupted_recall"] = float(corrupted[dropped].sum() / max(corrupted[index].sum(), 1))
    (out_dir / "purify.json").write_text(json.dumps(summary, indent=2))
    return summary


def _train_metadata(data_dir: str, manifest) -> tuple[np.ndarray, np.ndarray | None]:
    sample_ids = read_column_by_index(data_dir, manifest, "train", "sample_id")
    corrupted = None
    if "corrupted" in manifest.metadata_columns:
        corrupted = read_column_by_index(data_dir, manifest, "train", "corrupted") != "none"
    return sample_ids, corrupted


def _write_selection(out_dir: Path, kept, dropped, r, sample_ids, corrupted, gaps, index) -> None:
    (out_dir / "kept.json").write_text(json.dumps([sample_ids[i] for i in kept]))
    gap_of = dict(zip(index.tolist(), gaps.tolist()))
    with open(out_dir / "dropped.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sample_id", "index", "gap", "p_imbalanced"] + (["corrupted"] if corrupted is not None else []))
        for i in dropped:
            row = [sample_ids[i], int(i), f"{gap_of[int(i)]:.6f}", f"{r[i]:.6f}"]
            writer.writerow(row + ([bool(corrupted[i])] if corrupted is not None else []))
