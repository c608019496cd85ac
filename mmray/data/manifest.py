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
    _check_types(raw, where)
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


def _check_types(raw: dict, where: str) -> None:
    """The keys whose wrong type would pass silently (a string is a list of characters) or fail deep
    inside a Ray task: named here, with the manifest file."""
    def ints(value) -> bool:
        return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                               for v in value)

    names = raw.get("class_names")
    _require(isinstance(names, list) and all(isinstance(c, str) for c in names), where,
             f"class_names: {names!r} is not a list of names")
    audio, frames, shards = raw.get("audio"), raw.get("frames"), raw.get("shards")
    _require(isinstance(audio, dict) and ints(audio.get("shape")), where,
             f"audio.shape: {audio.get('shape') if isinstance(audio, dict) else audio!r} is not a list of positive integers")
    _require(isinstance(frames, dict) and ints([frames.get(k) for k in ("count", "height", "width")]), where,
             "frames.count, frames.height, frames.width: each must be a positive integer")
    _require(isinstance(shards, dict) and all(isinstance(files, list) for files in shards.values()), where,
             "shards: expected a mapping of split: list of files")
    for split, files in shards.items():
        for i, shard in enumerate(files):
            key = f"shards.{split}[{i}]"
            _require(isinstance(shard, dict), where, f"{key}: expected an object")
            _require(isinstance(shard.get("file"), str) and shard["file"], where,
                     f"{key}.file: {shard.get('file')!r} is not a file name")
            _require(not Path(shard["file"]).is_absolute() and ".." not in Path(shard["file"]).parts, where,
                     f"{key}.file: {shard['file']!r} is not inside the dataset folder")
            _require(ints([shard.get("rows")]) and isinstance(shard.get("bytes"), int), where,
                     f"{key}: rows and bytes must be integers")


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
        _check_shapes(root, root / files[0].file, manifest)


def _check_shapes(root: Path, path: Path, manifest: Manifest) -> None:
    """A split's first row holds what audio.shape, audio.dtype and frames say (else every batch fails later)."""
    import numpy as np

    row = pq.ParquetFile(path).read_row_group(0, columns=["audio", "frames"]).slice(0, 1).to_pylist()[0]
    a, f = manifest.audio, manifest.frames
    expected = int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize
    if len(row["audio"]) != expected:
        raise UserError(f"{path}: audio of {len(row['audio'])} bytes, but {root / MANIFEST_FILE} "
                        f"says audio.shape {list(a.shape)} of {a.dtype} ({expected} bytes)")
    pixels = f.height * f.width * f.channels
    if len(row["frames"]) != f.count or (f.encoding == "raw" and any(len(b) != pixels for b in row["frames"])):
        raise UserError(f"{path}: frames do not match {root / MANIFEST_FILE}'s frames "
                        f"(count {f.count}, {f.height}x{f.width}x{f.channels} {f.encoding})")
