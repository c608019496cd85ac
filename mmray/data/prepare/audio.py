"""Audio: decoding any file (WAV, or the audio track of a video) and the spectrogram recipes.

The recipes are the ones in docs/datasets.md, computed with torchaudio:
- `stft`: resample, take the first `seconds` (tiled if shorter), clip to [-1, 1], magnitude STFT
  (Hann window, centred), log(|X| + 1e-7), optionally z-scored per clip. CREMA-D: 22,050 Hz, 3 s,
  n_fft 512, hop 353 -> 257 x 188. AVE: 16 kHz, 10 s, hop 160 -> 257 x 1001, z-scored.
- `fbank`: Kaldi-style log-mel filterbank (128 bins, 25 ms Hann window, 10 ms shift, no dither) on
  the mean-removed waveform, padded with zeros or cropped to `frames` frames. Kinetics-Sounds.
Every recipe yields a (1, frequency, time) float32 array.

Decoding keeps only the part of a clip that its recipe uses (resampled piece by piece, to the
samples resampling the whole clip gives), so memory does not grow with the clip's length.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from typing import Literal

import av
import numpy as np
import torch
import torchaudio

FRAME_LENGTH_MS, FRAME_SHIFT_MS = 25, 10  # fbank's Kaldi frames


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
    def reads(self) -> int:
        """How many samples at `sample_rate`, from the clip's start, the recipe uses."""
        if self.kind == "stft":
            return self.samples
        # Kaldi's frame sizes in samples (torchaudio's rounding); `frames` of them, snipped at the end
        shift, length = (int(self.sample_rate * ms * 0.001) for ms in (FRAME_SHIFT_MS, FRAME_LENGTH_MS))
        return (self.frames - 1) * shift + length

    @property
    def shape(self) -> tuple[int, int, int]:
        if self.kind == "stft":
            return (1, self.n_fft // 2 + 1, 1 + self.samples // self.hop)
        return (1, self.mel_bins, self.frames)


@dataclass(frozen=True)
class ClipAudio:
    """What a recipe uses of a clip's audio, read without holding the rest of it."""
    wave: np.ndarray  # mono float32 at the recipe's rate: the clip's first `recipe.reads` samples (all, if fewer)
    seconds: float  # the clip's length, counted as far as decoding went (stft stops once it has enough)
    mean: float | None  # fbank: the whole clip's mean at the recipe's rate (what it removes); stft: None


def read_audio(path: str, recipe: AudioRecipe, start: float | None = None, end: float | None = None,
               at_least: float = 0.0) -> ClipAudio:
    """Decode the first audio stream of any file FFmpeg reads, mixed to mono and resampled to the
    recipe's rate, keeping only what `recipe` reads, so a long clip takes no more memory than a short one.

    The clip is the track from `start` to `end` seconds (default: all of it). stft reads only its
    first `seconds`: decoding stops once they are there and the clip is known to last `at_least`
    seconds. fbank reads its first `frames` frames but removes the whole clip's mean, so it decodes
    the clip to the end, summing what it does not keep.
    """
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise ValueError("no audio stream")
        frames = container.decode(container.streams.audio[0])
        first = next(frames, None)
        if first is None:
            raise ValueError("no audio samples")
        rate = first.sample_rate
        clip = _Window(chain([first], frames), 0 if start is None else int(start * rate),
                       math.inf if end is None else int(end * rate))
        kept, made, total = [], 0, 0.0
        for piece in _resampled(clip, rate, recipe.sample_rate):
            if made < recipe.reads:
                kept.append(piece[:recipe.reads - made])
            made += len(piece)
            total += piece.sum(dtype=np.float64)  # torch's float32 mean of the whole can be an ulp off
            if recipe.kind == "stft" and made >= recipe.reads and clip.samples / rate >= at_least:
                break
    return ClipAudio(np.concatenate([np.zeros(0, np.float32), *kept]), clip.samples / rate,
                     total / made if recipe.kind == "fbank" and made else None)


class _Window:
    """The mono samples of decoded frames from sample `lo` to `hi` of the track, counted as they pass."""

    def __init__(self, frames: Iterable[av.AudioFrame], lo: int, hi: float):
        self.frames, self.lo, self.hi = frames, lo, hi
        self.samples = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        position = 0
        for frame in self.frames:
            x = _to_float(frame)
            part = x[max(self.lo - position, 0):max(0, min(self.hi - position, len(x)))]
            position += len(x)
            if len(part):
                self.samples += len(part)
                yield part
            if position >= self.hi:
                return


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


def _resampled(chunks: Iterable[np.ndarray], rate: int, target: int) -> Iterator[np.ndarray]:
    """`resample` of the chunks joined, in pieces as the chunks come: the samples resampling the
    whole would give, holding some seconds of input at a time.

    torchaudio turns each step of `o` input samples into `n` output samples, reading `width` input
    samples more on each side (zeros past the ends). So once the input reaches `width` past a run
    of whole steps, their output is final; it is computed on a slice that starts `lead` steps
    earlier (enough to cover `width`, or from the start), whose first lead * n outputs are dropped.
    """
    if rate == target:
        yield from chunks
        return
    transform = torchaudio.transforms.Resample(rate, target, dtype=torch.float32)  # the kernel `resample` uses
    o, n = rate // math.gcd(rate, target), target // math.gcd(rate, target)
    context = -(-transform.width // o)  # steps of input kept before the next run: `width` or more
    run = max(1, 8 * rate // o)  # steps resampled at once: 8 s of input (shorter runs are slow on several threads)
    pending, start, length = [], 0, 0  # input not yet dropped, from sample `start`; input so far
    done = 0  # steps output
    for chunk in chunks:
        pending.append(chunk)
        length += len(chunk)
        final = (length - transform.width) // o  # steps whose input is all there
        if final - done < run:
            continue
        buffer = np.concatenate(pending)
        lead = done - start // o
        out = transform(torch.from_numpy(buffer[:final * o + transform.width - start]))
        yield out[lead * n:(lead + final - done) * n].numpy()
        done = final
        drop = (done - min(done, context)) * o - start
        pending, start = [buffer[drop:]], start + drop
    if length:
        out = transform(torch.from_numpy(np.concatenate(pending)))
        yield out[(done - start // o) * n:].numpy()


def spectrogram(wave: np.ndarray, rate: int, recipe: AudioRecipe, mean: float | None = None) -> np.ndarray:
    """A mono waveform at `rate` -> (1, F, T) float32, per the recipe. `wave` may be only the start
    of the clip (`read_audio`'s), and then fbank is given `mean`, the whole clip's."""
    x = resample(wave, rate, recipe.sample_rate)
    if recipe.kind == "stft":
        reps = -(-recipe.samples // len(x))  # ceil: tile short clips to the full length
        x = x.repeat(reps)[:recipe.samples].clamp(-1.0, 1.0)
        magnitude = torchaudio.transforms.Spectrogram(n_fft=recipe.n_fft, hop_length=recipe.hop, power=1.0)(x)
        spec = torch.log(magnitude + 1e-7)
    else:
        fbank = torchaudio.compliance.kaldi.fbank(
            (x - (x.mean() if mean is None else mean))[None], htk_compat=True, sample_frequency=recipe.sample_rate,
            use_energy=False, window_type="hanning", num_mel_bins=recipe.mel_bins, dither=0.0,
            frame_length=FRAME_LENGTH_MS, frame_shift=FRAME_SHIFT_MS)
        fbank = fbank[:recipe.frames]
        fbank = torch.nn.functional.pad(fbank, (0, 0, 0, recipe.frames - len(fbank)))
        spec = fbank.T  # (mel, time)
    if recipe.zscore:
        spec = (spec - spec.mean()) / (spec.std() + 1e-9)
    return spec[None].numpy().astype(np.float32)
