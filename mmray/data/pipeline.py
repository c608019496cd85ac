"""Ray Data pipelines over prepared shards, and the data source over them that the training loop iterates.

Reading and decoding run as Ray Data tasks (streaming, backpressured); the training worker only
pulls ready tensors, except with `decode_frames: device`, where it decodes the JPEG frames itself
(`DeviceDecode`). Shapes and dtypes come from the manifest.
"""

from __future__ import annotations

import logging
import warnings
from typing import Iterator

import numpy as np
import ray.data
import torch
from ray.data.block import BlockAccessor
from ray.data.dataset import MaterializedDataset
from ray.data.expressions import col

from mmray.data.manifest import Manifest
from mmray.data.shards import Decode
from mmray.data.source import Batch
from mmray.errors import UserError

# Read and decode tasks take a fraction of a CPU: several run on the CPU kept free for Ray Data.
DATA_TASK_CPUS = 0.25
# Splits whose decoded tensors fit in this many bytes are read and decoded once, kept in Ray's
# object store and streamed from there every epoch; larger ones stream from the shards each epoch.
# A fresh pass over shards costs 1-2 s of start-up, which would dominate small epochs.
CACHE_LIMIT_BYTES = 2 * 1024**3


def configure_data_context(quiet: bool = True) -> None:
    """Deterministic row order and no progress-bar flood; call in every process that runs pipelines."""
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    if quiet:
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # no "execution finished" line per epoch
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # nor "progress bars disabled"


class Augment:
    """Train-time frame augmentation (the manifest's `train_augmentation`): a random crop of at least
    `crop_min_area` of the frame, aspect 3:4 to 4:3, resized back to the frame size, and a random
    horizontal flip; the same crop and flip for every frame of a clip. Fresh randomness on every
    pass, as with torchvision transforms in a DataLoader."""

    def __init__(self, spec: dict):
        self.min_area = float(spec.get("crop_min_area", 1.0))
        self.flip = bool(spec.get("horizontal_flip", False))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # Ray's arrays are read-only
        return {**batch, "frames": self.clips(torch.from_numpy(np.array(batch["frames"]))).numpy()}

    def clips(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) uint8 pixels (or float), on any device -> the same, augmented."""
        rng = np.random.default_rng()
        h, w = frames.shape[-2:]
        out = torch.empty_like(frames)
        for i, clip in enumerate(frames.float()):
            area, aspect = rng.uniform(self.min_area, 1.0), np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            ch, cw = min(h, round(h * np.sqrt(area / aspect))), min(w, round(w * np.sqrt(area * aspect)))
            top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            crop = torch.nn.functional.interpolate(clip[:, :, top:top + ch, left:left + cw], size=(h, w),
                                                   mode="bilinear", align_corners=False)
            crop = crop.flip(-1) if self.flip and rng.random() < 0.5 else crop
            out[i] = crop.round().clamp(0, 255) if out.dtype == torch.uint8 else crop
        return out


class DeviceDecode:
    """`decode_frames: device`: the pipeline carries each clip's JPEG blobs undecoded, and the data source
    decodes every batch on its device in one batched call (nvJPEG on a GPU; libjpeg-turbo on CPU, the
    same pixels as the host path's PIL). Train batches are augmented there too, after decoding."""

    def __init__(self, manifest: Manifest):
        augmentation = manifest.preprocessing.get("train_augmentation")
        self.augment = Augment(augmentation) if augmentation else None

    def __call__(self, clips, device: torch.device, train: bool) -> torch.Tensor:
        """B clips of T JPEG blobs -> (B, T, C, H, W) uint8 on `device`."""
        from torchvision.io import ImageReadMode, decode_jpeg  # imported here: only this setting needs it

        # bytearray: torch refuses to wrap read-only bytes without a warning
        blobs = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for clip in clips for blob in clip]
        frames = torch.stack(decode_jpeg(blobs, mode=ImageReadMode.RGB, device=device)).unflatten(0, (len(clips), -1))
        return self.augment.clips(frames) if train and self.augment is not None else frames


