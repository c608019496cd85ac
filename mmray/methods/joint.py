"""`joint`: cross-entropy on the fused logits; `audio-only` / `visual-only`: one modality alone.

The unimodal baselines train the same model but only through one modality's share of the
decision layer, so the other encoder receives no gradient; every comparison table needs them.
"""

from __future__ import annotations

import torch.nn.functional as F

from mmray.methods import register_method
from mmray.methods.base import Method


@register_method
class Joint(Method):
    name = "joint"


class _Unimodal(Method):
    modality: str

    def loss(self, out, extras, batch, epoch):
        return F.cross_entropy(getattr(out, self.modality), batch.label)

    def predict(self, out, extras):
        # A unimodal model's fused prediction is its own modality's prediction.
        own = getattr(out, self.modality)
        return {"fused": own, "audio": out.audio, "visual": out.visual}


@register_method
class AudioOnly(_Unimodal):
    name = "audio-only"
    modality = "audio"


@register_method
class VisualOnly(_Unimodal):
    name = "visual-only"
    modality = "visual"
