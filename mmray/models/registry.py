"""Registries: adding a backbone or a fusion is one decorated function."""

from __future__ import annotations

import inspect
from typing import Callable, NamedTuple

from torch import nn

from mmray.data.manifest import Manifest
from mmray.errors import UserError
from mmray.models.model import AVModel


class Encoders(NamedTuple):
    """What a backbone builds: one encoder per modality and the size of the features each returns."""
    audio: nn.Module  # (B, *manifest.audio.shape) -> (B, audio_dim)
    visual: nn.Module  # one frame (B, C, H, W) -> (B, visual_dim); the model averages it over frames
    audio_dim: int
    visual_dim: int


# name -> fn(manifest, **its options) -> Encoders
BACKBONES: dict[str, Callable[..., Encoders]] = {}
# name -> fn(audio_dim, visual_dim, num_classes) -> module returning (z, z_a, z_v)
FUSIONS: dict[str, Callable] = {}


def register_backbone(name: str):
    def add(fn):
        BACKBONES[name] = fn
        return fn
    return add


def register_fusion(name: str):
    def add(fn):
        FUSIONS[name] = fn
        return fn
    return add


def build_model(backbone: str, fusion: str, manifest: Manifest, **options) -> nn.Module:
    """`options` are the model settings of a run (e.g. width); each backbone gets the ones it takes."""
    if backbone not in BACKBONES:
        raise UserError(f"model {backbone!r}: unknown backbone (known: {', '.join(sorted(BACKBONES))})")
    if fusion not in FUSIONS:
        raise UserError(f"fusion {fusion!r}: unknown fusion (known: {', '.join(sorted(FUSIONS))})")
    make = BACKBONES[backbone]
    takes = inspect.signature(make).parameters
    enc = make(manifest, **{key: value for key, value in options.items() if key in takes})
    head = FUSIONS[fusion](enc.audio_dim, enc.visual_dim, manifest.num_classes)
    return AVModel(enc.audio, enc.visual, head, enc.audio_dim, enc.visual_dim, manifest.frames.mean, manifest.frames.std)
