"""AVE: `AVE/<youtube_id>.mp4`, `Annotations.txt` and the lists `trainSet.txt`, `valSet.txt`,
`testSet.txt`, each line `Category&YouTubeID&Quality&StartSec&EndSec`.

A video listed more than once (several events) is kept at its first occurrence and the repeats
are named in the manifest's notes. Audio comes from the video's track: the whole clip, or the
annotated event window with --event-window.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mmray.data.prepare.plan import Clip, Plan, read_text
from mmray.data.prepare.preset import RawOptions, preset
from mmray.errors import UserError

NAME = "ave"
DEFAULTS = dict(recipe=dict(kind="stft", sample_rate=16000, seconds=10.0, n_fft=512, hop=160, zscore=True),
                frames=4, fps=1.0)
LISTS = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}


def _entries(path: Path) -> list[list[str]]:
    rows = []
    for number, line in enumerate(read_text(path).splitlines(), 1):
        fields = [f.strip() for f in line.split("&")]
        if not line.strip() or fields[0] == "Category":  # blank lines, the header of Annotations.txt
            continue
        if len(fields) != 5:
            raise UserError(f"{path}:{number}: expected Category&YouTubeID&Quality&StartSec&EndSec, got {line!r}")
        rows.append(fields)
    return rows


@dataclass(frozen=True)
class AveOptions(RawOptions):
    event_window: bool = False  # audio of the annotated event only, not of the whole clip


@preset(NAME, AveOptions, DEFAULTS)
def plan(root: Path, options: AveOptions, class_names: list[str] | None) -> Plan:
    video_dir = root / "AVE" if (root / "AVE").is_dir() else root
    lists = {split: Path(getattr(options, f"{split}_list") or root / name) for split, name in LISTS.items()}
    for path in lists.values():
        if not path.is_file():
            raise UserError(f"{path}: no such split list (AVE ships trainSet.txt, valSet.txt, testSet.txt)")
    entries = {split: _entries(path) for split, path in lists.items()}
    if class_names is None:
        annotations = root / "Annotations.txt"
        source = _entries(annotations) if annotations.is_file() else [e for rows in entries.values() for e in rows]
        class_names = sorted({e[0] for e in source})
    out = Plan(NAME, class_names, [], splits={split: f"official list {path}" for split, path in lists.items()})
    seen, repeats = set(), []
    for split in LISTS:
        for category, video_id, _quality, start, end in entries[split]:
            if video_id in seen:
                repeats.append(f"{video_id} ({split}, {category})")
                continue
            seen.add(video_id)
            video = video_dir / f"{video_id}.mp4"
            if category not in class_names:
                out.skip(video_id, split, f"label {category!r} not in the class list")
            elif not video.is_file():
                out.skip(video_id, split, f"missing file {video}")
            else:
                window = (float(start), float(end)) if options.event_window else (None, None)
                out.clips.append(Clip(video_id, class_names.index(category), split, video=str(video),
                                      start=window[0], end=window[1]))
    if repeats:
        out.notes.append(f"{len(repeats)} repeated video IDs (several events per video): kept the first "
                         f"occurrence, dropped {', '.join(repeats)}")
    return out
