"""Fusion heads. Each returns (z, z_a, z_v) with z = z_a + z_v, so every method sees each modality's share."""

from __future__ import annotations

import torch
from torch import nn

from mmray.models.registry import register_fusion


class ConcatFusion(nn.Module):
    """z = W [f_a; f_v] + b, split as z_a = W_a f_a + b/2 and z_v = W_v f_v + b/2 (as OGM-GE measures shares)."""

    def __init__(self, audio_dim: int, visual_dim: int, num_classes: int):
        super().__init__()
        self.audio_dim = audio_dim
        self.fc = nn.Linear(audio_dim + visual_dim, num_classes)

    def forward(self, f_a: torch.Tensor, f_v: torch.Tensor):
        w_a, w_v = self.fc.weight[:, :self.audio_dim], self.fc.weight[:, self.audio_dim:]
        half_bias = self.fc.bias / 2
        z_a = f_a @ w_a.t() + half_bias
        z_v = f_v @ w_v.t() + half_bias
        return z_a + z_v, z_a, z_v


class SumFusion(nn.Module):
    """z = (W_a f_a + b_a) + (W_v f_v + b_v): one linear head per modality, summed."""

    def __init__(self, audio_dim: int, visual_dim: int, num_classes: int):
        super().__init__()
        self.fc_audio = nn.Linear(audio_dim, num_classes)
        self.fc_visual = nn.Linear(visual_dim, num_classes)

    def forward(self, f_a: torch.Tensor, f_v: torch.Tensor):
        z_a, z_v = self.fc_audio(f_a), self.fc_visual(f_v)
        return z_a + z_v, z_a, z_v


register_fusion("concat")(ConcatFusion)
register_fusion("sum")(SumFusion)
