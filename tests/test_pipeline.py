"""The Ray Data path on a real local Ray: every row once, shapes from the manifest, seeded order."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import torch

from mmray.data import synthetic
from mmray.data.manifest import load_manifest
from mmray.data.pipeline import RayDataSource, configure_data_context, load_splits, open_split


def _source(folder, manifest, seed=0, cached=True, batch_size=32):
    splits = load_splits(str(folder), manifest) if cached else {
        s: open_split(str(folder), manifest, s) for s in ("train", "val")}
    return RayDataSource(splits, batch_size, seed, torch.device("cpu"), shuffle_buffer=128)


def _order(source, epoch):
    return torch.cat([b.index for b in source.train_batches(epoch)]).tolist()


def test_every_train_row_once_with_manifest_shapes(ray_local, tiny_synthetic):
    configure_data_context()
    manifest = load_manifest(tiny_synthetic)
    source = _source(tiny_synthetic, manifest)
    batches = list(source.train_batches(0))
    indices = torch.cat([b.index for b in batches])
    assert sorted(indices.tolist()) == list(range(manifest.split_size("train")))
    first = batches[0]
    assert first.audio.shape[1:] == manifest.audio.shape and first.audio.dtype == torch.float32
    f = manifest.frames
    assert first.frames.shape[1:] == (f.count, f.channels, f.height, f.width)
    assert first.label.dtype == torch.int64


def test_labels_match_the_stored_rows(ray_local, tiny_synthetic):
    configure_data_context()
    manifest = load_manifest(tiny_synthetic)
    stored = pq.read_table(manifest.shard_paths(tiny_synthetic, "val")).to_pydict()
    by_index = dict(zip(stored["index"], stored["label"]))
    for batch in _source(tiny_synthetic, manifest).eval_batches("val"):
        assert all(by_index[i] == l for i, l in zip(batch.index.tolist(), batch.label.tolist()))


def test_order_is_deterministic_for_a_seed_and_shuffled_per_epoch(ray_local, tiny_synthetic):
    configure_data_context()
    manifest = load_manifest(tiny_synthetic)
    a, b = _source(tiny_synthetic, manifest, seed=3), _source(tiny_synthetic, manifest, seed=3)
    assert _order(a, 0) == _order(b, 0)
    assert _order(a, 0) != _order(a, 1)
    assert _order(a, 0) != _order(_source(tiny_synthetic, manifest, seed=4), 0)
    assert _order(a, 0) != sorted(_order(a, 0))
    # Evaluation keeps the stored order.
    val = torch.cat([x.index for x in a.eval_batches("val")]).tolist()
    assert val == list(range(manifest.split_size("val")))


def test_streaming_from_shards_gives_the_same_rows_as_the_cache(ray_local, tiny_synthetic):
    configure_data_context()
    manifest = load_manifest(tiny_synthetic)
    cached = list(_source(tiny_synthetic, manifest, cached=True).eval_batches("val"))
    streamed = list(_source(tiny_synthetic, manifest, cached=False).eval_batches("val"))
    assert torch.equal(torch.cat([b.audio for b in cached]), torch.cat([b.audio for b in streamed]))
    assert torch.equal(torch.cat([b.frames for b in cached]), torch.cat([b.frames for b in streamed]))


def test_jpeg_frames_are_decoded_in_the_pipeline(ray_local, tmp_path):
    configure_data_context()
    cfg = dict(sizes=(32, 16, 16))
    raw_dir, jpeg_dir = tmp_path / "raw", tmp_path / "jpeg"
    synthetic.prepare(raw_dir, synthetic.SyntheticConfig(**cfg))
    synthetic.prepare(jpeg_dir, synthetic.SyntheticConfig(**cfg, frame_encoding="jpeg"))
    frames = {}
    for folder in (raw_dir, jpeg_dir):
        manifest = load_manifest(folder)
        frames[folder.name] = torch.cat([b.frames for b in _source(folder, manifest).eval_batches("val")])
    assert frames["raw"].shape == frames["jpeg"].shape
    # JPEG is lossy on noise-like pixels, but the decoded frames must be the same images.
    corr = np.corrcoef(frames["raw"].flatten().numpy(), frames["jpeg"].flatten().numpy())[0, 1]
    assert corr > 0.9
