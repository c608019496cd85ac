"""Audio: decoding any file (WAV, or the audio track of a video) and the spectrogram recipes.

The recipes are the ones in docs/datasets.md, computed with torchaudio:
- `stft`: resample, take the first `seconds` (tiled if shorter), clip to [-1, 1], magnitude STFT
  (Hann window, centred), log(|X| + 1e-7), optionally z-scored per clip. CREMA-D: 22,050 Hz, 3 s,
  n_fft 512, hop 353 -> 257 x 188. AVE: 16 kHz, 10 s, hop 160 -> 257 x 1001, z-scored.
- `fbank`: Kaldi-style log-mel filterbank (128 bins, 25 ms Hann window, 10 ms shift, no dither) on
  the mean-removed waveform, padded with zeros or cropped to `frames` frames. Kinetics-Sounds.
Every recipe yields a (1, frequency, time) float32 array.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import av
import numpy as np
import torch
import torchaudio


@dataclass(frozen=True)
class AudioRecipe:
    kind: Literal["stft", "fbank"] = "stft"
    sample_rate: int = 22050
    seconds: float = 3.0  # stft: the length analysed (tiled if the clip is shorter)
    n_fft: int = 512
    hop: int = 353
    mel_bins: int = 128  # fbank
    frames: int = 1024  # fbank: time frames after padding or cropping
    zscore: bool = False  # per-clip (x - mean) / std, after the log

    @property
    def samples(self) -> int:
        return int(round(self.seconds * self.sample_rate))

    @property
    def shape(self) -> tuple[int, int, int]:
        if self.kind == "stft":
            return (1, self.n_fft // 2 + 1, 1 + self.samples // self.hop)
        return (1, self.mel_bins, self.frames)


def read_audio(path: str) -> tuple[np.ndarray, int]:
    """Decode the first audio stream of any file FFmpeg reads -> (mono float32 in [-1, 1], rate)."""
    chunks, rate = [], None
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise ValueError("no audio stream")
        stream = container.streams.audio[0]
        for frame in container.decode(stream):
            rate = frame.sample_rate
            chunks.append(_to_float(frame))
    if not chunks:
        raise ValueError("no audio samples")
    return np.concatenate(chunks), rate


def _to_float(frame: av.AudioFrame) -> np.ndarray:
    """One decoded frame -> mono float32 (the mean of its channels)."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if not frame.format.is_planar:  # packed: (1, samples * channels), interleaved
        data = data.reshape(-1, channels).T
    if data.dtype == np.int16:
        data = data / 32768.0
    elif data.dtype == np.int32:
        data = data / 2147483648.0
    elif data.dtype == np.uint8:
        data = (data.astype(np.float32) - 128.0) / 128.0
    return data.astype(np.float32).mean(axis=0)


def resample(wave: np.ndarray, rate: int, target: int) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    if rate == target:
        return tensor
    return torchaudio.functional.resample(tensor, rate, target)


def spectrogram(wave: np.ndarray, rate: int, recipe: AudioRecipe) -> np.ndarray:
    """A mono waveform at `rate` -> (1, F, T) float32, per the recipe."""
    x = resample(wave, rate, recipe.sample_rate)
    if recipe.kind == "stft":
        reps = -(-recipe.samples // len(x))  # ceil: tile short clips to the full length
        x = x.repeat(reps)[:recipe.samples].clamp(-1.0, 1.0)
        magnitude = torchaudio.transforms.Spectrogram(n_fft=recipe.n_fft, hop_length=recipe.hop, power=1.0)(x)
        spec = torch.log(magnitude + 1e-7)
    else:
        fbank = torchaudio.compliance.kaldi.fbank(
            (x - x.mean())[None], htk_compat=True, sample_frequency=recipe.sample_rate, use_energy=False,
            window_type="hanning", num_mel_bins=recipe.mel_bins, dither=0.0, frame_shift=10)
        fbank = fbank[:recipe.frames]
        fbank = torch.nn.functional.pad(fbank, (0, 0, 0, recipe.frames - len(fbank)))
        spec = fbank.T  # (mel, time)
    if recipe.zscore:
        spec = (spec - spec.mean()) / (spec.std() + 1e-9)
    return spec[None].numpy().astype(np.float32)
