"""What a preset hands the shard writer: every clip with its split, label and files.

A preset (CREMA-D, AVE, Kinetics-Sounds, a CSV manifest) reads the raw layout and its split
files into a `Plan`. Clips that are bad before anything is decoded (a missing file, a label not
in the class list) are already `skipped` here, with the reason; the writer adds the ones that
fail to decode.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmray.errors import UserError


@dataclass(frozen=True)
class Clip:
    sample_id: str
    label: int
    split: str  # train | val | test
    audio: str | None = None  # an audio file; None: the video's audio track
    video: str | None = None  # a video file (frames decoded at the chosen fps)
    frames_dir: str | None = None  # or a folder of frame images
    start: float | None = None  # an audio window in seconds (AVE's annotated event), else the whole clip
    end: float | None = None


@dataclass
class Plan:
    dataset: str
    class_names: list[str]
    clips: list[Clip]
    skipped: list[dict] = field(default_factory=list)  # {"sample_id", "split", "reason"}
    notes: list[str] = field(default_factory=list)
    splits: dict = field(default_factory=dict)  # how the splits were made, for the manifest
    listed: set = field(default_factory=set)  # sample ids met so far, for first_listing

    def skip(self, sample_id: str, split: str, reason: str) -> None:
        self.skipped.append({"sample_id": sample_id, "split": split, "reason": reason})

    def first_listing(self, sample_id: str, detail: str = "") -> bool:
        """True the first time `sample_id` is listed; a repeat is dropped with a note (plus `detail`)."""
        if sample_id in self.listed:
            self.notes.append(f"{sample_id} is listed twice; kept the first{detail}")
            return False
        self.listed.add(sample_id)
        return True


def read_text(path: Path) -> str:
    """A split or list file as text: UTF-8 with or without a BOM, any line ends."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_rows(path: Path, delimiter: str = ",") -> list[list[str]]:
    """Non-empty rows of a delimited text file, fields stripped."""
    rows = csv.reader(io.StringIO(read_text(path), newline=""), delimiter=delimiter)
    return [[f.strip() for f in row] for row in rows if any(f.strip() for f in row)]


def carve_validation(clips: list[Clip], fraction: float, seed: int) -> list[Clip]:
    """Move a stratified, seeded `fraction` of each class's train clips to val."""
    by_label: dict[int, list[Clip]] = {}
    for clip in sorted(clips, key=lambda c: c.sample_id):
        if clip.split == "train":
            by_label.setdefault(clip.label, []).append(clip)
    rng = np.random.default_rng(seed)
    to_val = set()
    for label in sorted(by_label):
        members = by_label[label]
        # Every class with two or more train clips gets at least one validation clip.
        take = max(int(round(fraction * len(members))), int(fraction > 0 and len(members) > 1))
        to_val.update(members[i].sample_id for i in rng.permutation(len(members))[:take])
    return [_moved(c, "val") if c.sample_id in to_val else c for c in clips]


def stratified_test_split(clips: list[Clip], fraction: float, seed: int, group=None) -> list[Clip]:
    """Move a seeded `fraction` to test: per class, or whole groups (e.g. speakers) with `group`."""
    if group is None:
        moved = carve_validation(clips, fraction, seed + 1)
        return [_moved(c, "test") if c.split == "val" else c for c in moved]
    groups = sorted({group(c) for c in clips})
    rng = np.random.default_rng(seed + 1)
    test_groups = {groups[i] for i in rng.permutation(len(groups))[:max(1, int(round(fraction * len(groups))))]}
    return [_moved(c, "test") if group(c) in test_groups else c for c in clips]


def _moved(clip: Clip, split: str) -> Clip:
    return Clip(**{**clip.__dict__, "split": split})