def open_split(root: str, manifest: Manifest, split: str, keep_indices: np.ndarray | None = None,
               decode_frames: str = "host") -> ray.data.Dataset:
    """A lazy Dataset of decoded rows of one split (optionally only the rows whose index is kept). With
    `decode_frames` "device" the frames stay JPEG blobs, for `DeviceDecode` in the data source."""
    if decode_frames == "device" and manifest.frames.encoding != "jpeg":
        raise UserError(f"{root}: decode_frames 'device' decodes JPEG frames on the device, but this dataset "
                        f"stores {manifest.frames.encoding} frames; use decode_frames 'host'")
    ds = ray.data.read_parquet(manifest.shard_paths(root, split), num_cpus=DATA_TASK_CPUS)
    ds = ds.select_columns(["index", "label", "audio", "frames"])
    if keep_indices is not None:
        ds = ds.filter(expr=col("index").is_in([int(i) for i in keep_indices]), num_cpus=DATA_TASK_CPUS)
    return ds.map_batches(Decode(manifest, frames=decode_frames == "host"), batch_format="numpy",
                          num_cpus=DATA_TASK_CPUS, batch_size=256)


def decoded_bytes(manifest: Manifest, split: str) -> int:
    f = manifest.frames
    # float32 audio, uint8 frames (normalised on the device), two int64s
    per_sample = 4 * int(np.prod(manifest.audio.shape)) + f.count * f.channels * f.height * f.width + 16
    return per_sample * manifest.split_size(split)


def load_splits(root: str, manifest: Manifest, splits=("train", "val"), keep_train: np.ndarray | None = None,
                decode_frames: str = "host") -> dict[str, ray.data.Dataset]:
    """Datasets for the training loop: cached in the object store when small (see CACHE_LIMIT_BYTES).

    `keep_train` restricts train to those sample indices (a filtered view, not a copy of the shards).
    With the manifest's `train_augmentation`, "train" is augmented on every pass (after the cache)
    and "train_all" holds the frames as stored, for sweeps over train (see RayDataSource). With
    `decode_frames` "device" the frames stay JPEG blobs and `DeviceDecode` augments on the device instead.
    """
    datasets = {}
    cache = sum(decoded_bytes(manifest, s) for s in splits) <= CACHE_LIMIT_BYTES
    for split in splits:
        ds = open_split(root, manifest, split, keep_train if split == "train" else None, decode_frames)
        datasets[split] = ds.materialize() if cache else ds
    augmentation = manifest.preprocessing.get("train_augmentation")
    if augmentation and "train" in datasets and decode_frames == "host":
        datasets["train_all"] = datasets["train"]
        datasets["train"] = datasets["train"].map_batches(Augment(augmentation), batch_format="numpy",
                                                          num_cpus=DATA_TASK_CPUS, batch_size=64)
    return datasets


class RayDataSource:
    """The `DataSource` (mmray/data/source.py) of Ray runs: shuffled train batches per epoch, ordered eval batches.

    `splits` maps a split name to a Ray Dataset or a DataIterator (a Train worker's shard);
    both stream through `iter_torch_batches`, except a split cached in the object store
    (materialized): its blocks are fetched into this process once (`CachedSplit`) and batched here
    every pass, without the start-up of a Ray Data execution per pass (train, validation and any
    sweep, every epoch). Under Ray Train, "train" is this worker's streaming split, which
    balances rows across workers (and may drop a few per epoch); "train_all" is this worker's own
    share of the whole split (`own_share`), so a sweep over train reads every row
    exactly once across workers, and each worker reads only its rows.

    With `jpeg` (a `DeviceDecode`; the splits opened with decode_frames "device"), the rows carry
    JPEG blobs, and every batch is decoded on `device` here (train batches augmented after that).
    """

    def __init__(self, splits: dict, batch_size: int, seed: int, device: torch.device,
                 shuffle_buffer: int = 1024, jpeg: DeviceDecode | None = None):
        self.splits = splits
        self.batch_size = batch_size
        self.seed = seed
        self.device = device
        self.shuffle_buffer = shuffle_buffer
        self.jpeg = jpeg
        self._cached: dict[str, CachedSplit] = {}

    def _iterate(self, split: str, shuffle_seed: int | None, train: bool = False) -> Iterator[Batch]:
        if isinstance(self.splits[split], MaterializedDataset):
            if split not in self._cached:
                self._cached[split] = CachedSplit(self.splits[split], self.jpeg)
            yield from self._cached[split].batches(self.batch_size, shuffle_seed, self.device, train)
            return
        options = dict(batch_size=self.batch_size, prefetch_batches=2, local_shuffle_seed=shuffle_seed,
                       local_shuffle_buffer_size=self.shuffle_buffer if shuffle_seed is not None else None)
        if self.jpeg is None:
            for b in self.splits[split].iter_torch_batches(device=self.device, **options):
                yield Batch(audio=b["audio"], frames=b["frames"], label=b["label"], index=b["index"])
            return
        # JPEG blobs are no tensor: numpy batches, the fixed-size columns copied to the device here
        for b in self.splits[split].iter_batches(batch_format="numpy", **options):
            yield Batch(**{key: torch.tensor(b[key]).to(self.device) for key in ("audio", "label", "index")},
                        frames=self.jpeg(b["frames"], self.device, train))

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        """This worker's part of train, shuffled; the order depends only on (seed, epoch)."""
        return self._iterate("train", shuffle_seed=self.seed * 100_003 + epoch, train=True)

    def eval_batches(self, split: str) -> Iterator[Batch]:
        """A split in stored order, unshuffled. For "train": this worker's share, every row exactly
        once across workers (under Ray Train, "train_all" holds only this worker's rows), not augmented."""
        if split != "train":
            return self._iterate(split, shuffle_seed=None)
        return self._iterate("train_all" if "train_all" in self.splits else "train", shuffle_seed=None)


