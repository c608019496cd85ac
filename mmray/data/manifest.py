"""The manifest of a prepared dataset folder: what the shards hold and how to check them.

A prepared folder is `manifest.json` plus `train/`, `val/`, `test/` Parquet shards. Shapes,
dtypes and the class list live here, so no training code hard-codes them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from mmray.errors import UserError

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
SPLITS = ("train", "val", "test")
AUDIO_DTYPES = ("float16", "float32")
FRAME_ENCODINGS = ("raw", "jpeg")

# Columns every shard has; datasets may add per-sample metadata columns after these.
BASE_COLUMNS = ("sample_id", "index", "label", "audio", "frames")


@dataclass(frozen=True)
class AudioSpec:
    shape: tuple[int, int, int]  # (channels, frequency bins, time frames)
    dtype: str  # float16 | float32; stored as raw little-endian bytes


@dataclass(frozen=True)
class FramesSpec:
    count: int  # frames per clip
    height: int
    width: int
    channels: int = 3
    encoding: str = "raw"  # raw: uint8 HWC bytes; jpeg: one JPEG per frame
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # per-channel normalisation after /255
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ShardFile:
    file: str  # relative to the dataset folder, e.g. "train/part-00000.parquet"
    rows: int
    bytes: int
    sha256: str


@dataclass
class Manifest:
    dataset: str
    class_names: list[str]
    audio: AudioSpec
    frames: FramesSpec
    shards: dict[str, list[ShardFile]]  # split -> files
    preprocessing: dict = field(default_factory=dict)
    metadata_columns: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # [{"sample_id", "reason"}]
    notes: list[str] = field(default_factory=list)
    format_version: int = FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split_size(self, split: str) -> int:
        return sum(s.rows for s in self.shards[split])

    def shard_paths(self, root: str | Path, split: str) -> list[str]:
        root = Path(root).resolve()
        return [str(root / s.file) for s in self.shards[split]]

    def to_json(self) -> dict:
        out = asdict(self)
        out["split_sizes"] = {s: self.split_size(s) for s in self.shards}
        return out

    def save(self, root: str | Path) -> None:
        path = Path(root) / MANIFEST_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2))
        tmp.replace(path)  # the manifest appears last and atomically: no half-written folder looks complete


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def describe_shard(root: Path, file: Path) -> ShardFile:
    return ShardFile(
        file=str(file.relative_to(root)),
        rows=pq.ParquetFile(file).metadata.num_rows,
        bytes=file.stat().st_size,
        sha256=file_sha256(file),
    )


def _require(cond: bool, where: str, message: str) -> None:
    if not cond:
        raise UserError(f"{where}: {message}")


def load_manifest(root: str | Path, verify: bool = True) -> Manifest:
    """Read `root/manifest.json`; with `verify`, refuse a folder whose files do not match it."""
    root = Path(root)
    path = root / MANIFEST_FILE
    if not root.is_dir():
        raise UserError(f"{root}: data folder does not exist")
    if not path.is_file():
        raise UserError(f"{path}: no manifest; prepare the dataset first (mmray prepare ...)")
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable manifest ({e})") from None
    where = str(path)
    _require(isinstance(raw, dict), where, "malformed manifest (expected a JSON object)")
    try:
        _require(raw.get("format_version") == FORMAT_VERSION, where,
                 f"format_version {raw.get('format_version')!r} is not {FORMAT_VERSION}")
        manifest = Manifest(
            dataset=str(raw["dataset"]),
            class_names=[str(c) for c in raw["class_names"]],
            audio=AudioSpec(shape=tuple(raw["audio"]["shape"]), dtype=raw["audio"]["dtype"]),
            frames=FramesSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw["frames"].items()}),
            shards={split: [ShardFile(**s) for s in files] for split, files in raw["shards"].items()},
            preprocessing=dict(raw.get("preprocessing", {})),
            metadata_columns=list(raw.get("metadata_columns", [])),
            skipped=list(raw.get("skipped", [])),
            notes=list(raw.get("notes", [])),
        )
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise UserError(f"{where}: malformed manifest ({type(e).__name__}: {e})") from None
    _require(manifest.num_classes >= 2, where, "class_names needs at least 2 classes")
    _require(len(manifest.audio.shape) == 3, where, f"audio.shape {list(manifest.audio.shape)} is not [C, F, T]")
    _require(manifest.audio.dtype in AUDIO_DTYPES, where, f"audio.dtype {manifest.audio.dtype!r} not in {AUDIO_DTYPES}")
    _require(manifest.frames.encoding in FRAME_ENCODINGS, where,
             f"frames.encoding {manifest.frames.encoding!r} not in {FRAME_ENCODINGS}")
    for split in SPLITS:
        _require(bool(manifest.shards.get(split)), where, f"shards.{split} is missing or empty")
    if verify:
        verify_shards(root, manifest)
    return manifest


def verify_shards(root: Path, manifest: Manifest) -> None:
    """Every listed shard exists with the recorded size, row count and checksum."""
    for split, files in manifest.shards.items():
        for shard in files:
            path = root / shard.file
            if not path.is_file():
                raise UserError(f"{path}: shard listed in {root / MANIFEST_FILE} is missing")
            if path.stat().st_size != shard.bytes or file_sha256(path) != shard.sha256:
                raise UserError(f"{path}: shard does not match {root / MANIFEST_FILE} (size or checksum differs)")
            rows = pq.ParquetFile(path).metadata.num_rows
            if rows != shard.rows:
                raise UserError(f"{path}: {rows} rows, manifest says {shard.rows}")
