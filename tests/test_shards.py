"""Prepared dataset folders: synthetic-av generation, Parquet shards, manifest checks, staged output.

(mmray/data/synthetic.py, mmray/data/shards.py, mmray/data/manifest.py). Pure pyarrow/numpy: no Ray.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mmray.data import synthetic
from mmray.data.manifest import MANIFEST_FILE, SPLITS, load_manifest
from mmray.data.shards import decode_audio, decode_frames, staged_output
from mmray.errors import UserError

CFG = synthetic.SyntheticConfig(sizes=(64, 16, 16), seed=3)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepared") / "d"
    manifest = synthetic.prepare(root, CFG)
    return root, manifest


def read_split(root: Path, manifest, split: str):
    import pyarrow as pa
    return pa.concat_tables([pq.read_table(p) for p in manifest.shard_paths(root, split)])


def file_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def load_error(root: Path) -> str:
    """The message of the UserError load_manifest(root) raises; any other outcome fails with a clear assertion."""
    try:
        load_manifest(root)
    except Exception as e:  # noqa: BLE001 - a non-UserError here is the bug being reported
        assert isinstance(e, UserError), f"load_manifest raised {type(e).__name__}({e}) instead of a UserError"
        return str(e)
    raise AssertionError(f"load_manifest({root}) accepted a bad folder")


# --- a prepared folder --------------------------------------------------------------------------------------------


def test_prepare_writes_a_folder_that_verifies(prepared):
    root, manifest = prepared
    loaded = load_manifest(root)  # verify=True: sizes, checksums and row counts
    assert loaded.dataset == "synthetic-av"
    assert loaded.shards == manifest.shards
    assert loaded.audio == manifest.audio and loaded.frames == manifest.frames
    assert loaded.num_classes == CFG.num_classes
    assert not (root.parent / "d.partial").exists()


def test_split_sizes_match_the_config(prepared):
    root, manifest = prepared
    for split, n in zip(SPLITS, CFG.sizes):
        assert manifest.split_size(split) == n
        assert read_split(root, manifest, split).num_rows == n
    on_disk = json.loads((root / MANIFEST_FILE).read_text())
    assert on_disk["split_sizes"] == dict(zip(SPLITS, CFG.sizes))


def test_shard_rows_have_unique_indices_and_ids(prepared):
    root, manifest = prepared
    table = read_split(root, manifest, "train")
    assert sorted(table.column("index").to_pylist()) == list(range(CFG.sizes[0]))
    assert len(set(table.column("sample_id").to_pylist())) == CFG.sizes[0]


def test_labels_are_balanced(prepared):
    root, manifest = prepared
    for split, n in zip(SPLITS, CFG.sizes):
        counts = Counter(read_split(root, manifest, split).column("label").to_pylist())
        assert set(counts) == set(range(CFG.num_classes))
        assert max(counts.values()) - min(counts.values()) <= 1
        assert sum(counts.values()) == n


@pytest.mark.parametrize("fraction", [0.1, 0.25])
def test_corruption_columns_have_the_configured_fractions(tmp_path, fraction):
    cfg = replace(CFG, corrupt_fraction=fraction, silent_fraction=0.3)
    manifest = synthetic.prepare(tmp_path / "d", cfg)
    assert manifest.metadata_columns == ["corrupted", "corruption"]
    for split, n in zip(SPLITS, cfg.sizes):
        table = read_split(tmp_path / "d", manifest, split)
        modality, kind = table.column("corrupted").to_pylist(), table.column("corruption").to_pylist()
        kinds = Counter(kind)
        bad = int(round(fraction * n))  # the generator rounds the fraction of each split to whole samples
        assert kinds["noise"] + kinds["wrong-class"] == bad
        assert kinds["noise"] > 0 and (kinds["wrong-class"] > 0 or bad < 3)  # noise, noise, wrong, wrong, ...
        assert 0 < kinds["silent"] < n  # drawn with probability 0.3 per clip
        # A silent clip is an audio corruption; noise and wrong-class alternate between the modalities.
        assert all(m == "audio" for m, k in zip(modality, kind) if k == "silent")
        assert all((m == "none") == (k == "none") for m, k in zip(modality, kind))
        others = Counter(m for m, k in zip(modality, kind) if k in ("noise", "wrong-class"))
        assert abs(others["audio"] - others["visual"]) <= 1
        assert set(kinds) <= {"none", "silent", "noise", "wrong-class"}


def test_decoded_arrays_have_the_manifest_shapes(prepared):
    root, manifest = prepared
    table = read_split(root, manifest, "val")
    audio = decode_audio(table.column("audio").to_pylist(), manifest.audio)
    frames = decode_frames(table.column("frames").to_pylist(), manifest.frames)
    n = CFG.sizes[1]
    assert audio.shape == (n, *manifest.audio.shape) == (n, 1, CFG.freq_bins, CFG.time_frames)
    f = manifest.frames
    assert frames.shape == (n, f.count, f.channels, f.height, f.width) == (n, CFG.frames, 3, CFG.image_size,
                                                                         CFG.image_size)
    assert audio.dtype == np.float32 and frames.dtype == np.float32
    assert np.isfinite(audio).all() and np.isfinite(frames).all()


def test_shards_hold_exactly_what_the_generator_made(prepared):
    root, manifest = prepared
    table = read_split(root, manifest, "train")
    made = synthetic.generate_split(CFG, "train", CFG.sizes[0])
    assert table.column("label").to_pylist() == list(made["label"])
    assert table.column("corrupted").to_pylist() == made["corrupted"]
    assert table.column("corruption").to_pylist() == made["corruption"]
    np.testing.assert_array_equal(decode_audio(table.column("audio").to_pylist(), manifest.audio),
                                  decode_audio(made["audio"], manifest.audio))
    raw = np.stack([[np.frombuffer(b, np.uint8) for b in clip] for clip in table.column("frames").to_pylist()])
    expected = np.stack([[np.frombuffer(b, np.uint8) for b in clip] for clip in made["frames"]])
    np.testing.assert_array_equal(raw, expected)


def _pixels(frames: np.ndarray, spec) -> np.ndarray:
    """Undo decode_frames' normalisation: back to 0..255 pixel values."""
    mean = np.asarray(spec.mean, np.float32)[:, None, None]
    std = np.asarray(spec.std, np.float32)[:, None, None]
    return (frames * std + mean) * 255.0


