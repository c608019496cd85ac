"""Registries: adding a backbone or a fusion is one decorated function."""

from __future__ import annotations

from typing import Callable

from torch import nn

from mmray.data.manifest import Manifest
from mmray.errors import UserError
from mmray.models.model import AVModel

# name -> fn(manifest, width) -> (audio_encoder, visual_image_encoder, audio_dim, visual_dim)
BACKBONES: dict[str, Callable] = {}
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


def build_model(backbone: str, fusion: str, manifest: Manifest, width: int = 64) -> nn.Module:
    if backbone not in BACKBONES:
        raise UserError(f"model {backbone!r}: unknown backbone (known: {', '.join(sorted(BACKBONES))})")
    if fusion not in FUSIONS:
        raise UserError(f"fusion {fusion!r}: unknown fusion (known: {', '.join(sorted(FUSIONS))})")
    audio, visual, audio_dim, visual_dim = BACKBONES[backbone](manifest, width)
    return AVModel(audio, visual, FUSIONS[fusion](audio_dim, visual_dim, manifest.num_classes), audio_dim, visual_dim)
