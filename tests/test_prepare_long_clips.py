"""Long clips are read in bounded memory and give what decoding them whole gave: real MP4 (MPEG-4 +
AAC), AVI (H.264 with B-frames) and WAV files, compared with the whole decode done here the old
way, and the process's peak resident memory for a 4x longer clip."""

from __future__ import annotations

import gc
import re
from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torchaudio

from mmray.bench.prepare import write_frames, write_wav
from mmray.data.prepare.audio import AudioRecipe, _to_float, read_audio, spectrogram
from mmray.data.prepare.plan import Clip
from mmray.data.prepare.video import frames_from_video, resize, spread
from mmray.data.prepare.writer import ClipSettings, clip_row
from rawdata import tone, write_video

CREMAD = AudioRecipe()  # stft, 22,050 Hz, 3 s
AVE = AudioRecipe(sample_rate=16000, seconds=10.0, hop=160, zscore=True)
KINETICS = AudioRecipe(kind="fbank", sample_rate=16000)


class BarFrames(Sequence):
    """`n` distinct frames, each made when the encoder asks for it (a long video without holding it)."""

    def __init__(self, n: int, height: int = 360, width: int = 480):
        self.n, self.height, self.width = n, height, width

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, k: int) -> np.ndarray:
        if not 0 <= k < self.n:
            raise IndexError(k)
        image = np.full((self.height, self.width, 3), (k * 3) % 200, np.uint8)
        x = (k * 5) % (self.width - 16)
        image[:, x:x + 16] = 255  # a moving bar on a slow ramp: no two frames alike
        return image


def long_mp4(path: Path, seconds: int, fps: int = 10) -> Path:
    write_video(path, BarFrames(seconds * fps), fps, tone(2, seconds, 16000, seconds) + 0.01, 16000)
    return path


def long_wav(path: Path, seconds: float, rate: int) -> Path:
    write_wav(path, tone(1, seconds, rate, rate) + 0.01, rate)  # a small DC offset, as microphones have
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("long")
    return {"mp4": long_mp4(root / "40s.mp4", 40), "mp4-short": long_mp4(root / "10s.mp4", 10),
            "wav": long_wav(root / "60s.wav", 60, 44100)}


def whole_decode_frames(path: Path, count: int, size: int, fps: float) -> np.ndarray:
    """The frames the old way: every sampled frame held at full size, then `count` of them resized."""
    picked = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            if frame.time is not None and frame.time + 1e-6 >= len(picked) / fps:
                picked.append(frame)
    return np.stack([resize(picked[i].to_image(), size) for i in spread(len(picked), count)])


def whole_decode_audio(path: Path, start: float | None = None, end: float | None = None) -> tuple[np.ndarray, int]:
    """The old way: the whole track decoded to mono, then cut to the clip."""
    with av.open(str(path)) as container:
        frames = list(container.decode(audio=0))
    wave, rate = np.concatenate([_to_float(f) for f in frames]), frames[0].sample_rate
    return (wave, rate) if start is None else (wave[int(start * rate):int(end * rate)], rate)


def assert_same_spectrogram(new: np.ndarray, old: np.ndarray, recipe: AudioRecipe) -> None:
    if recipe.kind == "stft":  # no mean: the same samples (to float32 rounding) give the same spectrogram
        np.testing.assert_allclose(new, old, rtol=0, atol=1e-5)
    else:
        # fbank removes the whole clip's mean, here summed in float64 and by torch in float32: they can
        # differ by an ulp, which moves only mel bins at float32's noise floor (Kaldi removes each
        # frame's own mean again). Elsewhere the energies agree to 1e-5.
        energy_new, energy_old = np.exp(new.astype(np.float64)), np.exp(old.astype(np.float64))
        np.testing.assert_allclose(energy_new, energy_old, rtol=1e-5, atol=1e-6 * energy_old.max())


@pytest.mark.parametrize("fps, count", [(1.0, 3), (10.0, 7), (3.3, 50), (0.1, 8)])
def test_long_video_gives_the_frames_the_whole_decode_picked(files, fps, count):
    np.testing.assert_array_equal(frames_from_video(files["mp4"], count, 32, fps),
                                  whole_decode_frames(files["mp4"], count, 32, fps))


def test_frames_whose_times_differ_from_their_packets(tmp_path):
    """H.264 with B-frames in AVI: the packets' times are in order, the decoded frames' are not, so
    the count from the packets is wrong and the decoding pass's own count is used."""
    path = tmp_path / "b-frames.avi"
    with av.open(str(path), "w", format="avi") as out:
        stream = out.add_stream("libx264", rate=10, options={"bf": "2"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for k in range(50):  # a slow fade, which the encoder codes with B-frames
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), k * 5, np.uint8), format="rgb24")))
        out.mux(stream.encode())
    with av.open(str(path)) as container:
        times = [f.time for f in container.decode(video=0)]
    assert times != sorted(times)
    np.testing.assert_array_equal(frames_from_video(path, 7, 16, 10.0), whole_decode_frames(path, 7, 16, 10.0))


