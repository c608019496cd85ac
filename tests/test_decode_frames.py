"""decode_frames: device. The pipeline carries each clip's JPEG blobs undecoded and the data source decodes
every batch with torchvision's decode_jpeg; on CPU (here) that is libjpeg-turbo, PIL's pixels exactly."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from ray.data.dataset import MaterializedDataset

from mmray.data import synthetic
from mmray.data.manifest import load_manifest
from mmray.data.pipeline import DeviceDecode, RayDataSource, configure_data_context, load_splits, open_split
from mmray.data.shards import decode_pixels
from mmray.errors import UserError
from mmray.train.checkpoint import STATE_FILE
from mmray.train.config import TrainConfig
from mmray.train.launch import run_in_process
from mmray.tune.search import run_search
from mmray.tune.space import load_space
from mmray.tune.storage import RunOptions

CPU = torch.device("cpu")
AUGMENTATION = {"crop_min_area": 0.5, "horizontal_flip": True}


@pytest.fixture(scope="module")
def jpeg_synthetic(tmp_path_factory):
    folder = tmp_path_factory.mktemp("jpeg") / "synthetic-av"
    synthetic.prepare(folder, synthetic.SyntheticConfig(sizes=(96, 32, 16), frame_encoding="jpeg"))
    return folder


def _stored(folder, manifest, split) -> dict[int, torch.Tensor]:
    """index -> the host path's frames for that clip (PIL)."""
    table = pq.read_table(manifest.shard_paths(folder, split), columns=["index", "frames"]).to_pydict()
    return dict(zip(table["index"], torch.from_numpy(decode_pixels(table["frames"], manifest.frames))))


def _by_index(batches) -> dict[int, torch.Tensor]:
    out = {}
    for b in batches:
        assert b.frames.dtype == torch.uint8
        out.update(zip(b.index.tolist(), b.frames))
    return out


def _device_splits(folder, manifest, cached: bool) -> dict:
    if cached:
        return load_splits(str(folder), manifest, decode_frames="device")
    return {s: open_split(str(folder), manifest, s, decode_frames="device") for s in ("train", "val")}


def test_a_batch_decoded_on_the_device_has_the_host_pixels(jpeg_synthetic):
    manifest = load_manifest(jpeg_synthetic)
    clips = pq.read_table(manifest.shard_paths(jpeg_synthetic, "val"), columns=["frames"]).to_pydict()["frames"]
    frames = DeviceDecode(manifest)(clips, CPU, train=False)
    assert frames.shape == (len(clips), manifest.frames.count, 3, manifest.frames.height, manifest.frames.width)
    assert torch.equal(frames, torch.from_numpy(decode_pixels(clips, manifest.frames)))


def test_device_decoding_of_raw_frames_is_refused(tiny_synthetic):
    with pytest.raises(UserError, match=r"decode_frames 'device' .* stores raw frames; use decode_frames 'host'"):
        open_split(str(tiny_synthetic), load_manifest(tiny_synthetic), "train", decode_frames="device")


@pytest.mark.parametrize("cached", [True, False])
def test_cached_and_streamed_device_path_gives_the_host_frames(ray_local, jpeg_synthetic, cached):
    configure_data_context()
    manifest = load_manifest(jpeg_synthetic)
    splits = _device_splits(jpeg_synthetic, manifest, cached)
    assert isinstance(splits["val"], MaterializedDataset) == cached
    row = splits["val"].take(1)[0]  # what Ray Data carries: the stored JPEGs, not decoded on the host
    assert [bytes(blob[:2]) for blob in row["frames"]] == [b"\xff\xd8"] * manifest.frames.count
    source = RayDataSource(splits, 16, 0, CPU, shuffle_buffer=32, jpeg=DeviceDecode(manifest))
    for split in ("train", "val"):
        stored = _stored(jpeg_synthetic, manifest, split)
        passes = [source.eval_batches(split)] + ([source.train_batches(0)] if split == "train" else [])
        for batches in passes:
            decoded = _by_index(batches)
            assert decoded.keys() == stored.keys()
            assert all(torch.equal(decoded[i], stored[i]) for i in stored)


@pytest.mark.parametrize("cached", [True, False])
def test_train_batches_are_augmented_on_the_device_and_sweeps_see_the_stored_frames(ray_local, jpeg_synthetic,
                                                                                     cached):
    configure_data_context()
    manifest = load_manifest(jpeg_synthetic)
    manifest = dataclasses.replace(manifest, preprocessing={**manifest.preprocessing,
                                                            "train_augmentation": AUGMENTATION})
    splits = _device_splits(jpeg_synthetic, manifest, cached)
    assert set(splits) == {"train", "val"}  # no host augmentation (nor its un-augmented train_all)
    source = RayDataSource(splits, 16, 0, CPU, shuffle_buffer=32, jpeg=DeviceDecode(manifest))
    stored = _stored(jpeg_synthetic, manifest, "train")
    swept, trained = _by_index(source.eval_batches("train")), _by_index(source.train_batches(0))
    assert swept.keys() == trained.keys() == stored.keys()
    assert all(torch.equal(swept[i], stored[i]) for i in stored)
    assert sum(not torch.equal(trained[i], stored[i]) for i in stored) > 0.8 * len(stored)


def test_an_in_process_run_with_device_decoding_trains_as_the_host_path(ray_local, jpeg_synthetic, tmp_path):
    settings = {"data_dir": str(jpeg_synthetic), "epochs": 1, "width": 8, "batch_size": 32}
    runs = {}
    for where in ("host", "device"):
        cfg = TrainConfig.from_flat({**settings, "decode_frames": where})
        runs[where], best = run_in_process(cfg, tmp_path / where, quiet=True)
        assert (best / STATE_FILE).is_file()
    assert runs["device"]["epoch"] == 1 and np.isfinite(runs["device"]["train/loss"])
    # The same pixels in the same order: the same training, to rounding.
    for key in ("train/loss", "val/fused_acc", "val/gap"):
        assert runs["device"][key] == pytest.approx(runs["host"][key], rel=1e-5, abs=1e-6), key


def test_a_two_worker_search_trial_decodes_on_its_workers(ray_local, jpeg_synthetic, tmp_path):
    # Ray Train: each worker streams its split of train and its own share (own_share) as JPEG blobs.
    space = {"method": "joint", "dataset": "synthetic-av", "data_dir": str(jpeg_synthetic),
             "metric": "val/fused_acc", "mode": "max", "num_samples": 1, "scheduler": {"type": "fifo"},
             "resources": {"workers": 2, "cpus_per_worker": 0.5},
             "fixed": {"epochs": 1, "batch_size": 16, "width": 8, "decode_frames": "device"}}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    best = run_search(load_space(str(tmp_path / "space.yaml")), RunOptions(storage=tmp_path / "results", name="jpeg"))
    assert best["config"]["decode_frames"] == "device"
    assert len(list((tmp_path / "results" / "jpeg" / "train").glob("train-*"))) == 1, "the trial ran Ray Train"
    assert 0.0 <= best["test"]["test/fused_acc"] <= 1.0
