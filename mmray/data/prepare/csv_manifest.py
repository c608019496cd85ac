"""Any audio-visual dataset: a CSV with a header `sample_id,label,split,audio_path,video_path`
(or `frames_dir` instead of `video_path`). Paths are relative to the CSV's folder; an empty
`audio_path` means the video's own audio track. `split` is train, val or test; missing val (or
test) rows are carved from train, stratified and seeded. Labels are class names.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from mmray.data.prepare.plan import Clip, Plan, carve_validation, read_text, stratified_test_split
from mmray.data.prepare.preset import RawOptions, preset
from mmray.errors import UserError

NAME = "manifest"
DEFAULTS = dict(recipe=dict(kind="fbank", sample_rate=16000, mel_bins=128, frames=1024), frames=3, fps=1.0)
REQUIRED = ("sample_id", "label", "split", "audio_path")


@dataclass(frozen=True)
class ManifestOptions(RawOptions):
    name: str | None = None  # the dataset's name; None: the CSV file's


@preset(NAME, ManifestOptions, DEFAULTS)
def plan(root: Path, options: ManifestOptions, class_names: list[str] | None) -> Plan:
    path = root / "manifest.csv" if root.is_dir() else root
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    columns = [c.strip() for c in reader.fieldnames or []]
    missing = [c for c in REQUIRED if c not in columns]
    if missing or not ({"video_path", "frames_dir"} & set(columns)):
        raise UserError(f"{path}: needs the columns sample_id,label,split,audio_path and video_path or frames_dir "
                        f"(found {','.join(columns) or 'none'})")
    rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    for number, row in enumerate(rows, 2):
        if row["split"] not in ("train", "val", "test"):
            raise UserError(f"{path}:{number}: split {row['split']!r} is not train, val or test")
        if not row["sample_id"]:
            raise UserError(f"{path}:{number}: empty sample_id")
    if class_names is None:
        class_names = sorted({row["label"] for row in rows})
    out = Plan(options.name or path.stem, class_names, [], splits={"source": str(path)})
    base = path.parent
    for row in rows:
        sample_id, split = row["sample_id"], row["split"]
        if not out.first_listing(sample_id):
            continue
        files = {key: base / row[key] for key in ("audio_path", "video_path", "frames_dir") if row.get(key)}
        absent = [str(p) for p in files.values() if not p.exists()]
        if row["label"] not in class_names:
            out.skip(sample_id, split, f"label {row['label']!r} not in the class list")
        elif absent:
            out.skip(sample_id, split, f"missing file {absent[0]}")
        elif "video_path" not in files and "frames_dir" not in files:
            out.skip(sample_id, split, "no video_path or frames_dir")
        elif "audio_path" not in files and "video_path" not in files:
            out.skip(sample_id, split, "no audio_path, and no video whose audio track could be used")
        else:
            out.clips.append(Clip(sample_id, class_names.index(row["label"]), split,
                                  audio=_str(files.get("audio_path")), video=_str(files.get("video_path")),
                                  frames_dir=_str(files.get("frames_dir"))))
    if not any(c.split == "test" for c in out.clips):
        out.clips = stratified_test_split(out.clips, options.test_fraction, options.seed)
        out.splits["test"] = f"stratified seeded {options.test_fraction:g} of all clips"
    if not any(c.split == "val" for c in out.clips):
        out.clips = carve_validation(out.clips, options.val_fraction, options.seed)
        out.splits["val"] = f"stratified seeded {options.val_fraction:g} of train (seed {options.seed})"
    return out


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)