@pytest.mark.parametrize("rate, target", [(44100, 16000), (48000, 22050), (22050, 16000), (16000, 22050)])
@pytest.mark.parametrize("window", [(None, None), (1.7, 18.1)])
def test_audio_resampled_in_pieces_is_the_whole_track_resampled(tmp_path, rate, target, window):
    path = long_wav(tmp_path / "clip.wav", 20, rate)
    wave, _ = whole_decode_audio(path, *window)
    whole = torchaudio.functional.resample(torch.from_numpy(wave), rate, target).numpy()
    for recipe in (AudioRecipe(sample_rate=target, seconds=3.0), AudioRecipe(kind="fbank", sample_rate=target)):
        audio = read_audio(path, recipe, *window)
        assert len(audio.wave) == recipe.reads
        np.testing.assert_allclose(audio.wave, whole[:recipe.reads], rtol=0, atol=1e-6)  # up to float32 rounding
        if recipe.kind == "fbank":
            assert audio.seconds == len(wave) / rate
            assert audio.mean == pytest.approx(float(whole.astype(np.float64).mean()), rel=1e-6)
        else:
            assert audio.mean is None and recipe.seconds <= audio.seconds < len(wave) / rate  # it stopped early


@pytest.mark.parametrize("source, recipe, window", [
    ("wav", CREMAD, (None, None)),  # 44.1 kHz resampled to 22,050 Hz, then the first 3 s
    ("wav", KINETICS, (None, None)),  # resampled to 16 kHz, the whole clip's mean
    ("mp4", AVE, (3.0, 37.5)),  # AAC at 16 kHz, an event window
    ("mp4", KINETICS, (2.5, 39.0)),
])
def test_a_long_clip_gives_the_row_the_whole_decode_gave(files, source, recipe, window):
    settings = ClipSettings(recipe, frames=4, fps=2.0, image_size=32, frame_encoding="raw", audio_dtype="float32")
    spec, frames = clip_row(Clip("c", 0, "train", audio=str(files[source]), video=str(files["mp4"]),
                                 start=window[0], end=window[1]), settings)
    assert_same_spectrogram(np.frombuffer(spec, "<f4").reshape(recipe.shape),
                            spectrogram(*whole_decode_audio(files[source], *window), recipe), recipe)
    np.testing.assert_array_equal(np.stack([np.frombuffer(f, np.uint8).reshape(32, 32, 3) for f in frames]),
                                  whole_decode_frames(files["mp4"], 4, 32, 2.0))


def _status_kb(key: str) -> int:
    return int(re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def peak_growth_mb(run) -> float:
    """How far the process's resident memory rose above where it was while `run()` ran (Linux's
    high-water mark, reset first). FFmpeg's and torch's buffers count, which tracemalloc misses."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kb("VmRSS")
    run()
    return (_status_kb("VmHWM") - before) / 1024


needs_peak_reset = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux's VmHWM reset")


@needs_peak_reset
def test_a_4x_longer_video_takes_no_more_memory(files):
    """Every frame is sampled (10 fps), 100 vs 400 frames of 480 x 360: held as decoded (YUV 4:2:0),
    300 more frames would be about 78 MB."""
    def run(name):
        return lambda: frames_from_video(files[name], 4, 32, 10.0)

    run("mp4-short")()  # first-call costs (codec set-up) out of the way
    short, long = peak_growth_mb(run("mp4-short")), peak_growth_mb(run("mp4"))
    assert long < short + 8, (short, long)


@needs_peak_reset
@pytest.mark.parametrize("recipe", [CREMAD, KINETICS])
def test_a_4x_longer_audio_track_takes_no_more_memory(tmp_path, recipe):
    """30 s vs 120 s at 44.1 kHz: held whole, 90 s more would be 16 MB as float32, more once resampled."""
    write_frames(tmp_path / "frames", [np.zeros((8, 8, 3), np.uint8)])
    settings = ClipSettings(recipe, frames=1, image_size=8, frame_encoding="raw")

    def run(seconds):
        path = long_wav(tmp_path / f"{seconds}s.wav", seconds, 44100)
        return lambda: clip_row(Clip("c", 0, "train", audio=str(path), frames_dir=str(tmp_path / "frames")), settings)

    short, long = run(30), run(120)
    short()  # first-call costs out of the way
    grew_short, grew_long = peak_growth_mb(short), peak_growth_mb(long)
    assert grew_long < grew_short + 8, (grew_short, grew_long)
