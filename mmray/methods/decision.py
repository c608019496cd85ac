"""`decision`: adaptive weight allocation at the decision layer (Ma & Chen, 2025; docs/methods.md, "decision").

The paper finds that the fused decision leans on the dominant modality through the decision layer
itself (larger weight and feature norms). Here a small gate sets per-sample weights
(w_a, w_v) = 2 softmax(gate(s) / T) from each modality's own certainty s (its confidence, or its
normalised entropy; detached: the gate reads the certainty, it does not shape it), and the
prediction is z = w_a z_a + w_v z_v, trained jointly with the model. The gate starts at
w_a = w_v = 1 (plain joint training). Each modality's half of the decision layer also gets its own
cross-entropy (`unimodal_weight`), so that a modality the gate relies on for some samples can
decide alone. `weight_reg` pulls the weights towards equal.

The diagnostics (mmray/methods/diagnostics.py) and the post-training calibration
(mmray/train/calibrate.py) are separate: they apply to every method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from mmray.methods import register_method
from mmray.methods.base import Method, require
from mmray.models import AVOutput


@dataclass(frozen=True)
class DecisionParams:
    gate_input: Literal["confidence", "entropy"] = "entropy"
    gate_hidden: int = 16
    gate_temperature: float = 1.0  # below 1: sharper per-sample choices between the modalities
    unimodal_weight: float = 1.0  # weight of CE(z_a) + CE(z_v)
    weight_reg: float = 0.0  # weight of mean((w_a - 1)^2 + (w_v - 1)^2)

    def __post_init__(self):
        require(self.gate_hidden >= 1, "gate_hidden", self.gate_hidden, "must be at least 1")
        require(self.gate_temperature > 0, "gate_temperature", self.gate_temperature, "must be positive")
        for key in ("unimodal_weight", "weight_reg"):
            require(getattr(self, key) >= 0, key, getattr(self, key), "must not be negative")


def certainty(logits: torch.Tensor, kind: str) -> torch.Tensor:
    """(B,) in [0, 1]: the top softmax probability, or the entropy divided by log K."""
    p = logits.softmax(1)
    if kind == "confidence":
        return p.max(1).values
    return -(p * p.clamp(min=1e-12).log()).sum(1) / math.log(logits.shape[1])


class ConfidenceGate(nn.Module):
    """Per-sample decision weights from the two modalities' certainties; returns them and the gated logits."""

    def __init__(self, kind: str, hidden: int, temperature: float):
        super().__init__()
        self.kind = kind
        self.temperature = temperature
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, 2))
        nn.init.zeros_(self.net[2].weight)  # start at w_a = w_v = 1: joint training
        nn.init.zeros_(self.net[2].bias)

    def forward(self, out: AVOutput) -> dict[str, torch.Tensor]:
        signals = torch.stack([certainty(out.audio.detach(), self.kind), certainty(out.visual.detach(), self.kind)], 1)
        weights = 2 * (self.net(signals) / self.temperature).softmax(1)
        return {"weights": weights, "fused": weights[:, :1] * out.audio + weights[:, 1:] * out.visual}


@register_method
class Decision(Method):
    name = "decision"
    Params = DecisionParams

    def __init__(self, params: DecisionParams, ctx):
        super().__init__(params, ctx)
        # sum w_a, sum w_v, samples (this epoch, this worker), on the device: read once, at the epoch's end.
        self.tally = torch.zeros(3, dtype=torch.float64, device=ctx.world.device)

    def heads(self) -> nn.Module:
        p = self.params
        return ConfidenceGate(p.gate_input, p.gate_hidden, p.gate_temperature)

    def loss(self, out, extras, batch, epoch):
        p, y, w = self.params, batch.label, extras["weights"]
        loss = F.cross_entropy(extras["fused"], y)
        if p.unimodal_weight:
            loss = loss + p.unimodal_weight * (F.cross_entropy(out.audio, y) + F.cross_entropy(out.visual, y))
        if p.weight_reg:
            loss = loss + p.weight_reg * ((w - 1) ** 2).sum(1).mean()
        self.tally[:2] += w.detach().sum(0).double()
        self.tally[2] += len(y)
        return loss

    def on_epoch_start(self, epoch, network):
        self.tally.zero_()
        return {}

    def on_epoch_end(self, epoch, network):
        """The mean weights over this epoch's training samples, over all workers."""
        world = self.ctx.world
        w_a, w_v, n = world.all_reduce_sum(self.tally).tolist()
        return {"decision/w_audio": w_a / max(n, 1), "decision/w_visual": w_v / max(n, 1)}

    def predict(self, out, extras):
        # Each modality's own prediction is its unweighted half: a positive per-sample weight would not change it.
        return {"fused": extras["fused"], "audio": out.audio, "visual": out.visual}
