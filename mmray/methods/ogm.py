"""`ogm`: OGM-GE, on-the-fly gradient modulation with generalisation enhancement (Peng et al., CVPR 2022).

Per batch, each modality's share s_m = sum_i softmax(z_m)_i[y_i] (z_m: its half of the decision
layer). With rho_a = s_a / s_v, the dominant modality m (rho_m > 1) has its encoder's gradients
multiplied by k_m = 1 - tanh(alpha (rho_m - 1)); the other keeps 1. GE then adds Gaussian noise
with the original gradient's std to each modulated gradient. Only in epochs
modulation_starts <= epoch < modulation_ends (0-based; None: to the end of the run).

Under DDP the gradients are already averaged when `after_backward` runs, so every worker must
scale them by the same k and add the same noise: the shares are summed over all workers' batches
(one all-reduce of two numbers per step), and the noise comes from a generator on the device seeded
by (run seed, epoch, step), not from the global RNG. Nothing is read back to the host per step: the
coefficients stay tensors, and the noise is drawn for both encoders and kept where k < 1.
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


def modulation_coefficients(shares: torch.Tensor, alpha: float) -> torch.Tensor:
    """(k_a, k_v) from the shares (s_a, s_v), as a tensor on their device: 1 - tanh(alpha (rho - 1)) for
    the dominant modality, 1 for the other."""
    s_a, s_v = shares.double().unbind()
    rho_a = s_a / s_v.clamp(min=1e-12)
    rho_v = 1.0 / rho_a.clamp(min=1e-12)
    one = torch.ones_like(rho_a)
    return torch.stack([torch.where(rho_a > 1, 1.0 - torch.tanh(alpha * (rho_a - 1.0)), one),
                        torch.where(rho_a < 1, 1.0 - torch.tanh(alpha * (rho_v - 1.0)), one)])


def ogm_coefficients(s_a: float, s_v: float, alpha: float) -> tuple[float, float]:
    """`modulation_coefficients` of two numbers, as numbers."""
    k_a, k_v = modulation_coefficients(torch.tensor([s_a, s_v], dtype=torch.float64), alpha).tolist()
    return k_a, k_v


def modulate(parameters, k: torch.Tensor, generator: torch.Generator | None) -> None:
    """grad <- k * grad (+ N(0, std(grad)^2) noise drawn from `generator`, the GE step, where k < 1)."""
    for p in parameters:
        if p.grad is None:
            continue
        g = p.grad
        std = g.std(unbiased=False) if generator is not None else None
        g.mul_(k.to(g.dtype))
        if generator is not None:
            # Drawn on the gradient's device; every worker holds the same generator, so the same noise.
            noise = torch.randn(g.shape, generator=generator, dtype=g.dtype, device=g.device)
            g.add_(noise * (std * (k < 1.0)).to(g.dtype))


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
        # Over this epoch's steps: sum k_a, sum k_v, steps modulating audio, steps modulating vision,
        # sum log rho_a; on the device, read once at the epoch's end.
        self.tally = torch.zeros(5, dtype=torch.float64, device=self.ctx.world.device)

    def on_epoch_start(self, epoch, network):
        self._reset_tally()
        return {}

    def _generator(self, epoch: int) -> torch.Generator:
        # (run seed, epoch, step) names the step alike on every worker and on resume.
        seed = (self.ctx.seed * 1_000_003 + epoch) * 1_000_003 + self.step
        return torch.Generator(device=self.ctx.world.device).manual_seed(seed % (2**63))

    def after_backward(self, network: nn.Module, out, extras, batch, epoch: int) -> None:
        with torch.no_grad():
            y = batch.label[:, None]
            local = torch.stack([out.audio.softmax(1).gather(1, y).sum(), out.visual.softmax(1).gather(1, y).sum()])
        shares = self.ctx.world.all_reduce_sum(local.double())
        if not self.active(epoch):
            k = torch.ones(2, dtype=torch.float64, device=shares.device)
        else:
            k = modulation_coefficients(shares, self.params.alpha)
            model = network.model
            for encoder, k_m in ((model.audio_encoder, k[0]), (model.visual_encoder, k[1])):
                modulate(encoder.parameters(), k_m, self._generator(epoch) if self.params.ge else None)
        log_rho = shares.clamp(min=1e-12).log()
        self.tally += torch.cat([k, (k < 1.0).double(), (log_rho[0] - log_rho[1])[None]])
        self.step += 1

    def on_epoch_end(self, epoch, network):
        """Per-epoch means over steps (the same on every worker: the shares were all-reduced)."""
        steps = max(self.step, 1)
        k_a, k_v, n_a, n_v, log_rho = (self.tally / steps).tolist()
        return {"ogm/coeff_audio": k_a, "ogm/coeff_visual": k_v, "ogm/modulated_audio_frac": n_a,
                "ogm/modulated_visual_frac": n_v, "ogm/ratio_audio": math.exp(log_rho)}
