"""`mmray prepare cremad | ave | kinetics-sounds | manifest`: raw datasets -> streamable shards.

A preset reads its dataset's layout and split files into a plan (mmray/data/prepare/plan.py);
the shard writer (writer.py) decodes every clip in parallel Ray tasks, skips and names bad
clips, and writes the Parquet shards and manifest that training streams (docs/datasets.md).
This module holds only the command-line options, so `mmray --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from mmray.errors import UserError

if TYPE_CHECKING:
    from mmray.data.manifest import Manifest

PRESETS = {"cremad": "cremad", "ave": "ave", "kinetics-sounds": "kinetics_sounds", "manifest": "csv_manifest"}
RECIPE_OPTIONS = ("kind", "sample_rate", "seconds", "n_fft", "hop", "mel_bins", "frames", "zscore")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `mmray prepare` for the real-data presets (defaults: each preset's recipe)."""
    g = p.add_argument_group("real datasets (cremad, ave, kinetics-sounds, manifest)")
    g.add_argument("--root", help="the raw dataset folder (manifest: the CSV file or its folder)")
    g.add_argument("--workers", type=int, help="CPUs of the local Ray started for this (default: all cores)")
    g.add_argument("--address", help="run on a Ray cluster (auto, or host:port); the raw files must be readable "
                                     "at the same path on every node")
    g.add_argument("--rows-per-shard", type=int, default=256, help="clips per Parquet shard (default: %(default)s)")
    g.add_argument("--max-skipped", type=float, default=0.05,
                   help="fail when more than this fraction of clips is skipped (default: %(default)s)")
    g.add_argument("--val-fraction", type=float, default=0.1,
                   help="validation carved from train where the dataset has none (default: %(default)s)")
    g.add_argument("--test-fraction", type=float, default=0.1, help="test split where no list gives one")
    g.add_argument("--classes", help="class list file, one name per line (default: the preset's, or the labels found)")
    for split in ("train", "val", "test"):
        g.add_argument(f"--{split}-list", help=f"the {split} split file (default: the dataset's usual name)")
    g.add_argument("--speaker-disjoint", action="store_true", help="cremad without lists: no actor in two splits")
    g.add_argument("--video-source", choices=["frames", "video"],
                   help="cremad: Image-01-FPS frame folders or VideoFlash videos (default: frames if present)")
    g.add_argument("--event-window", action="store_true", help="ave: audio of the annotated event only")
    g.add_argument("--name", help="manifest: the dataset name (default: the CSV file's name)")
    a = p.add_argument_group("audio recipe (docs/datasets.md)")
    a.add_argument("--audio-recipe", dest="kind", choices=["stft", "fbank"])
    a.add_argument("--sample-rate", type=int)
    a.add_argument("--audio-seconds", dest="seconds", type=float, help="stft: seconds analysed (tiled if shorter)")
    a.add_argument("--n-fft", type=int)
    a.add_argument("--hop", type=int, help="stft hop in samples")
    a.add_argument("--mel-bins", type=int, help="fbank mel bins")
    a.add_argument("--audio-frames", dest="frames", type=int, help="fbank: time frames after padding/cropping")
    a.add_argument("--zscore", action=argparse.BooleanOptionalAction, help="per-clip z-score of the spectrogram")
    a.add_argument("--audio-dtype", choices=["float16", "float32"], default="float16")
    a.add_argument("--min-seconds", type=float, default=0.5, help="shorter audio is skipped (default: %(default)s)")
    v = p.add_argument_group("frames")
    v.add_argument("--frames-per-clip", type=int, help="frames kept per clip")
    v.add_argument("--fps", type=float, help="rate at which frames are sampled from a video")
    v.add_argument("--image-size", type=int, default=224, help="frames are resized to this square (default: 224)")
    v.add_argument("--no-augment", action="store_true", help="no random crop/flip of train frames in training")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> "Manifest":
    """Plan the preset, start or join Ray, write the shards."""
    import ray

    from mmray.data.prepare.audio import AudioRecipe
    from mmray.data.prepare.writer import ClipSettings, write_dataset

    preset = importlib.import_module(f"mmray.data.prepare.{PRESETS[args.dataset]}")
    if not args.root:
        raise UserError(f"mmray prepare {args.dataset}: give --root (the raw dataset folder)")
    root = Path(args.root).expanduser().resolve()
    if not root.exists():
        raise UserError(f"{root}: no such folder")
    for name in ("max_skipped", "val_fraction", "test_fraction"):
        if not 0 <= getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')}: {getattr(args, name)} is not in [0, 1)")
    plan = preset.plan(root, args, _class_list(args.classes))
    recipe = AudioRecipe(**{**preset.DEFAULTS["recipe"],
                            **{k: getattr(args, k) for k in RECIPE_OPTIONS if getattr(args, k) is not None}})
    settings = ClipSettings(
        recipe=recipe, frames=args.frames_per_clip or preset.DEFAULTS["frames"], fps=args.fps or preset.DEFAULTS["fps"],
        image_size=args.image_size, frame_encoding=args.frame_encoding or "jpeg", audio_dtype=args.audio_dtype,
        min_seconds=args.min_seconds)
    augmentation = None if args.no_augment else {"crop_min_area": 0.5, "horizontal_flip": True}
    started = not ray.is_initialized()
    if started:
        ray.init(address=args.address or "local", num_cpus=None if args.address else (args.workers or os.cpu_count()),
                 include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        return write_dataset(plan, settings, Path(args.out).expanduser(), rows_per_shard=args.rows_per_shard,
                             max_skipped=args.max_skipped, force=args.force, progress=not args.quiet,
                             preprocessing={"preset": args.dataset, "root": str(root), "seed": args.seed,
                                            "train_augmentation": augmentation})
    finally:
        if started:
            ray.shutdown()


def _class_list(path: str | None) -> list[str] | None:
    if path is None:
        return None
    from mmray.data.prepare.plan import read_text

    names = [line.strip() for line in read_text(Path(path)).splitlines() if line.strip()]
    if len(names) < 2 or len(set(names)) != len(names):
        raise UserError(f"{path}: a class list needs at least 2 distinct names, one per line")
    return names