class CachedSplit:
    """A materialized split's blocks as tensors in this process. Every trial `ray.get`s the same block
    objects, which the driver put in the object store once (tests/test_scale.py); a batch gathers
    its rows from the blocks. With `jpeg`, the frames are JPEG blobs, kept as one list over all rows
    and decoded per batch."""

    def __init__(self, dataset: MaterializedDataset, jpeg: DeviceDecode | None = None):
        self.jpeg = jpeg
        self.blocks = []
        self.blobs = []  # with jpeg: row -> that clip's JPEG blobs, rows in block order
        names = ["audio", "label", "index"] if jpeg is not None else ["audio", "frames", "label", "index"]
        with warnings.catch_warnings():  # the mapped blocks are read-only; batches are gathered copies
            warnings.simplefilter("ignore", UserWarning)
            for bundle in dataset.iter_internal_ref_bundles():
                for ref in bundle.block_refs:
                    block = BlockAccessor.for_block(ray.get(ref))
                    columns = block.to_numpy(names)
                    if len(columns["label"]):
                        self.blocks.append({k: torch.from_numpy(np.asarray(v)) for k, v in columns.items()})
                        self.blobs.extend(block.to_numpy("frames") if jpeg is not None else ())
        sizes = torch.tensor([len(b["label"]) for b in self.blocks])
        self.starts = torch.cumsum(sizes, 0) - sizes
        self.rows = int(sizes.sum())

    def batches(self, batch_size: int, shuffle_seed: int | None, device: torch.device,
                train: bool = False) -> Iterator[Batch]:
        """Batches in stored order, or in an order drawn from `shuffle_seed` (the same for the same seed);
        `train`: augmented, where `jpeg` augments."""
        order = (torch.randperm(self.rows, generator=torch.Generator().manual_seed(shuffle_seed))
                 if shuffle_seed is not None else torch.arange(self.rows))
        for start in range(0, self.rows, batch_size):
            rows = order[start:start + batch_size]
            block = torch.searchsorted(self.starts, rows, right=True) - 1
            parts = {key: torch.empty((len(rows), *self.blocks[0][key].shape[1:]), dtype=self.blocks[0][key].dtype)
                     for key in self.blocks[0]}
            for b in block.unique().tolist():
                picked = (block == b).nonzero().squeeze(1)
                for key, out in parts.items():
                    out[picked] = self.blocks[b][key][rows[picked] - self.starts[b]]
            batch = {key: t.to(device, non_blocking=True) for key, t in parts.items()}
            if self.jpeg is not None:
                batch["frames"] = self.jpeg([self.blobs[r] for r in rows.tolist()], device, train)
            yield Batch(**batch)


def own_share(dataset: ray.data.Dataset, rank: int, world_size: int) -> ray.data.Dataset:
    """The rows of `dataset` whose index % world_size == rank: a filter in the plan, so a worker reads
    only its own rows, and every row belongs to exactly one worker."""
    return dataset.filter(expr=(col("index") % world_size) == rank, num_cpus=DATA_TASK_CPUS)
