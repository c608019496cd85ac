"""Heads that several methods add on top of the encoders."""

from __future__ import annotations

import torch
from torch import nn

from mmray.models import AVOutput


class UnimodalHeads(nn.Module):
    """Linear(D, K) on each modality's features: a prediction of each modality's own, apart from the fusion layer."""

    def __init__(self, audio_dim: int, visual_dim: int, num_classes: int):
        super().__init__()
        self.audio = nn.Linear(audio_dim, num_classes)
        self.visual = nn.Linear(visual_dim, num_classes)

    def forward(self, out: AVOutput) -> dict[str, torch.Tensor]:
        return {"audio": self.audio(out.audio_features), "visual": self.visual(out.visual_features)}
