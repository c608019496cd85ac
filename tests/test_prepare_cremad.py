"""`mmray prepare cremad` on fixtures in CREMA-D's real layouts: WAV + frame folders with the
BOM/CRLF split lists; WAV + FLV without lists; an interrupted run resumed to the same bytes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torchaudio

from mmray.data.pipeline import RayDataSource, configure_data_context, load_splits
from mmray.data.shards import decode_pixels
from mmray.errors import UserError
from rawdata import check_prepared, make_cremad, prepare, read_wav, stored_audio, train_one_epoch

SMALL = ("--audio-seconds", "1", "--frames-per-clip", "2", "--image-size", "32", "--rows-per-shard", "8")


def ogm_ge_spectrogram(path: Path) -> np.ndarray:
    """The CREMA-D recipe, computed directly: 22,050 Hz, tiled to the length, n_fft 512, hop 353, log."""
    samples, rate = read_wav(path)
    x = torchaudio.functional.resample(torch.from_numpy(samples), rate, 22050)
    x = x.repeat(3)[:22050].clamp(-1, 1)  # 1 s here (3 s by default)
    magnitude = torchaudio.transforms.Spectrogram(n_fft=512, hop_length=353, power=1.0)(x)
    return torch.log(magnitude + 1e-7)[None].numpy().astype(np.float16)


def test_cremad_frames_with_official_lists(ray_local, tmp_path):
    raw = tmp_path / "CREMA-D"
    expected = make_cremad(raw)
    out = tmp_path / "cremad"
    manifest = prepare("cremad", raw, out, *SMALL, "--val-fraction", "0.2", "--max-skipped", "0.2")
    manifest, rows = check_prepared(out, expected, image_size=32)
    assert manifest.audio.shape == (1, 257, 63)
    assert "official lists" in manifest.preprocessing["splits"]["test"]
    # The test split is exactly test.csv; val is carved from train.csv, one clip of every class at least.
    assert {r["sample_id"] for r in rows.values() if r["split"] == "test"} == {
        n for n in expected["names"] if n.startswith("1003_IEO")}
    assert manifest.preprocessing["counts"]["val"]["listed"] == 6
    assert len({r["label"] for r in rows.values() if r["split"] == "val"}) >= 5  # a carved clip may be a bad one
    for sample_id in ("1002_DFA_FEA_XX", "1003_IEO_ANG_XX"):
        row = rows[sample_id]
        assert manifest.class_names[row["label"]] == sample_id.split("_")[2]
        np.testing.assert_array_equal(stored_audio(row, manifest),
                                      ogm_ge_spectrogram(raw / "AudioWAV" / f"{sample_id}.wav"))
    _train_frames_are_augmented_and_sweeps_see_them_as_stored(out, manifest)
    train_one_epoch(out, "cremad", tmp_path / "run")


def _train_frames_are_augmented_and_sweeps_see_them_as_stored(out, manifest):
    configure_data_context()
    splits = load_splits(str(out), manifest)
    assert set(splits) == {"train", "train_all", "val"}
    source = RayDataSource(splits, 8, 0, torch.device("cpu"))
    by_index = lambda batches: {int(i): f for b in batches for i, f in zip(b.index, b.frames)}
    stored, trained = by_index(source.eval_batches("train")), by_index(source.train_batches(0))
    assert stored.keys() == trained.keys()
    shards = pq.read_table(manifest.shard_paths(out, "train")).to_pydict()
    decoded = decode_pixels(shards["frames"], manifest.frames)  # what the pipeline carries: uint8
    for i, index in enumerate(shards["index"]):
        np.testing.assert_array_equal(stored[index].numpy(), decoded[i])
    assert sum(not torch.equal(stored[i], trained[i]) for i in stored) > 0.8 * len(stored)


def test_cremad_flv_without_lists_fails_above_the_skip_threshold_then_resumes(ray_local, tmp_path):
    raw = tmp_path / "CREMA-D"
    expected = make_cremad(raw, actors=(1001, 1002, 1003, 1004), video="flv", lists=False)
    out = tmp_path / "cremad"
    options = (*SMALL, "--speaker-disjoint", "--test-fraction", "0.25", "--val-fraction", "0.2")
    with pytest.raises(UserError, match=r"3 of 48 clips skipped \(6\.\d%\), more than --max-skipped 5%"):
        prepare("cremad", raw, out, *options)
    assert not out.exists() and not (out.with_name("cremad.partial") / "manifest.json").exists()
    prepare("cremad", raw, out, *options, "--max-skipped", "0.1")
    manifest, rows = check_prepared(out, expected, image_size=32)
    assert manifest.preprocessing["splits"]["video_source"] == "video"
    actors = {split: {r["sample_id"][:4] for r in rows.values() if r["split"] == split} for split in ("train", "test")}
    assert len(actors["test"]) == 1 and not actors["test"] & actors["train"]  # speaker-disjoint
    row = rows["1002_IEO_DIS_XX"]
    np.testing.assert_array_equal(stored_audio(row, manifest), ogm_ge_spectrogram(raw / "AudioWAV" / "1002_IEO_DIS_XX.wav"))


def _prepare_command(raw: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "mmray", "prepare", "cremad", "--root", str(raw), "--out", str(out), "--quiet",
            "--workers", "1", "--audio-seconds", "1", "--frames-per-clip", "2", "--image-size", "32",
            "--rows-per-shard", "2", "--val-fraction", "0.2", "--max-skipped", "0.2"]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_killed_prepare_resumes_to_byte_identical_shards(no_ray, tmp_path):
    raw = tmp_path / "CREMA-D"
    make_cremad(raw)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # the session's Ray is gone
    reference = tmp_path / "reference"
    subprocess.run(_prepare_command(raw, reference), check=True, env=env, timeout=300)

    out = tmp_path / "resumed"
    progress = out.with_name("resumed.partial") / ".progress"
    # Its own process group: the kill takes the driver and the Ray it started, like a killed terminal.
    run = subprocess.Popen(_prepare_command(raw, out), env=env, start_new_session=True)
    deadline = time.monotonic() + 240
    while not (progress.is_dir() and any(progress.glob("*.json"))):
        assert run.poll() is None and time.monotonic() < deadline, "prepare ended before writing a shard"
        time.sleep(0.01)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    done = len(list(progress.glob("*.json")))
    assert not out.exists() and 1 <= done < 18  # interrupted part-way: 35 clips in 2-clip shards

    subprocess.run(_prepare_command(raw, out), check=True, env=env, timeout=300)
    assert _files(out) == _files(reference)


@pytest.mark.parametrize("video", ["frames", "flv"])
def test_clips_of_one_modality_only_are_named_without_split_lists(tmp_path, video):
    import shutil

    from mmray.data.prepare.cremad import CremadOptions, plan

    raw = tmp_path / "CREMA-D"
    expected = make_cremad(raw, actors=(1001, 1002), video=video, lists=False, image=16)
    no_audio, no_visual = expected["names"][5], expected["names"][6]
    (raw / "AudioWAV" / f"{no_audio}.wav").unlink()
    if video == "frames":
        shutil.rmtree(raw / "Image-01-FPS" / no_visual)
    else:
        (raw / "VideoFlash" / f"{no_visual}.flv").unlink()
    result = plan(raw, CremadOptions(root=str(raw)), None)
    skipped = {s["sample_id"]: s["reason"] for s in result.skipped}
    assert skipped[no_audio].startswith("no audio file: missing file")
    assert skipped[no_visual].startswith("no frames" if video == "frames" else "no video")
    planned = {c.sample_id for c in result.clips}
    assert planned | set(skipped) == set(expected["names"]) and not planned & set(skipped)
