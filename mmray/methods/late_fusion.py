"""`late-fusion`: two unimodal models trained side by side, their predictions averaged (docs/methods.md, "late-fusion").

The simple baseline that re-evaluations in this field find hardest to beat. Each modality's encoder
gets a head of its own (Linear(D, K); not its half of the fusion layer, whose shared bias would
couple the two), and the loss is CE(h_a(f_a)) + CE(h_v(f_v)): no term mixes the modalities, so with
an element-wise optimizer one run equals two unimodal runs that share the batch order, and one
checkpoint holds both, selected on the fused validation accuracy like every other method.

The prediction averages the two: their softmax probabilities (`average: prob_mean`, returned as the
log of the mean, which has the same softmax and argmax) or their logits (`logit_mean`). (methods.md
calls the setting `fusion`; that key is the run's fusion layer, concat or sum.)

The model's fusion layer is never used; under DDP the loop's `with_every_output` gives it zero
gradients, so every worker reduces the same set of parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from mmray.methods import register_method
from mmray.methods.base import Method
from mmray.methods.heads import UnimodalHeads
from mmray.models import AVOutput

@dataclass(frozen=True)
class LateFusionParams:
    average: Literal["prob_mean", "logit_mean"] = "prob_mean"  # how the two predictions are averaged


def late_fusion(audio: torch.Tensor, visual: torch.Tensor, average: str) -> torch.Tensor:
    """Fused logits: log((softmax(z_a) + softmax(z_v)) / 2) for prob_mean, (z_a + z_v) / 2 for logit_mean."""
    if average == "logit_mean":
        return (audio + visual) / 2
    return torch.logsumexp(torch.stack([audio.log_softmax(1), visual.log_softmax(1)]), dim=0) - math.log(2)


@register_method
class LateFusion(Method):
    name = "late-fusion"
    Params = LateFusionParams

    def heads(self) -> nn.Module:
        audio_dim, visual_dim = self.ctx.feature_dims
        return UnimodalHeads(audio_dim, visual_dim, self.ctx.num_classes)

    def loss(self, out, extras, batch, epoch):
        return F.cross_entropy(extras["audio"], batch.label) + F.cross_entropy(extras["visual"], batch.label)

    def predict(self, out: AVOutput, extras: dict) -> dict[str, torch.Tensor]:
        return {"fused": late_fusion(extras["audio"], extras["visual"], self.params.average),
                "audio": extras["audio"], "visual": extras["visual"]}
