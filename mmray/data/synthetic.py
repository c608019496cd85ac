"""`synthetic-av`: a small, seeded, offline audio-visual dataset that is imbalanced on purpose.

What it is built to show (and what `mmray bench imbalance` measures):
- Audio is easy: each class has a strong frequency-band signature in a 1-channel spectrogram,
  learned within an epoch.
- Vision is hard: each class has several faint spatial patterns, randomly shifted in every
  frame and buried in noise, learned slowly.
- The information is complementary: a fraction of clips is silent (a muted microphone), and the
  last class sounds like another one, so for those only vision tells the class. A model that
  leans on audio plateaus below what both modalities allow.
- Low-quality samples are known: the `corrupted` column says which modality is bad ("none",
  "audio", "visual") and `corruption` how ("silent", "noise", or "wrong-class" content).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from mmray.data.manifest import AudioSpec, FramesSpec, Manifest
from mmray.data.registry import register
from mmray.data.shards import encode_frames, staged_output, write_split

NAME = "synthetic-av"


@dataclass(frozen=True)
class SyntheticConfig:
    num_classes: int = 10
    audio_distinct: int = 9  # classes with their own audio signature; the last one sounds like another
    sizes: tuple[int, int, int] = (3000, 600, 1200)  # train, val, test
    freq_bins: int = 32
    time_frames: int = 32
    frames: int = 2
    image_size: int = 24
    audio_snr: float = 4.0  # signature amplitude / noise std: audio is learned within an epoch
    visual_snr: float = 0.4  # faint visual pattern in unit noise: vision is learned slowly
    visual_variants: int = 4  # distinct visual patterns per class, so vision must generalise
    max_shift: int = 6  # pixels; a random per-frame translation of the visual pattern
    silent_fraction: float = 0.3  # clips whose audio is silent (near-zero): only vision can tell them
    corrupt_fraction: float = 0.05  # clips with one modality replaced by noise or another class's content
    frame_encoding: Literal["raw", "jpeg"] = "raw"
    seed: int = 0


def _audio_templates(cfg: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """One (F, T) signature per audio identity: two frequency bands with a temporal rhythm."""
    templates = np.zeros((cfg.audio_distinct, cfg.freq_bins, cfg.time_frames), np.float32)
    band = cfg.freq_bins // cfg.audio_distinct
    t = np.arange(cfg.time_frames)
    for a in range(cfg.audio_distinct):
        rhythm = 0.5 + 0.5 * np.sin(2 * np.pi * (a + 1) * t / cfg.time_frames + rng.uniform(0, np.pi))
        templates[a, a * band:(a + 1) * band] = rhythm
        other = rng.integers(0, cfg.freq_bins - 2)
        templates[a, other:other + 2] += 0.5
    return templates


def _visual_templates(cfg: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """`visual_variants` smooth (H, W, 3) patterns per class, each zero-mean with unit std."""
    size = cfg.image_size
    coarse = rng.normal(size=(cfg.num_classes * cfg.visual_variants, 6, 6, 3)).astype(np.float32)
    # Upsample the coarse noise so patterns are blob-like: learnable by a small CNN, but not at a glance.
    fine = coarse.repeat(size // 6 + 1, axis=1).repeat(size // 6 + 1, axis=2)[:, :size, :size]
    kernel = np.ones(3, np.float32) / 3
    for axis in (1, 2):
        fine = np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="same"), axis, fine)
    fine -= fine.mean(axis=(1, 2, 3), keepdims=True)
    fine /= fine.std(axis=(1, 2, 3), keepdims=True)
    return fine.reshape(cfg.num_classes, cfg.visual_variants, size, size, 3)


def audio_identity(cfg: SyntheticConfig, label: np.ndarray) -> np.ndarray:
    """Classes past `audio_distinct` reuse the signature of an earlier class (vision-only pairs)."""
    shared = cfg.num_classes - cfg.audio_distinct
    return np.where(label < cfg.audio_distinct, label, label - shared)


def generate_split(cfg: SyntheticConfig, split: str, n: int) -> dict[str, list | np.ndarray]:
    template_rng = np.random.default_rng([cfg.seed, 0])
    audio_t = _audio_templates(cfg, template_rng)
    visual_t = _visual_templates(cfg, template_rng)
    rng = np.random.default_rng([cfg.seed, 1 + ("train", "val", "test").index(split)])

    label = np.arange(n) % cfg.num_classes  # balanced classes
    rng.shuffle(label)
    silent = rng.random(n) < cfg.silent_fraction
    audio = cfg.audio_snr * audio_t[audio_identity(cfg, label)]
    audio += rng.normal(size=audio.shape).astype(np.float32)
    audio[silent] = 0.1 * rng.normal(size=audio[silent].shape)  # a muted microphone: faint noise only

    variant = rng.integers(0, cfg.visual_variants, size=n)
    frames = np.empty((n, cfg.frames, cfg.image_size, cfg.image_size, 3), np.float32)
    for t in range(cfg.frames):
        shifts = rng.integers(-cfg.max_shift, cfg.max_shift + 1, size=(n, 2))
        for i in range(n):
            frames[i, t] = np.roll(visual_t[label[i], variant[i]], tuple(shifts[i]), axis=(0, 1))
    frames = cfg.visual_snr * frames + rng.normal(size=frames.shape).astype(np.float32)

    # Corrupt one modality of a known fraction of samples: half by noise, half by another class's content.
    corrupted = np.array(["none"] * n, dtype=object)
    corruption = np.array(["none"] * n, dtype=object)
    corrupted[silent], corruption[silent] = "audio", "silent"
    bad = rng.choice(np.flatnonzero(~silent), size=int(round(cfg.corrupt_fraction * n)), replace=False)
    for j, i in enumerate(bad):
        modality = "audio" if j % 2 == 0 else "visual"
        by_noise = j % 4 < 2
        corrupted[i], corruption[i] = modality, "noise" if by_noise else "wrong-class"
        donor_label = (label[i] + rng.integers(1, cfg.num_classes)) % cfg.num_classes
        if modality == "audio":
            audio[i] = rng.normal(size=audio[i].shape) if by_noise else (
                cfg.audio_snr * audio_t[audio_identity(cfg, np.array(donor_label))]
                + rng.normal(size=audio[i].shape))
        else:
            frames[i] = rng.normal(size=frames[i].shape) if by_noise else (
                cfg.visual_snr * visual_t[donor_label, 0][None] + rng.normal(size=frames[i].shape))

    # Spectrogram-like scale for audio; frames to uint8 pixels around mid-grey.
    audio_bytes = [a[None].astype("<f2").tobytes() for a in audio]
    pixels = np.clip(128 + 40 * frames, 0, 255).astype(np.uint8)
    return {
        "sample_id": [f"{split}-{i:06d}" for i in range(n)],
        "index": np.arange(n),
        "label": label,
        "audio": audio_bytes,
        "frames": [encode_frames(p, cfg.frame_encoding) for p in pixels],
        "corrupted": corrupted.tolist(),  # which modality is low quality: none | audio | visual
        "corruption": corruption.tolist(),  # how: none | silent | noise | wrong-class
    }


@register(NAME, SyntheticConfig, generated=True)
def prepare(out: str | Path, cfg: SyntheticConfig = SyntheticConfig(), force: bool = False) -> Manifest:
    out = Path(out)
    with staged_output(out, force=force) as staging:
        shards = {}
        for split, n in zip(("train", "val", "test"), cfg.sizes):
            shards[split] = write_split(staging, split, generate_split(cfg, split, n))
        manifest = Manifest(
            dataset=NAME,
            class_names=[f"class_{c}" for c in range(cfg.num_classes)],
            audio=AudioSpec(shape=(1, cfg.freq_bins, cfg.time_frames), dtype="float16"),
            # Pixels were drawn around 128 +- 40, so normalise with that instead of ImageNet statistics.
            frames=FramesSpec(count=cfg.frames, height=cfg.image_size, width=cfg.image_size,
                              encoding=cfg.frame_encoding, mean=(0.5, 0.5, 0.5), std=(0.16, 0.16, 0.16)),
            shards=shards,
            preprocessing={"generator": asdict(cfg)},
            metadata_columns=["corrupted", "corruption"],
        )
        manifest.save(staging)
    return manifest
