"""`mmray prepare ave` on a fixture in AVE's real layout: AVE/<id>.mp4 with an AAC track,
Annotations.txt and the three `&`-separated split lists, a video listed twice."""

from __future__ import annotations

import numpy as np
import torch
import torchaudio

from rawdata import check_prepared, make_ave, prepare, read_track, stored_audio, train_one_epoch


def ave_spectrogram(path) -> np.ndarray:
    """The AVE recipe, computed directly: 16 kHz, tiled to the length, n_fft 512, hop 160, log, z-score."""
    samples, rate = read_track(path)
    x = torchaudio.functional.resample(torch.from_numpy(samples), rate, 16000)
    x = x.repeat(2)[:32000].clamp(-1, 1)  # 2 s here (10 s by default)
    spec = torch.log(torchaudio.transforms.Spectrogram(n_fft=512, hop_length=160, power=1.0)(x) + 1e-7)
    return ((spec - spec.mean()) / (spec.std() + 1e-9))[None].numpy().astype(np.float16)


def test_ave(ray_local, tmp_path):
    raw = tmp_path / "AVE_Dataset"
    expected = make_ave(raw)
    out = tmp_path / "ave"
    prepare("ave", raw, out, "--audio-seconds", "2", "--frames-per-clip", "2", "--image-size", "32",
            "--rows-per-shard", "6", "--max-skipped", "0.2")
    manifest, rows = check_prepared(out, expected, image_size=32)
    assert manifest.audio.shape == (1, 257, 201)
    # The official val list is used as is (one clip per class); the repeated video is kept once, as first listed.
    assert sorted(r["label"] for r in rows.values() if r["split"] == "val") == [0, 1, 2, 3]
    assert any(expected["repeated"] in note for note in manifest.notes)
    assert manifest.class_names[rows[expected["repeated"]]["label"]] == "Church bell"
    sample_id = "v14xa-0011"
    np.testing.assert_array_equal(stored_audio(rows[sample_id], manifest), ave_spectrogram(raw / "AVE" / f"{sample_id}.mp4"))
    train_one_epoch(out, "ave", tmp_path / "run")
