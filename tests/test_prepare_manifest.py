"""`mmray prepare manifest`: any dataset from a CSV (WAV + frame folders, or MP4 with its own audio)."""

from __future__ import annotations

import numpy as np
import torch
import torchaudio

from rawdata import check_prepared, make_csv_manifest, prepare, read_wav, stored_audio, train_one_epoch


def test_csv_manifest(ray_local, tmp_path):
    raw = tmp_path / "mydata"
    expected = make_csv_manifest(raw)
    out = tmp_path / "prepared"
    prepare("manifest", raw / "manifest.csv", out, "--name", "mydata", "--classes", str(raw / "classes.txt"),
            "--audio-frames", "100", "--frames-per-clip", "2", "--image-size", "32", "--rows-per-shard", "8",
            "--max-skipped", "0.2", "--val-fraction", "0.2")
    manifest, rows = check_prepared(out, expected, image_size=32)
    assert manifest.dataset == "mydata" and manifest.audio.shape == (1, 128, 100)
    assert {r["sample_id"] for r in rows.values() if r["split"] == "test"} == {
        f"{label}-{k}" for label in expected["classes"] for k in (0, 1)}
    samples, rate = read_wav(raw / "audio" / "mid-4.wav")
    x = torch.from_numpy(samples)  # already 16 kHz: no resampling
    f = torchaudio.compliance.kaldi.fbank((x - x.mean())[None], htk_compat=True, sample_frequency=16000,
                                          use_energy=False, window_type="hanning", num_mel_bins=128, dither=0.0,
                                          frame_shift=10)
    f = torch.nn.functional.pad(f, (0, 0, 0, 100 - len(f)))
    np.testing.assert_array_equal(stored_audio(rows["mid-4"], manifest), f.T[None].numpy().astype(np.float16))
    train_one_epoch(out, "mydata", tmp_path / "run")
