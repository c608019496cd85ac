"""Kinetics-Sounds: `.mp4` clips in class folders or one flat folder (found anywhere under the
root by file name), and list files with rows `<clip_id>,<duration>,<label>`.

Several versions (31 to 34 classes) circulate, so the class list is an input (--classes, one
name per line); without it the classes are the labels of the train list, and the manifest says
so. Without a validation list, validation is carved from train (stratified, seeded).
"""

from __future__ import annotations

from pathlib import Path

from mmray.data.prepare.plan import Clip, Plan, carve_validation, read_rows
from mmray.data.prepare.preset import RawOptions, preset
from mmray.errors import UserError

NAME = "kinetics-sounds"
DEFAULTS = dict(recipe=dict(kind="fbank", sample_rate=16000, mel_bins=128, frames=1024), frames=3, fps=1.0)
LIST_NAMES = {split: (f"{split}.csv", f"{split}.txt", f"my_{split}.txt") for split in ("train", "val", "test")}


def _find_list(root: Path, options: RawOptions, split: str) -> Path | None:
    given = getattr(options, f"{split}_list")
    if given:
        return Path(given)
    return next((root / n for n in LIST_NAMES[split] if (root / n).is_file()), None)


def _rows(path: Path) -> list[tuple[str, str]]:
    rows = read_rows(path)
    if rows and len(rows[0]) >= 3 and not _is_number(rows[0][1]):
        rows = rows[1:]  # a header line
    for number, row in enumerate(rows, 1):
        if len(row) < 3:
            raise UserError(f"{path}: row {number} {','.join(row)!r} is not <clip_id>,<duration>,<label>")
    return [(row[0], ",".join(row[2:])) for row in rows]


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


@preset(NAME, RawOptions, DEFAULTS)  # no options of its own
def plan(root: Path, options: RawOptions, class_names: list[str] | None) -> Plan:
    lists = {split: _find_list(root, options, split) for split in ("train", "val", "test")}
    for split in ("train", "test"):
        if lists[split] is None or not lists[split].is_file():
            raise UserError(f"{root}: no {split} list ({', '.join(LIST_NAMES[split])}, or --{split}-list FILE)")
    rows = {split: _rows(path) for split, path in lists.items() if path is not None}
    out = Plan(NAME, [], [], splits={split: f"list {path}" for split, path in lists.items() if path is not None})
    if class_names is None:
        class_names = sorted({label for _, label in rows["train"]})
        out.notes.append(f"class list taken from the train list ({len(class_names)} classes); "
                         "pass --classes FILE to fix a version")
    out.class_names = class_names
    videos = {}
    for path in sorted(root.rglob("*.mp4")):
        videos.setdefault(path.stem, path)
    for split, entries in rows.items():
        for clip_id, label in entries:
            if not out.first_listing(clip_id, f" ({split} repeat dropped)"):
                continue
            if label not in class_names:
                out.skip(clip_id, split, f"label {label!r} not in the class list")
            elif clip_id not in videos:
                out.skip(clip_id, split, f"missing file {clip_id}.mp4 (not found under {root})")
            else:
                out.clips.append(Clip(clip_id, class_names.index(label), split, video=str(videos[clip_id])))
    if "val" not in rows:
        out.clips = carve_validation(out.clips, options.val_fraction, options.seed)
        out.splits["val"] = f"stratified seeded {options.val_fraction:g} of train (seed {options.seed})"
    return out
