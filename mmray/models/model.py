"""The model contract every method relies on: fused logits and per-modality logits from one pass."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class AVOutput:
    fused: torch.Tensor  # (B, K) z
    audio: torch.Tensor  # (B, K) z_a, the audio share of the decision
    visual: torch.Tensor  # (B, K) z_v
    audio_features: torch.Tensor  # (B, D_a) f_a
    visual_features: torch.Tensor  # (B, D_v) f_v


class FrameEncoder(nn.Module):
    """Applies a 2-D image encoder to every frame and averages the features over frames."""

    def __init__(self, image_encoder: nn.Module):
        super().__init__()
        self.image_encoder = image_encoder

    def forward(self, frames: torch.Tensor) -> torch.Tensor:  # (B, T, C, H, W) -> (B, D)
        b, t = frames.shape[:2]
        features = self.image_encoder(frames.flatten(0, 1))
        return features.view(b, t, -1).mean(dim=1)


class AVModel(nn.Module):
    def __init__(self, audio_encoder: nn.Module, visual_encoder: nn.Module, fusion: nn.Module,
                 audio_dim: int, visual_dim: int):
        super().__init__()
        self.audio_dim, self.visual_dim = audio_dim, visual_dim
        self.audio_encoder = audio_encoder
        self.visual_encoder = FrameEncoder(visual_encoder)
        self.fusion = fusion

    def forward(self, audio: torch.Tensor, frames: torch.Tensor) -> AVOutput:
        f_a = self.audio_encoder(audio)
        f_v = self.visual_encoder(frames)
        fused, z_a, z_v = self.fusion(f_a, f_v)
        return AVOutput(fused=fused, audio=z_a, visual=z_v, audio_features=f_a, visual_features=f_v)
