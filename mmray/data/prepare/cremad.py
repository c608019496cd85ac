"""CREMA-D: `AudioWAV/<actor>_<sentence>_<emotion>_<level>.wav`, frames in `Image-01-FPS/<name>/`
or videos in `VideoFlash/<name>.flv`, optional split lists `train.csv` / `test.csv` (`name,LABEL`).

Without split lists the test split is a seeded stratified 10% (or, with --speaker-disjoint, 10%
of the actors, so no actor is in both); validation is always carved from train.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mmray.data.prepare.plan import Clip, Plan, carve_validation, read_rows, stratified_test_split
from mmray.data.prepare.preset import RawOptions, preset
from mmray.errors import UserError

NAME = "cremad"
CLASSES = ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]  # the class order of the OGM-GE lists
DEFAULTS = dict(recipe=dict(kind="stft", sample_rate=22050, seconds=3.0, n_fft=512, hop=353), frames=3, fps=1.0)


@dataclass(frozen=True)
class CremadOptions(RawOptions):
    speaker_disjoint: bool = False  # without split lists: no actor in two splits
    video_source: Literal["frames", "video"] | None = None  # None: the frame folders if present, else the videos


@preset(NAME, CremadOptions, DEFAULTS)
def plan(root: Path, options: CremadOptions, class_names: list[str] | None) -> Plan:
    audio_dir = root / "AudioWAV"
    if not audio_dir.is_dir():
        raise UserError(f"{audio_dir}: no such folder (CREMA-D's WAV files)")
    frames_root, video_dir = root / "Image-01-FPS", root / "VideoFlash"
    source = options.video_source or ("frames" if frames_root.is_dir() else "video")
    if not (frames_root if source == "frames" else video_dir).is_dir():
        raise UserError(f"{root}: neither Image-01-FPS/ (frame folders) nor VideoFlash/ (FLV videos) found")
    classes = class_names or CLASSES
    out = Plan(NAME, classes, [], splits={"video_source": source})

    lists = {split: getattr(options, f"{split}_list") or root / f"{split}.csv" for split in ("train", "test")}
    if all(Path(p).is_file() for p in lists.values()):
        listed = [(row[0], row[1] if len(row) > 1 else "", split) for split in ("train", "test")
                  for row in read_rows(Path(lists[split]))]
        out.splits["test"] = f"official lists {', '.join(str(p) for p in lists.values())}"
    else:
        # Every clip found in either modality: one with frames but no WAV is named as skipped too
        # (as `_add` names a WAV without frames), not silently left out.
        visual = frames_root.iterdir() if source == "frames" else video_dir.glob("*.flv")
        names = {p.stem for p in audio_dir.glob("*.wav")} | {p.name if source == "frames" else p.stem for p in visual}
        listed = [(name, _emotion(name), "train") for name in sorted(names)]
    for name, label, split in listed:
        if not out.first_listing(name):
            continue
        if label not in classes:
            out.skip(name, split, f"label {label!r} not in the class list")
        elif _emotion(name) not in (None, label):
            out.skip(name, split, f"mislabelled: the list says {label}, the file name says {_emotion(name)}")
        else:
            _add(out, name, classes.index(label), split, audio_dir, frames_root, video_dir, source)
    if "test" not in out.splits:
        speaker = (lambda c: c.sample_id.split("_")[0]) if options.speaker_disjoint else None
        out.clips = stratified_test_split(out.clips, options.test_fraction, options.seed, group=speaker)
        out.splits["test"] = (f"seeded {'speaker-disjoint' if speaker else 'stratified'} "
                              f"{options.test_fraction:g} of all clips (no split lists found)")
    out.clips = carve_validation(out.clips, options.val_fraction, options.seed)
    out.splits["val"] = f"stratified seeded {options.val_fraction:g} of train (seed {options.seed})"
    return out


def _emotion(name: str) -> str | None:
    parts = name.split("_")
    return parts[2] if len(parts) == 4 else None


def _add(out: Plan, name, label, split, audio_dir, frames_root, video_dir, source) -> None:
    audio = audio_dir / f"{name}.wav"
    visual = frames_root / name if source == "frames" else video_dir / f"{name}.flv"
    for path, modality in ((audio, "no audio file"), (visual, "no frames" if source == "frames" else "no video")):
        if not path.exists():
            out.skip(name, split, f"{modality}: missing file {path}")
            return
    if source == "frames":
        out.clips.append(Clip(name, label, split, audio=str(audio), frames_dir=str(visual)))
    else:
        out.clips.append(Clip(name, label, split, audio=str(audio), video=str(visual)))