def test_raw_frames_decode_to_the_exact_pixels(prepared):
    root, manifest = prepared
    clip = read_split(root, manifest, "val").column("frames").to_pylist()[:1]
    decoded = _pixels(decode_frames(clip, manifest.frames), manifest.frames)
    expected = np.stack([np.frombuffer(b, np.uint8).reshape(24, 24, 3) for b in clip[0]]).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(decoded[0], expected, atol=1e-3)


@pytest.fixture(scope="module")
def raw_and_jpeg_pixels(tmp_path_factory):
    out = []
    for encoding in ("raw", "jpeg"):
        root = tmp_path_factory.mktemp(encoding) / "d"
        manifest = synthetic.prepare(root, replace(CFG, frame_encoding=encoding))
        assert manifest.frames.encoding == encoding
        column = read_split(root, manifest, "val").column("frames").to_pylist()
        out.append(_pixels(decode_frames(column, manifest.frames), manifest.frames))
    return out


def test_jpeg_frames_keep_the_low_frequency_content(raw_and_jpeg_pixels):
    raw, jpeg = raw_and_jpeg_pixels
    assert raw.shape == jpeg.shape
    # 4x4 block means per channel (where the class pattern lives) survive JPEG well.
    blocks = lambda x: x.reshape(*x.shape[:3], 6, 4, 6, 4).mean(axis=(4, 6))
    assert np.abs(blocks(raw) - blocks(jpeg)).mean() < 4.0


