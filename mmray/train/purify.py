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

from mmray.data.pipeline import RayDataSource, load_splits
from mmray.data.shards import read_column_by_index
from mmray.errors import UserError
from mmray.files import write_atomic
from mmray.methods.gmm import BalancedSelection
from mmray.train.checkpoint import KeepBestAndLast, find_checkpoint, load_state, open_checkpoint
from mmray.train.loop import train
from mmray.world import World

SPLITS = ("val", "test")  # reported before and after


def purify(run: str | Path, threshold: float | None = None, epochs: int | None = None,
           lr_factor: float = 0.1, threads: int = 1) -> dict:
    checkpoint = find_checkpoint(run)
    torch.set_num_threads(threads)
    saved = open_checkpoint(checkpoint, ("train", *SPLITS), verify=True)
    cfg, params = saved.cfg, saved.cfg.method_params
    if cfg.method != "gmm":
        raise UserError(f"{checkpoint}: purification needs a gmm run (its unimodal heads give the gaps), "
                        f"this one is {cfg.method!r}")
    threshold = params.purify_threshold if threshold is None else threshold
    epochs = (params.purify_epochs or 2) if epochs is None else epochs
    if not 0.0 < threshold < 1.0:
        raise UserError(f"--threshold: {threshold} must be between 0 and 1")
    out_dir = checkpoint.parent / f"purified-t{threshold:g}"
    if out_dir.exists():
        raise UserError(f"{out_dir}: already purified with this threshold (move it away to redo it)")

    before = _evaluate(saved)
    selection = saved.method.select_balanced(saved.network, threshold)  # the trained model's gaps, all of train
    sample_ids, corrupted = _train_metadata(cfg.data_dir, saved.manifest)

    # Fine-tune on the kept samples: warm-up loss only (plain CE terms), reduced learning rate.
    tuned_cfg = dataclasses.replace(
        cfg, epochs=epochs, lr=cfg.lr * lr_factor, lr_schedule="constant",
        method_params=dataclasses.replace(params, warmup_epochs=epochs, purify_epochs=0))
    tuned_data = RayDataSource(load_splits(cfg.data_dir, saved.manifest, ("train", "val"), keep_train=selection.kept),
                               cfg.batch_size, cfg.seed, torch.device("cpu"), cfg.shuffle_buffer)
    out_dir.mkdir(parents=True)
    _write_selection(out_dir, selection, sample_ids, corrupted)
    # Selection on validation includes the model before fine-tuning: `best` only appears if an epoch beats it.
    reporter = KeepBestAndLast(out_dir)
    reporter.best_score = before["val/fused_acc"]
    train(tuned_cfg, saved.manifest, tuned_data, reporter, World.current(), init_network=saved.state["network"])
    improved = (out_dir / "best").exists()
    if improved:
        saved.network.load_state_dict(load_state(out_dir / "best")["network"])
    after = _evaluate(saved) if improved else before

    summary = {
        "checkpoint": str(checkpoint), "threshold": threshold, "fine_tune_epochs": epochs,
        "fine_tune_lr": tuned_cfg.lr, "train_samples": int(len(selection.index)), "kept": int(len(selection.kept)),
        "kept_fraction": selection.kept_fraction, "fit": selection.fit, "before": before, "after": after,
        "fine_tuned_model_selected": improved,
        "output": str(out_dir),
    }
    if corrupted is not None and len(selection.dropped):
        dropped, index = selection.dropped, selection.index
        summary["dropped_precision_corrupted"] = float(corrupted[dropped].mean())
        summary["corrupted_recall"] = float(corrupted[dropped].sum() / max(corrupted[index].sum(), 1))
    write_atomic(out_dir / "purify.json", json.dumps(summary, indent=2))
    return summary


def _evaluate(saved) -> dict[str, float]:
    return {k: v for split in SPLITS for k, v in saved.evaluate(split).items()}


def _train_metadata(data_dir: str, manifest) -> tuple[np.ndarray, np.ndarray | None]:
    sample_ids = read_column_by_index(data_dir, manifest, "train", "sample_id")
    corrupted = None
    if "corrupted" in manifest.metadata_columns:
        corrupted = read_column_by_index(data_dir, manifest, "train", "corrupted") != "none"
    return sample_ids, corrupted


def _write_selection(out_dir: Path, selection: BalancedSelection, sample_ids, corrupted) -> None:
    (out_dir / "kept.json").write_text(json.dumps([sample_ids[i] for i in selection.kept]))
    position = {int(i): k for k, i in enumerate(selection.index)}
    with open(out_dir / "dropped.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sample_id", "index", "gap", "p_imbalanced"] + (["corrupted"] if corrupted is not None else []))
        for i in selection.dropped:
            k = position[int(i)]
            row = [sample_ids[i], int(i), f"{selection.gaps[k]:.6f}", f"{selection.p_imbalanced[k]:.6f}"]
            writer.writerow(row + ([bool(corrupted[i])] if corrupted is not None else []))
