"""What every real-data preset takes and does: typed options, and plan -> Ray tasks -> shards.

A preset module holds its options (a subclass of `RawOptions`, for what only it reads) and a
`plan(root, options, class_names) -> Plan` decorated with `@preset(name, Options, defaults)`,
which registers the dataset (mmray/data/registry.py) with `prepare_preset` as its prepare.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal

from mmray.config import require
from mmray.data.registry import register
from mmray.errors import UserError

if TYPE_CHECKING:
    from mmray.data.manifest import Manifest

# Options that override the preset's audio recipe -> the AudioRecipe field each sets.
RECIPE_OPTIONS = {"audio_recipe": "kind", "sample_rate": "sample_rate", "audio_seconds": "seconds", "n_fft": "n_fft",
                  "hop": "hop", "mel_bins": "mel_bins", "audio_frames": "frames", "zscore": "zscore"}


@dataclass(frozen=True)
class RawOptions:
    """Options of every real-data preset; each is the `mmray prepare` flag of the same name
    (`--val-fraction` for `val_fraction`). None: the preset's default, or none given."""

    # The raw files and their splits.
    root: str | None = None  # the raw dataset folder (manifest: the CSV file or its folder); required
    seed: int = 0
    classes: str | None = None  # a class list file, one name per line
    train_list: str | None = None
    val_list: str | None = None
    test_list: str | None = None
    val_fraction: float = 0.1  # carved from train where the dataset has no validation split
    test_fraction: float = 0.1  # where no list gives a test split
    # The audio recipe (docs/datasets.md); None keeps the preset's.
    audio_recipe: Literal["stft", "fbank"] | None = None
    sample_rate: int | None = None
    audio_seconds: float | None = None
    n_fft: int | None = None
    hop: int | None = None
    mel_bins: int | None = None
    audio_frames: int | None = None
    zscore: bool | None = None
    audio_dtype: Literal["float16", "float32"] = "float16"
    min_seconds: float = 0.5  # shorter audio is skipped
    # Frames.
    frames_per_clip: int | None = None
    fps: float | None = None
    image_size: int = 224
    frame_encoding: Literal["raw", "jpeg"] = "jpeg"
    no_augment: bool = False  # no random crop/flip of train frames in training
    # The shards, and where the work runs.
    rows_per_shard: int = 256
    max_skipped: float = 0.05  # fail when more than this fraction of clips is skipped
    workers: int | None = None  # CPUs of the local Ray started for this (default: all cores)
    address: str | None = None  # a Ray cluster instead (auto, or host:port)
    quiet: bool = False  # no progress bar

    def __post_init__(self):
        for key in ("max_skipped", "val_fraction", "test_fraction"):
            require(0 <= getattr(self, key) < 1, key, getattr(self, key), "is not in [0, 1)")
        # Checked here, at the door: a zero would otherwise fail in every Ray task, one clip at a time.
        for key in ("rows_per_shard", "image_size", "sample_rate", "n_fft", "hop", "mel_bins", "audio_frames",
                    "frames_per_clip", "workers"):
            value = getattr(self, key)
            require(value is None or value >= 1, key, value, "must be at least 1")
        for key in ("audio_seconds", "fps"):
            value = getattr(self, key)
            require(value is None or value > 0, key, value, "must be positive")
        require(self.min_seconds >= 0, "min_seconds", self.min_seconds, "must not be negative")


def preset(name: str, options: type, defaults: dict):
    """Decorator over a preset's `plan`: registers dataset `name`, prepared by `prepare_preset`.
    `defaults` holds the preset's audio recipe and its frames per clip and fps."""
    def add(plan: Callable):
        register(name, options)(functools.partial(prepare_preset, name, plan, defaults))
        return plan
    return add


def prepare_preset(name: str, plan: Callable, defaults: dict, out: str | Path, options: RawOptions,
                   force: bool = False) -> "Manifest":
    """Plan the preset, start or join Ray, write the shards."""
    import ray

    from mmray.data.prepare.audio import AudioRecipe
    from mmray.data.prepare.writer import ClipSettings, write_dataset
    from mmray.data.shards import check_output_folder

    if not options.root:
        raise UserError(f"mmray prepare {name}: give --root (the raw dataset folder)")
    root = Path(options.root).expanduser().resolve()
    if not root.exists():
        raise UserError(f"{root}: no such folder")
    out = Path(out).expanduser().resolve()
    check_output_folder(out, force)  # before planning and before Ray starts
    clips = plan(root, options, _class_list(options.classes))
    given = {field: getattr(options, key) for key, field in RECIPE_OPTIONS.items() if getattr(options, key) is not None}
    recipe = AudioRecipe(**{**defaults["recipe"], **given})
    settings = ClipSettings(
        recipe=recipe, frames=options.frames_per_clip or defaults["frames"], fps=options.fps or defaults["fps"],
        image_size=options.image_size, frame_encoding=options.frame_encoding, audio_dtype=options.audio_dtype,
        min_seconds=options.min_seconds)
    augmentation = None if options.no_augment else {"crop_min_area": 0.5, "horizontal_flip": True}
    started = not ray.is_initialized()
    if started:
        ray.init(address=options.address or "local",
                 num_cpus=None if options.address else (options.workers or os.cpu_count()),
                 include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        return write_dataset(clips, settings, out, rows_per_shard=options.rows_per_shard,
                             max_skipped=options.max_skipped, force=force, progress=not options.quiet,
                             preprocessing={"preset": name, "root": str(root), "seed": options.seed,
                                            "train_augmentation": augmentation})
    finally:
        if started:
            ray.shutdown()


def _class_list(path: str | None) -> list[str] | None:
    if path is None:
        return None
    from mmray.data.prepare.plan import read_text  # numpy: not when `mmray --help` imports this module

    names = [line.strip() for line in read_text(Path(path)).splitlines() if line.strip()]
    if len(names) < 2 or len(set(names)) != len(names):
        raise UserError(f"{path}: a class list needs at least 2 distinct names, one per line")
    return names