def test_jpeg_frames_round_trip_close_to_raw(raw_and_jpeg_pixels):
    raw, jpeg = raw_and_jpeg_pixels
    error = np.abs(raw - jpeg).mean()
    # Quality-95 JPEG without chroma subsampling is within ~3 levels here; 4:2:0 subsampling (PIL's default) gives ~25.
    assert error < 6.0, (f"mean abs pixel error of jpeg vs raw frames is {error:.1f}/255: "
                         "encode_frames' JPEG is far from lossless (chroma subsampling?)")


# --- determinism --------------------------------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_shards(prepared, tmp_path):
    root, manifest = prepared
    again = synthetic.prepare(tmp_path / "d", CFG)
    assert again.shards == manifest.shards  # names, rows, sizes and sha256
    first, second = file_bytes(root), file_bytes(tmp_path / "d")
    assert first.keys() == second.keys()
    for name in first:
        if name.endswith(".parquet"):
            assert first[name] == second[name], name
            assert hashlib.sha256(second[name]).hexdigest() in {s.sha256 for f in again.shards.values() for s in f}


def test_different_seed_gives_different_data(prepared, tmp_path):
    root, manifest = prepared
    other = synthetic.prepare(tmp_path / "d", replace(CFG, seed=CFG.seed + 1))
    for split in SPLITS:
        assert {s.sha256 for s in other.shards[split]}.isdisjoint({s.sha256 for s in manifest.shards[split]})
    a = read_split(root, manifest, "train").column("audio").to_pylist()
    b = read_split(tmp_path / "d", other, "train").column("audio").to_pylist()
    assert a != b


# --- refusing a bad folder ----------------------------------------------------------------------------------------


@pytest.fixture
def copy_of(prepared, tmp_path):
    root, manifest = prepared
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    return copy, manifest


def test_tampered_shard_is_refused_by_name(copy_of):
    root, manifest = copy_of
    shard = root / manifest.shards["val"][0].file
    with open(shard, "ab") as f:
        f.write(b"\0")
    with pytest.raises(UserError, match="does not match") as info:
        load_manifest(root)
    assert str(shard) in str(info.value)
    load_manifest(root, verify=False)  # the manifest itself is still fine


def test_same_size_tampering_is_caught_by_the_checksum(copy_of):
    root, manifest = copy_of
    shard = root / manifest.shards["train"][0].file
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(UserError) as info:
        load_manifest(root)
    assert str(shard) in str(info.value)


def test_missing_shard_is_refused_by_name(copy_of):
    root, manifest = copy_of
    shard = root / manifest.shards["test"][0].file
    shard.unlink()
    with pytest.raises(UserError, match="missing") as info:
        load_manifest(root)
    assert str(shard) in str(info.value)


@pytest.mark.parametrize("text", ["{not json", '{"format_version": 1}', "[]"])
def test_corrupt_manifest_is_refused_by_name(copy_of, text):
    root, _ = copy_of
    (root / MANIFEST_FILE).write_text(text)
    assert str(root / MANIFEST_FILE) in load_error(root)


@pytest.mark.parametrize("key, value", [
    ("shards", []), ("frames", []), ("class_names", None), ("audio", {"shape": [1, 32, 32]}),
])
def test_malformed_manifest_is_refused_by_name(copy_of, key, value):
    root, _ = copy_of
    raw = json.loads((root / MANIFEST_FILE).read_text())
    raw[key] = value
    (root / MANIFEST_FILE).write_text(json.dumps(raw))
    assert str(root / MANIFEST_FILE) in load_error(root)


def _edit_manifest(root, edit) -> None:
    raw = json.loads((root / MANIFEST_FILE).read_text())
    edit(raw)
    (root / MANIFEST_FILE).write_text(json.dumps(raw))


