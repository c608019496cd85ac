"""`mla`: alternating unimodal adaptation (Zhang et al., CVPR 2024), docs/methods.md "mla".

One head H = Linear(D, K), shared by both modalities (so both encoders must give D features). Each
batch is two sub-steps, audio then visual: loss_m = CE(H(f_m)) into encoder m and H, then an
optimizer step; two optimizer steps per batch, the run's one optimizer (a parameter without a
gradient in a sub-step is left alone by it).

Head memory (`head_memory: owm`): a projector P (D x D, identity at first, shared by both modalities,
a buffer saved with the network) keeps H from forgetting one modality while it learns the other.
At every sub-step but the run's first: r = batch mean of f_m (detached), alpha_t = 0.1 ** (1 + i / I)
(i the batch in the epoch, I batches per epoch), k = P r, P <- P - k k^T / (alpha_t + r^T k),
P <- P / |P|_F, and H's weight gradient becomes grad_W P^T. `off` reproduces the released code, in
which the projection never runs.

Prediction: per sample, the entropy e_m of softmax(H(f_m)) weights the modalities,
w = softmax(-e_a, -e_v), fused = w_a H(f_a) + w_v H(f_v) (the released code took the entropy over
the batch axis; here it is per sample).

Under several workers the sub-steps do not go through DDP: each averages its gradients, and sums the
features for r, in one all-reduce, so every rank updates P and the parameters alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from mmray.errors import UserError
from mmray.methods import register_method
from mmray.methods.base import Method, TrainStep
from mmray.models import AVOutput

MODALITIES = ("audio", "visual")


@dataclass(frozen=True)
class MLAParams:
    head_memory: Literal["owm", "off"] = "owm"  # the projector that protects the shared head; off: the released code


def update_projector(projector: torch.Tensor, r: torch.Tensor, alpha: float) -> torch.Tensor:
    """P - k k^T / (alpha + r^T k) with k = P r, divided by its Frobenius norm."""
    k = projector @ r
    updated = projector - torch.outer(k, k) / (alpha + r @ k)
    return updated / updated.norm()


def entropy_weights(audio: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
    """(2, B): per sample, softmax(-e_a, -e_v) over the two modalities, e_m the entropy of softmax(z_m)."""
    entropy = torch.stack([-(z.softmax(1) * z.log_softmax(1)).sum(1) for z in (audio, visual)])
    return (-entropy).softmax(0)


class SharedHead(nn.Module):
    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(dim, num_classes)
        self.register_buffer("projector", torch.eye(dim))

    def forward(self, out: AVOutput) -> dict[str, torch.Tensor]:
        return {"audio": self.fc(out.audio_features), "visual": self.fc(out.visual_features)}


@register_method
class MLA(Method):
    name = "mla"
    Params = MLAParams

    def __init__(self, params: MLAParams, ctx):
        super().__init__(params, ctx)
        self._tally: torch.Tensor | None = None  # this epoch, over samples: sum of w_a, count, sum of loss_a, of loss_v

    def heads(self) -> nn.Module:
        audio_dim, visual_dim = self.ctx.feature_dims
        if audio_dim != visual_dim:
            raise UserError(f"method 'mla': its head is shared by both modalities, so the encoders must give "
                            f"equal feature sizes (audio {audio_dim}, visual {visual_dim})")
        return SharedHead(audio_dim, self.ctx.num_classes)

    def on_epoch_start(self, epoch, network):
        self._tally = torch.zeros(4, dtype=torch.float64, device=self.ctx.world.device)
        return {}

    def train_step(self, step: TrainStep) -> torch.Tensor:
        network, batch, world = step.network, step.batch, step.world
        head = network.heads
        encoders = {"audio": network.model.audio_encoder, "visual": network.model.visual_encoder}
        inputs = {"audio": batch.audio, "visual": batch.frames}
        logits, losses = {}, {}
        for m in MODALITIES:
            features = encoders[m](inputs[m])  # not through DDP: averaged below with the features' sum
            logits[m] = head.fc(features)
            losses[m] = F.cross_entropy(logits[m], batch.label)
            params = [*encoders[m].parameters(), *head.fc.parameters()]
            grads = torch.autograd.grad(losses[m], params)
            local = torch.cat([*(g.reshape(-1) for g in grads), features.detach().sum(0),
                               torch.tensor([features.shape[0]], dtype=features.dtype, device=features.device)])
            total = world.all_reduce_sum(local)
            n_grad = sum(g.numel() for g in grads)
            grads = [part.view_as(p) / world.size for part, p in zip(total[:n_grad].split([p.numel() for p in params]),
                                                                     params)]
            first = step.epoch == 0 and step.index == 0 and m == MODALITIES[0]
            if self.params.head_memory == "owm" and not first:
                r = total[n_grad:-1] / total[-1]  # the batch mean of f_m over every worker
                alpha = 0.1 ** (1 + step.index / step.batches)
                head.projector.copy_(update_projector(head.projector, r, alpha))
                grads[-2] = grads[-2] @ head.projector.t()  # the weight of H (its bias is last)
            step.optimizer.zero_grad(set_to_none=True)
            for p, g in zip(params, grads):
                p.grad = g
            step.optimizer.step()
        with torch.no_grad():
            w_audio = entropy_weights(logits["audio"], logits["visual"])[0]
            n = float(w_audio.numel())
            self._tally += torch.stack([w_audio.sum(), torch.tensor(n, device=w_audio.device),
                                        losses["audio"] * n, losses["visual"] * n]).double()
        return (losses["audio"] + losses["visual"]).detach()

    def on_epoch_end(self, epoch, network):
        # Over every worker's training batches: the mean fusion weights (each modality's logits before its
        # sub-step) and losses. One all-reduce per epoch.
        w_audio, n, loss_audio, loss_visual = self.ctx.world.all_reduce_sum(self._tally).tolist()
        n = max(n, 1.0)
        return {"mla/weight_audio": w_audio / n, "mla/weight_visual": 1 - w_audio / n,
                "mla/loss_audio": loss_audio / n, "mla/loss_visual": loss_visual / n}

    def predict(self, out: AVOutput, extras: dict) -> dict[str, torch.Tensor]:
        w = entropy_weights(extras["audio"], extras["visual"])
        fused = w[0, :, None] * extras["audio"] + w[1, :, None] * extras["visual"]
        return {"fused": fused, "audio": extras["audio"], "visual": extras["visual"]}
