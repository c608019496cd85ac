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
    """Applies a 2-D image encoder to every frame and averages the features over frames.

    Frames arrive as uint8 pixels (4x fewer bytes than float through Ray Data, the object-store
    cache and the copy to the GPU) and are normalised here, on the model's device, with the
    manifest's per-channel mean and std; float frames are taken as already normalised.
    """

    def __init__(self, image_encoder: nn.Module, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)):
        super().__init__()
        self.image_encoder = image_encoder
        # Not saved with the weights: they come from the manifest, and older checkpoints lack them.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32)[:, None, None], persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32)[:, None, None], persistent=False)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:  # (B, T, C, H, W) -> (B, D)
        b, t = frames.shape[:2]
        if frames.dtype == torch.uint8:
            frames = (frames.float() / 255.0 - self.mean) / self.std
        features = self.image_encoder(frames.flatten(0, 1))
        return features.view(b, t, -1).mean(dim=1)


class AVModel(nn.Module):
    def __init__(self, audio_encoder: nn.Module, visual_encoder: nn.Module, fusion: nn.Module,
                 audio_dim: int, visual_dim: int, frame_mean=(0.0, 0.0, 0.0), frame_std=(1.0, 1.0, 1.0)):
        super().__init__()
        self.audio_dim, self.visual_dim = audio_dim, visual_dim
        self.audio_encoder = audio_encoder
        self.visual_encoder = FrameEncoder(visual_encoder, frame_mean, frame_std)
        self.fusion = fusion

    def forward(self, audio: torch.Tensor, frames: torch.Tensor) -> AVOutput:
        f_a = self.audio_encoder(audio)
        f_v = self.visual_encoder(frames)
        fused, z_a, z_v = self.fusion(f_a, f_v)
        return AVOutput(fused=fused, audio=z_a, visual=z_v, audio_features=f_a, visual_features=f_v)
