"""The shard writer: clips -> Parquet shards + manifest, in parallel Ray tasks, resumable.

Each split's clips, sorted by sample id, are cut into fixed slices of `rows_per_shard`; a slice
is one Ray task that decodes its clips and returns the Parquet bytes, which the driver writes
(so workers on other machines need to read the raw files, not write the output). Everything
goes to `<out>.partial/`; a finished shard is written atomically and then recorded in
`.progress/` with a fingerprint of its clips, their files (size, mtime) and the settings. A
rerun after an interruption keeps the recorded shards whose fingerprint and checksum still
match and does the rest, so it ends with the same bytes as an uninterrupted run. Only a complete
run gets `manifest.json` and the final folder name.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from mmray.data.manifest import SPLITS, AudioSpec, FramesSpec, Manifest, describe_shard, file_sha256
from mmray.data.prepare.audio import AudioRecipe, read_audio, spectrogram
from mmray.data.prepare.plan import Clip, Plan
from mmray.data.prepare.video import frames_from_folder, frames_from_video
from mmray.data.shards import check_output_folder, claim_staging, encode_frames, publish_staging, rows_table
from mmray.errors import UserError

PROGRESS_DIR = ".progress"


@dataclass(frozen=True)
class ClipSettings:
    """How one clip becomes a row: the same for every clip of a run."""
    recipe: AudioRecipe
    frames: int = 3
    fps: float = 1.0  # frames per second sampled from a video
    image_size: int = 224
    frame_encoding: str = "jpeg"
    audio_dtype: str = "float16"
    min_seconds: float = 0.5  # shorter audio is skipped as too short


class ClipError(Exception):
    """This clip cannot be used; the message is the reason recorded in the manifest."""


def clip_row(clip: Clip, s: ClipSettings) -> tuple[bytes, list[bytes]]:
    """One clip -> (spectrogram bytes, one encoded image per frame)."""
    source = clip.audio or clip.video
    try:
        audio = read_audio(source, s.recipe, clip.start, clip.end, at_least=s.min_seconds)
    except Exception as e:  # FFmpeg's errors for a corrupt file come in many types
        raise ClipError(f"unreadable audio in {source}: {_why(e)}") from None
    if audio.seconds < s.min_seconds:
        raise ClipError(f"too short: {audio.seconds:.2f} s of audio (minimum {s.min_seconds:g} s)")
    spec = spectrogram(audio.wave, s.recipe.sample_rate, s.recipe, audio.mean)
    if not np.isfinite(spec).all():
        raise ClipError(f"audio in {source} gives a non-finite spectrogram")
    try:
        if clip.frames_dir is not None:
            frames = frames_from_folder(clip.frames_dir, s.frames, s.image_size)
        else:
            frames = frames_from_video(clip.video, s.frames, s.image_size, s.fps)
    except Exception as e:
        raise ClipError(f"unreadable frames in {clip.frames_dir or clip.video}: {_why(e)}") from None
    return spec.astype(np.dtype(s.audio_dtype).newbyteorder("<")).tobytes(), encode_frames(frames, s.frame_encoding)


def _why(error: Exception) -> str:
    """FFmpeg's message without the errno and the path again."""
    return getattr(error, "strerror", None) or str(error)


def build_shard(rows: list[tuple[int, Clip]], s: ClipSettings) -> dict:
    """A Ray task: decode a slice of clips -> {"parquet": bytes or None, "rows", "skipped"}."""
    import torch

    torch.set_num_threads(1)  # one task per CPU
    columns = {"sample_id": [], "index": [], "label": [], "audio": [], "frames": []}
    skipped = []
    for index, clip in rows:
        try:
            audio, frames = clip_row(clip, s)
        except ClipError as e:
            skipped.append({"sample_id": clip.sample_id, "split": clip.split, "reason": str(e)})
            continue
        for key, value in zip(columns, (clip.sample_id, index, clip.label, audio, frames)):
            columns[key].append(value)
    data = None
    if columns["sample_id"]:
        buffer = io.BytesIO()
        pq.write_table(rows_table(columns), buffer, compression="zstd")
        data = buffer.getvalue()
    return {"parquet": data, "rows": len(columns["sample_id"]), "skipped": skipped}


@dataclass(frozen=True)
class Job:
    split: str
    part: int
    rows: tuple  # ((index, Clip), ...)
    fingerprint: str

    @property
    def file(self) -> str:
        return f"{self.split}/part-{self.part:05d}.parquet"

    @property
    def record(self) -> str:
        return f"{PROGRESS_DIR}/{self.split}-part-{self.part:05d}.json"


