"""`mmpareto`: MMPareto, Pareto integration of the multimodal and unimodal gradients (Wei & Hu, ICML 2024).

docs/methods.md, "mmpareto". Each encoder gets a unimodal head (Linear(D, K)); the losses are
L_mm = CE(z) on the fusion layer and L_m = CE(h_m(f_m)). One forward pass, three backward passes:
g_mm over both encoders and the fusion layer, g_a over the audio encoder and its head, g_v likewise.
For each encoder m, over its parameters flattened, G1 = g_mm|m and G2 = g_m|m:
- cos(G1, G2) > 0: a1 = a2 = 1/2 (no conflict: the plain sum);
- else the two-task min-norm point, a1 = (|G2|^2 - <G1,G2>) / |G1 - G2|^2 clipped to [0.001, 0.999], a2 = 1 - a1.
Then per parameter tensor: d = 2 (a1 g_mm + a2 g_m), scaled up to the norm of the plain sum s = g_mm + g_m
where it is shorter, times `gamma`. The fusion layer and the heads get their plain gradients.

Under several workers the step does not go through DDP: the three task gradients are averaged over
workers in one all-reduce, and cos, weights and norms are computed from the averages, so every rank
applies the same update. The weights stay on the device (no host sync per step); the epoch's conflict
fraction, mean a1 and mean cos per modality are read once, at its end.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmray.methods import register_method
from mmray.methods.base import Method, TrainStep, require
from mmray.methods.heads import UnimodalHeads
from mmray.models import AVOutput

MODALITIES = ("audio", "visual")
EPS = 1e-8  # in the norm ratio of the rescaling
TINY = 1e-20  # in denominators of the weights: zero gradients give a1 = 0.001, not NaN


@dataclass(frozen=True)
class MMParetoParams:
    gamma: float = 1.5  # scales the encoders' combined gradient, and so their effective learning rate

    def __post_init__(self):
        require(self.gamma > 0, "gamma", self.gamma, "must be positive")


def pareto_weights(g1: torch.Tensor, g2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a1, cos, conflict) for flat gradients g1 = g_mm|m, g2 = g_m|m; a2 = 1 - a1. Tensors, on their device."""
    dot = g1 @ g2
    cos = dot / (g1.norm() * g2.norm()).clamp(min=TINY)
    min_norm = ((g2 @ g2 - dot) / (g1 - g2).square().sum().clamp(min=TINY)).clamp(0.001, 0.999)
    conflict = cos <= 0
    return torch.where(conflict, min_norm, torch.full_like(min_norm, 0.5)), cos, conflict


def pareto_gradient(g_mm: torch.Tensor, g_m: torch.Tensor, a1: torch.Tensor, gamma: float) -> torch.Tensor:
    """One parameter tensor's gradient: gamma * d, d = 2 (a1 g_mm + a2 g_m) scaled to |g_mm + g_m| if shorter."""
    d = 2 * (a1 * g_mm + (1 - a1) * g_m)
    r = (g_mm + g_m).norm() / (d.norm() + EPS)
    return gamma * torch.where(r > 1, r * d, d)


def _flatten(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _unflatten(flat: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    return [part.view_as(t) for part, t in zip(flat.split([t.numel() for t in like]), like)]


@register_method
class MMPareto(Method):
    name = "mmpareto"
    Params = MMParetoParams

    def __init__(self, params: MMParetoParams, ctx):
        super().__init__(params, ctx)
        self._tally: torch.Tensor | None = None  # per modality: steps in conflict, sum of a1, sum of cos
        self._steps = 0

    def heads(self) -> nn.Module:
        audio_dim, visual_dim = self.ctx.feature_dims
        return UnimodalHeads(audio_dim, visual_dim, self.ctx.num_classes)

    def on_epoch_start(self, epoch, network):
        self._tally = torch.zeros(3, len(MODALITIES), dtype=torch.float64, device=self.ctx.world.device)
        self._steps = 0
        return {}

    def train_step(self, step: TrainStep) -> torch.Tensor:
        network, batch, world = step.network, step.batch, step.world
        out, extras = network(batch.audio, batch.frames)  # not through DDP: the gradients are averaged below
        encoders = {"audio": list(network.model.audio_encoder.parameters()),
                    "visual": list(network.model.visual_encoder.parameters())}
        heads = {m: list(getattr(network.heads, m).parameters()) for m in MODALITIES}
        fusion = list(network.model.fusion.parameters())
        # The three backward passes, each over the parameters its loss reaches.
        tasks = [(F.cross_entropy(out.fused, batch.label), encoders["audio"] + encoders["visual"] + fusion),
                 *((F.cross_entropy(extras[m], batch.label), encoders[m] + heads[m]) for m in MODALITIES)]
        task_grads = []
        for k, (loss, params) in enumerate(tasks):
            got = torch.autograd.grad(loss, params, retain_graph=k < len(tasks) - 1, allow_unused=True)
            task_grads.append([torch.zeros_like(p) if g is None else g for p, g in zip(params, got)])
        # Averaged over workers in one all-reduce; everything below is computed from the averages.
        flat = world.all_reduce_sum(_flatten([g for grads in task_grads for g in grads])) / world.size
        sizes = [sum(g.numel() for g in grads) for grads in task_grads]
        mm, uni_audio, uni_visual = (_unflatten(part, grads) for part, grads in zip(flat.split(sizes), task_grads))
        n_a, n_v = len(encoders["audio"]), len(encoders["visual"])
        g_mm = {"audio": mm[:n_a], "visual": mm[n_a:n_a + n_v]}
        g_uni = {"audio": uni_audio, "visual": uni_visual}  # encoder m's gradients, then head m's

        step.optimizer.zero_grad(set_to_none=True)
        for p, g in zip(fusion, mm[n_a + n_v:]):
            p.grad = g
        for k, m in enumerate(MODALITIES):
            n = len(encoders[m])
            a1, cos, conflict = pareto_weights(_flatten(g_mm[m]), _flatten(g_uni[m][:n]))
            for p, gm, gu in zip(encoders[m], g_mm[m], g_uni[m][:n]):
                p.grad = pareto_gradient(gm, gu, a1, self.params.gamma)
            for p, g in zip(heads[m], g_uni[m][n:]):
                p.grad = g
            self._tally[:, k] += torch.stack([conflict, a1, cos]).double()
        step.optimizer.step()
        self._steps += 1
        return sum(loss.detach() for loss, _ in tasks)

    def on_epoch_end(self, epoch, network):
        conflict, a1, cos = (self._tally / max(self._steps, 1)).tolist()
        metrics = {}
        for k, m in enumerate(MODALITIES):
            metrics[f"mmpareto/conflict_frac_{m}"] = conflict[k]
            metrics[f"mmpareto/a1_{m}"] = a1[k]
            metrics[f"mmpareto/cos_{m}"] = cos[k]
        return metrics

    def predict(self, out: AVOutput, extras: dict) -> dict[str, torch.Tensor]:
        # The fused prediction is the fusion layer's; each modality's is its own head's (trained by L_m).
        return {"fused": out.fused, "audio": extras["audio"], "visual": extras["visual"]}
