"""`mmray prepare kinetics-sounds` on a fixture in a real layout: class folders of MP4s, list files
`<clip_id>,<duration>,<label>`, and a class list that leaves out one listed class."""

from __future__ import annotations

import numpy as np
import torch
import torchaudio

from rawdata import check_prepared, make_kinetics_sounds, prepare, read_track, stored_audio, train_one_epoch


def fbank(path, frames: int) -> np.ndarray:
    """The Kinetics-Sounds recipe, computed directly: 16 kHz Kaldi fbank, 128 mel bins, 10 ms shift, padded."""
    samples, rate = read_track(path)
    x = torchaudio.functional.resample(torch.from_numpy(samples), rate, 16000)
    f = torchaudio.compliance.kaldi.fbank((x - x.mean())[None], htk_compat=True, sample_frequency=16000,
                                          use_energy=False, window_type="hanning", num_mel_bins=128, dither=0.0,
                                          frame_shift=10)
    f = torch.nn.functional.pad(f[:frames], (0, 0, 0, max(0, frames - len(f))))
    return f.T[None].numpy().astype(np.float16)


def test_kinetics_sounds(ray_local, tmp_path):
    raw = tmp_path / "kinetics-sounds"
    expected = make_kinetics_sounds(raw)
    out = tmp_path / "ks"
    prepare("kinetics-sounds", raw, out, "--classes", str(raw / "classes.txt"), "--audio-frames", "200",
            "--frames-per-clip", "3", "--image-size", "32", "--rows-per-shard", "8", "--max-skipped", "0.2",
            "--val-fraction", "0.2")
    manifest, rows = check_prepared(out, expected, image_size=32)
    assert manifest.audio.shape == (1, 128, 200)
    assert "stratified seeded" in manifest.preprocessing["splits"]["val"]
    sample_id = "ks02_000003"
    assert manifest.class_names[rows[sample_id]["label"]] == "dog barking"
    np.testing.assert_array_equal(stored_audio(rows[sample_id], manifest),
                                  fbank(raw / "videos" / "dog barking" / f"{sample_id}.mp4", 200))
    train_one_epoch(out, "kinetics-sounds", tmp_path / "run")