def _file_state(path: str | None) -> list | None:
    """What a rerun compares to see a changed input: size and mtime of the file (or each frame)."""
    if path is None:
        return None
    p = Path(path)
    try:
        if p.is_dir():
            return sorted([f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in p.iterdir())
        stat = p.stat()
        return [stat.st_size, stat.st_mtime_ns]
    except OSError:
        return None


def make_jobs(plan: Plan, settings: ClipSettings, rows_per_shard: int) -> list[Job]:
    jobs = []
    for split in SPLITS:
        clips = sorted((c for c in plan.clips if c.split == split), key=lambda c: c.sample_id)
        indexed = list(enumerate(clips))  # index: position in the split's planned list, stable on reruns
        for part, start in enumerate(range(0, len(indexed), rows_per_shard)):
            rows = tuple(indexed[start:start + rows_per_shard])
            key = json.dumps({"settings": asdict(settings), "rows": [
                [i, asdict(c), _file_state(c.audio), _file_state(c.video), _file_state(c.frames_dir)]
                for i, c in rows]}, sort_keys=True)
            jobs.append(Job(split, part, rows, hashlib.sha256(key.encode()).hexdigest()))
    return jobs


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _finished(staging: Path, job: Job) -> dict | None:
    """The record of a shard done by an earlier run, if it still matches its inputs and its file."""
    try:
        record = json.loads((staging / job.record).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if record.get("fingerprint") != job.fingerprint:
        return None
    if record["rows"] and not ((staging / job.file).is_file() and file_sha256(staging / job.file) == record["sha256"]):
        return None
    return record


def _check_skipped(plan: Plan, skipped: list[dict], max_skipped: float, staging: Path) -> None:
    total = len(plan.clips) + len(plan.skipped)
    if total == 0:
        raise UserError(f"{plan.dataset}: no clips found")
    if len(skipped) / total > max_skipped:
        shown = "; ".join(f"{s['sample_id']} ({s['reason']})" for s in skipped[:3])
        raise UserError(
            f"{plan.dataset}: {len(skipped)} of {total} clips skipped ({len(skipped) / total:.1%}), more than "
            f"--max-skipped {max_skipped:.0%}: {shown}{' ...' if len(skipped) > 3 else ''}. "
            f"Fix the files (or raise --max-skipped) and rerun: finished shards in {staging} are kept")


def write_dataset(plan: Plan, settings: ClipSettings, out: str | Path, *, rows_per_shard: int = 256,
                  max_skipped: float = 0.05, force: bool = False, preprocessing: dict | None = None,
                  progress: bool = True) -> Manifest:
    """Prepare every clip of `plan` into `out` (needs a running Ray); resumes `<out>.partial` if present."""
    import ray
    from tqdm import tqdm

    out = Path(out)
    check_output_folder(out, force)
    staging = claim_staging(out)
    _check_skipped(plan, plan.skipped, max_skipped, staging)
    jobs = make_jobs(plan, settings, rows_per_shard)
    for folder in (staging / PROGRESS_DIR, *(staging / s for s in SPLITS)):
        folder.mkdir(parents=True, exist_ok=True)
    records = {job.record: _finished(staging, job) for job in jobs}
    _remove_strays(staging, {j.file for j in jobs if records[j.record]} | {j.record for j in jobs if records[j.record]})
    pending = [job for job in jobs if records[job.record] is None]

    bar = tqdm(total=len(plan.clips), initial=len(plan.clips) - sum(len(j.rows) for j in pending),
               unit="clip", desc=f"prepare {plan.dataset}", disable=not progress, file=sys.stderr)
    task = ray.remote(num_cpus=1)(build_shard)
    settings_ref = ray.put(settings)
    max_in_flight = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))  # bounds the bytes held at once
    queue, running = list(pending), {}
    try:
        while queue or running:
            while queue and len(running) < max_in_flight:
                job = queue.pop(0)
                running[task.remote(list(job.rows), settings_ref)] = job
            [done], _ = ray.wait(list(running), num_returns=1)
            job, result = running.pop(done), ray.get(done)
            if result["parquet"] is not None:
                _write_atomic(staging / job.file, result["parquet"])
            records[job.record] = {"fingerprint": job.fingerprint, "rows": result["rows"], "skipped": result["skipped"],
                                   "sha256": hashlib.sha256(result["parquet"]).hexdigest() if result["parquet"] else None}
            _write_atomic(staging / job.record, json.dumps(records[job.record]).encode())  # the shard is done
            bar.update(len(job.rows))
    except KeyboardInterrupt:
        print(f"\nmmray: {staging} keeps the finished shards; rerun the same command to resume", file=sys.stderr)
        raise
    finally:
        bar.close()

    skipped = list(plan.skipped) + [s for job in jobs for s in records[job.record]["skipped"]]
    _check_skipped(plan, skipped, max_skipped, staging)
    shards = {s: [describe_shard(staging, staging / j.file) for j in jobs if j.split == s and records[j.record]["rows"]]
              for s in SPLITS}
    for split, files in shards.items():
        if not files:
            raise UserError(f"{plan.dataset}: no clip of the {split} split could be prepared")
    manifest = Manifest(
        dataset=plan.dataset,
        class_names=list(plan.class_names),
        audio=AudioSpec(shape=settings.recipe.shape, dtype=settings.audio_dtype),
        frames=FramesSpec(count=settings.frames, height=settings.image_size, width=settings.image_size,
                          encoding=settings.frame_encoding),
        shards=shards,
        preprocessing={**(preprocessing or {}), "clip": asdict(settings), "rows_per_shard": rows_per_shard,
                       "splits": plan.splits, "counts": _counts(plan, skipped)},
        skipped=sorted(skipped, key=lambda s: (s["split"], s["sample_id"])),
        notes=list(plan.notes),
    )
    shutil.rmtree(staging / PROGRESS_DIR)
    manifest.save(staging)
    publish_staging(staging, out)
    return manifest


def _remove_strays(staging: Path, keep: set[str]) -> None:
    """Drop files of unfinished or outdated shards, so the folder holds only what the manifest will list."""
    for folder in (PROGRESS_DIR, *SPLITS):
        for path in (staging / folder).iterdir():
            if f"{folder}/{path.name}" not in keep:
                path.unlink()


def _counts(plan: Plan, skipped: list[dict]) -> dict:
    counts = {}
    for split in SPLITS:
        planned = sum(c.split == split for c in plan.clips) + sum(s["split"] == split for s in plan.skipped)
        dropped = sum(s["split"] == split for s in skipped)
        counts[split] = {"listed": planned, "skipped": dropped, "prepared": planned - dropped}
    return counts
