"""`mmray prepare cremad | ave | kinetics-sounds | manifest`: raw datasets -> streamable shards.

A preset (cremad.py, ...) reads its dataset's layout and split files into a plan (plan.py), given
its typed options (preset.py); the shard writer (writer.py) decodes every clip in parallel Ray
tasks, skips and names bad clips, and writes the Parquet shards and manifest that training
streams (docs/datasets.md). Each preset is an entry of the dataset registry (mmray/data/registry.py).
This module holds only the command-line flags, so `mmray --help` stays fast; each flag sets the
option of the same name (mmray/data/prepare/preset.py), whose defaults the flags leave alone.
"""

from __future__ import annotations

import argparse

from mmray.data.prepare.preset import RawOptions as O


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `mmray prepare` for the real-data presets (defaults: each preset's recipe)."""
    g = p.add_argument_group("real datasets (cremad, ave, kinetics-sounds, manifest)")
    g.add_argument("--root", help="the raw dataset folder (manifest: the CSV file or its folder)")
    g.add_argument("--workers", type=int, help="CPUs of the local Ray started for this (default: all cores)")
    g.add_argument("--address", help="run on a Ray cluster (auto, or host:port); the raw files must be readable "
                                     "at the same path on every node")
    g.add_argument("--rows-per-shard", type=int, help=f"clips per Parquet shard (default: {O.rows_per_shard})")
    g.add_argument("--max-skipped", type=float,
                   help=f"fail when more than this fraction of clips is skipped (default: {O.max_skipped})")
    g.add_argument("--val-fraction", type=float,
                   help=f"validation carved from train where the dataset has none (default: {O.val_fraction})")
    g.add_argument("--test-fraction", type=float, help="test split where no list gives one")
    g.add_argument("--classes", help="class list file, one name per line (default: the preset's, or the labels found)")
    for split in ("train", "val", "test"):
        g.add_argument(f"--{split}-list", help=f"the {split} split file (default: the dataset's usual name)")
    g.add_argument("--speaker-disjoint", action="store_true", help="cremad without lists: no actor in two splits")
    g.add_argument("--video-source", choices=["frames", "video"],
                   help="cremad: Image-01-FPS frame folders or VideoFlash videos (default: frames if present)")
    g.add_argument("--event-window", action="store_true", help="ave: audio of the annotated event only")
    g.add_argument("--name", help="manifest: the dataset name (default: the CSV file's name)")
    a = p.add_argument_group("audio recipe (docs/datasets.md)")
    a.add_argument("--audio-recipe", choices=["stft", "fbank"])
    a.add_argument("--sample-rate", type=int)
    a.add_argument("--audio-seconds", type=float, help="stft: seconds analysed (tiled if shorter)")
    a.add_argument("--n-fft", type=int)
    a.add_argument("--hop", type=int, help="stft hop in samples")
    a.add_argument("--mel-bins", type=int, help="fbank mel bins")
    a.add_argument("--audio-frames", type=int, help="fbank: time frames after padding/cropping")
    a.add_argument("--zscore", action=argparse.BooleanOptionalAction, help="per-clip z-score of the spectrogram")
    a.add_argument("--audio-dtype", choices=["float16", "float32"], help=f"default: {O.audio_dtype}")
    a.add_argument("--min-seconds", type=float, help=f"shorter audio is skipped (default: {O.min_seconds})")
    v = p.add_argument_group("frames")
    v.add_argument("--frames-per-clip", type=int, help="frames kept per clip")
    v.add_argument("--fps", type=float, help="rate at which frames are sampled from a video")
    v.add_argument("--image-size", type=int, help=f"frames are resized to this square (default: {O.image_size})")
    v.add_argument("--no-augment", action="store_true", help="no random crop/flip of train frames in training")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
