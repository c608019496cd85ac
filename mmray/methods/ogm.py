"""`ogm`: OGM-GE, on-the-fly gradient modulation with generalisation enhancement (Peng et al., CVPR 2022).

Per batch, each modality's share s_m = sum_i softmax(z_m)_i[y_i] (z_m: its half of the decision
layer). With rho_a = s_a / s_v, the dominant modality m (rho_m > 1) has its encoder's gradients
multiplied by k_m = 1 - tanh(alpha (rho_m - 1)); the other keeps 1. GE then adds Gaussian noise
with the original gradient's std to each modulated gradient. Only in epochs
modulation_starts <= epoch < modulation_ends (0-based; None: to the end of the run).

Under DDP the gradients are already averaged when `after_backward` runs, so every worker must
scale them by the same k and add the same noise: the shares are summed over all workers' batches
(one all-reduce of two numbers per step), and the noise comes from a generator seeded by
(run seed, epoch, step), not from the global RNG.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from mmray.errors import UserError
from mmray.methods import register_method
from mmray.methods.base import Method, require


@dataclass(frozen=True)
class OGMParams:
    alpha: float = 0.8  # strength of the modulation (the authors' CREMA-D value)
    modulation_starts: int = 0
    modulation_ends: int | None = None  # exclusive; None: until the last epoch
    ge: bool = True  # generalisation enhancement noise

    def __post_init__(self):
        require(self.alpha >= 0, "alpha", self.alpha, "must not be negative")
        require(self.modulation_starts >= 0, "modulation_starts", self.modulation_starts, "must be at least 0")
        require(self.modulation_ends is None or self.modulation_ends > self.modulation_starts, "modulation_ends",
                self.modulation_ends, f"must be above modulation_starts ({self.modulation_starts})")


def ogm_coefficients(s_a: float, s_v: float, alpha: float) -> tuple[float, float]:
    """(k_a, k_v): 1 - tanh(alpha (rho - 1)) for the dominant modality, 1 for the other."""
    rho_a = s_a / max(s_v, 1e-12)
    if rho_a > 1:
        return 1.0 - math.tanh(alpha * (rho_a - 1.0)), 1.0
    if rho_a < 1:
        return 1.0, 1.0 - math.tanh(alpha * (1.0 / max(rho_a, 1e-12) - 1.0))
    return 1.0, 1.0


def modulate(parameters, k: float, generator: torch.Generator | None) -> None:
    """grad <- k * grad (+ N(0, std(grad)^2) noise drawn from `generator`, the GE step)."""
    for p in parameters:
        if p.grad is None:
            continue
        g = p.grad
        std = g.std(unbiased=False) if generator is not None else None
        g.mul_(k)
        if generator is not None:
            # Drawn on the CPU: the same numbers on every worker whatever its device.
            g.add_(torch.randn(g.shape, generator=generator, dtype=g.dtype).to(g.device) * std)


@register_method
class OGM(Method):
    name = "ogm"
    Params = OGMParams

    def __init__(self, params: OGMParams, ctx):
        super().__init__(params, ctx)
        self._reset_tally()

    @classmethod
    def check_config(cls, params: OGMParams, epochs: int) -> None:
        if params.modulation_starts >= epochs:
            raise UserError(f"modulation_starts: {params.modulation_starts} must be below epochs ({epochs})")

    def active(self, epoch: int) -> bool:
        p = self.params
        return p.modulation_starts <= epoch and (p.modulation_ends is None or epoch < p.modulation_ends)

    def _reset_tally(self) -> None:
        self.step = 0
        # Over this epoch's steps: sum k_a, sum k_v, steps modulating audio, steps modulating vision, sum log rho_a.
        self.tally = torch.zeros(5, dtype=torch.float64)

    def on_epoch_start(self, epoch, network):
        self._reset_tally()
        return {}

    def _generator(self, epoch: int) -> torch.Generator:
        # (run seed, epoch, step) names the step alike on every worker and on resume.
        seed = (self.ctx.seed * 1_000_003 + epoch) * 1_000_003 + self.step
        return torch.Generator().manual_seed(seed % (2**63))

    def after_backward(self, network: nn.Module, out, extras, batch, epoch: int) -> None:
        with torch.no_grad():
            y = batch.label[:, None]
            local = torch.stack([out.audio.softmax(1).gather(1, y).sum(), out.visual.softmax(1).gather(1, y).sum()])
        s_a, s_v = self.ctx.world.all_reduce_sum(local.double()).tolist()
        k_a, k_v = ogm_coefficients(s_a, s_v, self.params.alpha) if self.active(epoch) else (1.0, 1.0)
        model = network.model
        for encoder, k in ((model.audio_encoder, k_a), (model.visual_encoder, k_v)):
            if k < 1.0:
                modulate(encoder.parameters(), k, self._generator(epoch) if self.params.ge else None)
        self.tally += torch.tensor([k_a, k_v, k_a < 1.0, k_v < 1.0, math.log(max(s_a, 1e-12) / max(s_v, 1e-12))],
                                   dtype=torch.float64)
        self.step += 1

    def on_epoch_end(self, epoch, network):
        """Per-epoch means over steps (the same on every worker: the shares were all-reduced)."""
        steps = max(self.step, 1)
        k_a, k_v, n_a, n_v, log_rho = (self.tally / steps).tolist()
        return {"ogm/coeff_audio": k_a, "ogm/coeff_visual": k_v, "ogm/modulated_audio_frac": n_a,
                "ogm/modulated_visual_frac": n_v, "ogm/ratio_audio": math.exp(log_rho)}