@pytest.mark.parametrize("edit, words", [
    (lambda m: m.update(class_names="abcdefghij"), "class_names"),
    (lambda m: m.update(class_names=[1, 2, 3]), "class_names"),
    (lambda m: m["audio"].update(shape=[1, 32, 16]), "audio.shape [1, 32, 16]"),
    (lambda m: m["audio"].update(shape=[1, "32", 32]), "audio.shape"),
    (lambda m: m["audio"].update(dtype="float32"), "float32"),
    (lambda m: m["frames"].update(count=5), "frames"),
    (lambda m: m["frames"].update(height=48), "frames"),
    (lambda m: m["shards"]["train"][0].update(file=7), "shards.train[0].file"),
    (lambda m: m["shards"]["val"][0].update(file="../elsewhere.parquet"), "shards.val[0].file"),
    (lambda m: m["shards"]["test"][0].update(rows="12"), "shards.test[0]"),
])
def test_manifest_of_wrong_types_or_shapes_is_refused_naming_the_key(copy_of, edit, words):
    root, _ = copy_of
    _edit_manifest(root, edit)
    message = load_error(root)
    assert str(root / MANIFEST_FILE) in message and words in message, message


def test_wrong_format_version_is_refused(copy_of):
    root, _ = copy_of
    raw = json.loads((root / MANIFEST_FILE).read_text())
    raw["format_version"] = 99
    (root / MANIFEST_FILE).write_text(json.dumps(raw))
    with pytest.raises(UserError, match="format_version"):
        load_manifest(root)


def test_missing_folder_is_refused(tmp_path):
    with pytest.raises(UserError) as info:
        load_manifest(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value)


def test_folder_without_manifest_is_refused(tmp_path):
    with pytest.raises(UserError, match="no manifest") as info:
        load_manifest(tmp_path)
    assert str(tmp_path) in str(info.value)


# --- staged output ------------------------------------------------------------------------------------------------


def test_exception_inside_staged_output_leaves_nothing(tmp_path):
    out = tmp_path / "d"
    with pytest.raises(RuntimeError, match="boom"):
        with staged_output(out) as staging:
            (staging / "train").mkdir()
            (staging / "train" / "part-00000.parquet").write_bytes(b"half")
            raise RuntimeError("boom")
    assert not out.exists()
    assert not (tmp_path / "d.partial").exists()
    assert list(tmp_path.iterdir()) == []


def test_exception_keeps_the_previous_dataset(prepared, tmp_path):
    root, _ = prepared
    out = tmp_path / "d"
    shutil.copytree(root, out)
    before = file_bytes(out)
    with pytest.raises(RuntimeError):
        with staged_output(out, force=True):
            raise RuntimeError("crash while re-preparing")
    assert file_bytes(out) == before
    assert not (tmp_path / "d.partial").exists()


def test_prepare_refuses_an_existing_dataset_without_force(prepared, tmp_path):
    root, _ = prepared
    out = tmp_path / "d"
    shutil.copytree(root, out)
    before = file_bytes(out)
    with pytest.raises(UserError, match="force") as info:
        synthetic.prepare(out, replace(CFG, seed=99))
    assert str(out) in str(info.value)
    assert file_bytes(out) == before
    assert not (tmp_path / "d.partial").exists()


def test_prepare_with_force_replaces_the_dataset(prepared, tmp_path):
    root, manifest = prepared
    out = tmp_path / "d"
    shutil.copytree(root, out)
    new = synthetic.prepare(out, replace(CFG, seed=99), force=True)
    assert load_manifest(out).shards == new.shards != manifest.shards
    assert not (tmp_path / "d.partial").exists()


def test_prepare_refuses_a_non_empty_folder_that_is_not_a_dataset(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a prepared dataset"):
        synthetic.prepare(out, CFG, force=True)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "mine"


def test_prepare_into_an_empty_existing_folder(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    synthetic.prepare(out, CFG)
    assert load_manifest(out).split_size("train") == CFG.sizes[0]


def test_prepare_onto_an_existing_file_is_a_user_error(tmp_path):
    out = tmp_path / "d"
    out.write_text("mine")
    try:
        synthetic.prepare(out, CFG)
    except Exception as e:  # noqa: BLE001 - a non-UserError here is the bug being reported
        assert isinstance(e, UserError), f"prepare raised {type(e).__name__}({e}) instead of a UserError"
        assert str(out) in str(e)
    else:
        raise AssertionError("prepare wrote over an existing file")
    assert out.read_text() == "mine"
    assert not (tmp_path / "d.partial").exists()
