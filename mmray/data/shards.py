"""The shard format: writing prepared rows to Parquet, and decoding them back to arrays.

One row per clip: `sample_id` (str), `index` (int64, unique within the split, so methods can
keep per-sample state), `label` (int64), `audio` (raw little-endian bytes of the spectrogram),
`frames` (a list with one binary per frame: raw uint8 HWC pixels or a JPEG), then any
per-sample metadata columns (for synthetic-av: which modality was corrupted).
"""

from __future__ import annotations

import io
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from mmray.data.manifest import MANIFEST_FILE, AudioSpec, FramesSpec, Manifest, ShardFile, describe_shard
from mmray.errors import UserError

ROWS_PER_SHARD = 2048


def encode_frames(frames: np.ndarray, encoding: str) -> list[bytes]:
    """(T, H, W, C) uint8 -> one binary per frame."""
    if encoding == "raw":
        return [np.ascontiguousarray(f).tobytes() for f in frames]
    out = []
    for f in frames:
        buf = io.BytesIO()
        # No chroma subsampling: small frames would lose most of their colour detail.
        Image.fromarray(f).save(buf, format="JPEG", quality=95, subsampling=0)
        out.append(buf.getvalue())
    return out


def decode_audio(column, spec: AudioSpec) -> np.ndarray:
    """A column of raw spectrogram bytes -> (B, C, F, T) float32."""
    dtype = np.dtype(spec.dtype).newbyteorder("<")
    flat = np.frombuffer(b"".join(column), dtype=dtype)
    return flat.reshape((len(column), *spec.shape)).astype(np.float32)


def decode_pixels(column, spec: FramesSpec) -> np.ndarray:
    """A column of per-clip frame lists -> (B, T, C, H, W) uint8, what the pipeline carries (the model
    normalises on its device: mmray/models/model.py, FrameEncoder)."""
    batch = np.empty((len(column), spec.count, spec.height, spec.width, spec.channels), dtype=np.uint8)
    for i, frames in enumerate(column):
        for t, blob in enumerate(frames):
            if spec.encoding == "raw":
                batch[i, t] = np.frombuffer(blob, dtype=np.uint8).reshape(spec.height, spec.width, spec.channels)
            else:
                batch[i, t] = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))
    return np.ascontiguousarray(batch.transpose(0, 1, 4, 2, 3))


def decode_frames(column, spec: FramesSpec) -> np.ndarray:
    """A column of per-clip frame lists -> (B, T, C, H, W) float32, normalised as the model does it."""
    pixels = decode_pixels(column, spec).astype(np.float32) / 255.0
    return (pixels - np.asarray(spec.mean, np.float32)[:, None, None]) / np.asarray(spec.std, np.float32)[:, None, None]


class Decode:
    """Shard rows -> model-ready arrays. A callable class so Ray Data ships the specs once.
    `frames=False` leaves "frames" as each row's list of stored blobs (decode_frames: device)."""

    def __init__(self, manifest: Manifest, frames: bool = True):
        self.audio_spec = manifest.audio
        self.frames_spec = manifest.frames
        self.frames = frames

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {
            "audio": decode_audio(batch["audio"], self.audio_spec),
            "frames": decode_pixels(batch["frames"], self.frames_spec) if self.frames else batch["frames"],
            "label": batch["label"].astype(np.int64),
            "index": batch["index"].astype(np.int64),
        }


def write_split(
    root: Path,
    split: str,
    columns: dict[str, list | np.ndarray],
    rows_per_shard: int = ROWS_PER_SHARD,
) -> list[ShardFile]:
    """Write one split's rows (a dict of equal-length columns) as Parquet shards under root/split/."""
    (root / split).mkdir(parents=True, exist_ok=True)
    table = rows_table(columns)
    files = []
    for part, start in enumerate(range(0, table.num_rows, rows_per_shard)):
        path = root / split / f"part-{part:05d}.parquet"
        # No timestamps or writer randomness: the same rows give byte-identical shards.
        pq.write_table(table.slice(start, rows_per_shard), path, compression="zstd")
        files.append(describe_shard(root, path))
    return files


def rows_table(columns: dict[str, list | np.ndarray]) -> pa.Table:
    """Equal-length columns -> an Arrow table with the shard schema's types."""
    return pa.table({name: _as_arrow(name, values) for name, values in columns.items()})


def _as_arrow(name: str, values) -> pa.Array:
    if name == "frames":
        return pa.array(values, type=pa.list_(pa.binary()))
    if name == "audio":
        return pa.array(values, type=pa.binary())
    if name in ("index", "label"):
        return pa.array(np.asarray(values, dtype=np.int64))
    return pa.array(values)


def check_output_folder(out: Path, force: bool) -> None:
    """Refuse to write a dataset over anything but nothing, an empty folder, or (with force) a dataset."""
    if Path(out).expanduser().resolve() in (Path.cwd(), *Path.cwd().parents):
        raise UserError(f"{out}: is the current folder (or holds it); give a new folder for the dataset")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    if (out / MANIFEST_FILE).exists() and not force:
        raise UserError(f"{out}: already holds a prepared dataset (use --force to replace it)")
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST_FILE).exists():
        raise UserError(f"{out}: exists and is not a prepared dataset; refusing to write into it")


PARTIAL_MARKER = ".mmray-partial"  # in a `<out>.partial` folder that mmray made, so may resume or remove


def claim_staging(out: Path) -> Path:
    """`<out>.partial`, the folder `out` is prepared in, marked as mmray's. A folder of that name that mmray
    did not make (a user's) is refused, never written into or removed."""
    staging = out.with_name(out.name + ".partial")
    if staging.exists() and not (staging / PARTIAL_MARKER).is_file():
        raise UserError(f"{staging}: exists and was not made by mmray prepare; move it away or pick another --out")
    staging.mkdir(parents=True, exist_ok=True)
    (staging / PARTIAL_MARKER).touch()
    return staging


def publish_staging(staging: Path, out: Path) -> None:
    """The finished `staging` becomes `out` (replacing a previous dataset there)."""
    (staging / PARTIAL_MARKER).unlink()
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)


@contextmanager
def staged_output(out: Path, force: bool = False):
    """Yield a staging folder that becomes `out` only when the block finishes without error.

    A crash or bad input leaves `out` as it was (absent, or the previous complete dataset):
    the output folder never looks complete when it is not.
    """
    out = Path(out)
    check_output_folder(out, force)
    shutil.rmtree(claim_staging(out))  # a previous attempt's leftovers (this writer does not resume)
    staging = claim_staging(out)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    publish_staging(staging, out)


def read_column_by_index(root: str | Path, manifest, split: str, column: str) -> np.ndarray:
    """One column of a split as an array indexed by sample index (for per-sample metadata)."""
    table = pq.read_table(manifest.shard_paths(root, split), columns=["index", column])
    index = table["index"].to_numpy()
    values = np.empty(index.max() + 1, dtype=object)
    values[index] = table[column].to_pylist()
    return values
