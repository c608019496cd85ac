"""`reconboost`: boosting over the modalities, one at a time, with global rectification (Hua et al., ICML 2024).

docs/methods.md, "reconboost". One head H = MLP(D -> hidden -> ReLU -> K) shared by both modalities
(so both encoders must give D features) and a learnable boost rate beta (1 at first). The run is a
sequence of stages; stage s trains m = audio for even s, visual for odd s:
- `stage_epochs` epochs on encoder m and H, with a fresh optimizer, loss per sample
  (1/K) [-w1 log p_m(y) + w2 q(y) log p_m(y)] + ga MSE(p_m, p_m'), where p_m = softmax(H(f_m)),
  q = softmax(beta H(f_m')) of the other modality m' (a constant; q(y) = 1 in stage 0, before m' was
  trained) and p_m' = softmax(H(f_m')) a constant: samples the other modality already gets right
  weigh less, and the MSE term (which the released code detached on both sides, so that it did
  nothing) pulls p_m towards p_m' through p_m;
- then `rectify_epochs` epochs of global rectification on everything (encoders, H, beta), with a
  fresh optimizer: CE(beta (H(f_a) + H(f_v))).
The phases' optimizers are built with the run's settings (`TrainStep.make_optimizer`) and saved with
the method's state, so a run resumed inside a phase continues with that phase's optimizer state.
Prediction: fused beta (H(f_a) + H(f_v)); each modality H(f_m). The model's fusion layer is unused.
The total budget is the run's `epochs`, as for every other method.

Under several workers the step goes through DDP (one backward per step), so every rank applies the
same averaged gradients; the schedule depends on the epoch only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmray.errors import UserError
from mmray.methods import register_method
from mmray.methods.base import Method, TrainStep, require
from mmray.models import AVOutput

MODALITIES = ("audio", "visual")


@dataclass(frozen=True)
class ReconBoostParams:
    stage_epochs: int = 1  # epochs of each stage's unimodal boosting phase
    rectify_epochs: int = 1  # epochs of global rectification after each stage (0: none)
    w1: float = 5.0  # weight of the modality's own CE
    w2: float = 1.0  # weight of the boosting term, q(y) log p_m(y)
    ga: float = 0.5  # weight of the MSE term towards the other modality's prediction
    hidden: int = 256  # width of the shared head's hidden layer

    def __post_init__(self):
        require(self.stage_epochs >= 1, "stage_epochs", self.stage_epochs, "must be at least 1")
        require(self.rectify_epochs >= 0, "rectify_epochs", self.rectify_epochs, "must be at least 0")
        for key in ("w1", "w2", "ga"):
            require(getattr(self, key) >= 0, key, getattr(self, key), "must not be negative")
        require(self.hidden >= 1, "hidden", self.hidden, "must be at least 1")


def schedule(epoch: int, stage_epochs: int, rectify_epochs: int) -> tuple[int, str | None]:
    """(stage, the modality it trains) at `epoch`; the modality is None in the stage's rectification phase."""
    stage, within = divmod(epoch, stage_epochs + rectify_epochs)
    return stage, (MODALITIES[stage % 2] if within < stage_epochs else None)


def boosting_loss(z_m: torch.Tensor, z_other: torch.Tensor, label: torch.Tensor, beta: torch.Tensor,
                  p: ReconBoostParams, other_trained: bool) -> torch.Tensor:
    """The batch mean of (1/K)[-w1 log p_m(y) + w2 q(y) log p_m(y)] + ga MSE(p_m, p_m'); z_other gets no gradient."""
    log_p_y = z_m.log_softmax(1).gather(1, label[:, None]).squeeze(1)
    with torch.no_grad():
        p_other = z_other.softmax(1)
        q_y = ((beta * z_other).softmax(1).gather(1, label[:, None]).squeeze(1) if other_trained
               else torch.ones_like(log_p_y))
    boost = (-p.w1 * log_p_y + p.w2 * q_y * log_p_y) / z_m.shape[1]
    return (boost + p.ga * (z_m.softmax(1) - p_other).square().mean(1)).mean()


class BoostHead(nn.Module):
    """H = MLP(D -> hidden -> ReLU -> K) on either modality's features, and the boost rate beta."""

    def __init__(self, dim: int, num_classes: int, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
        self.beta = nn.Parameter(torch.ones(()))

    def forward(self, out: AVOutput) -> dict[str, torch.Tensor]:
        audio, visual = self.mlp(out.audio_features), self.mlp(out.visual_features)
        return {"audio": audio, "visual": visual, "fused": self.beta * (audio + visual)}


@register_method
class ReconBoost(Method):
    name = "reconboost"
    Params = ReconBoostParams

    def __init__(self, params: ReconBoostParams, ctx):
        super().__init__(params, ctx)
        self.phase: tuple[int, str | None] | None = None  # (stage, modality) the optimizer below belongs to
        self.optimizer: torch.optim.Optimizer | None = None
        self._resumed: dict | None = None  # a checkpoint's phase optimizer, loaded when its phase is rebuilt

    @classmethod
    def check_config(cls, params: ReconBoostParams, epochs: int) -> None:
        if params.stage_epochs + params.rectify_epochs > epochs:
            raise UserError(f"stage_epochs: {params.stage_epochs} plus rectify_epochs ({params.rectify_epochs}) "
                            f"must fit in epochs ({epochs})")

    def heads(self) -> nn.Module:
        audio_dim, visual_dim = self.ctx.feature_dims
        if audio_dim != visual_dim:
            raise UserError(f"method 'reconboost': its head is shared by both modalities, so the encoders must give "
                            f"equal feature sizes (audio {audio_dim}, visual {visual_dim})")
        return BoostHead(audio_dim, self.ctx.num_classes, self.params.hidden)

    def on_epoch_start(self, epoch, network):
        stage, modality = schedule(epoch, self.params.stage_epochs, self.params.rectify_epochs)
        trained = MODALITIES[stage % 2]
        return {"reconboost/stage": float(stage), "reconboost/modality": float(MODALITIES.index(trained)),
                "reconboost/rectifying": float(modality is None)}

    def _phase_optimizer(self, step: TrainStep, phase: tuple[int, str | None]) -> torch.optim.Optimizer:
        """The optimizer of `phase`: fresh at its first step, or the checkpoint's when resumed inside it."""
        if phase != self.phase:
            network, modality = step.network, phase[1]
            encoders = ([getattr(network.model, f"{modality}_encoder")] if modality is not None
                        else [network.model.audio_encoder, network.model.visual_encoder])
            params = [p for e in encoders for p in e.parameters()] + list(network.heads.mlp.parameters())
            if modality is None:
                params.append(network.heads.beta)
            self.optimizer, self.phase = step.make_optimizer(params), phase
            if self._resumed is not None and tuple(self._resumed["phase"]) == phase:
                self.optimizer.load_state_dict(self._resumed["optimizer"])
            self._resumed = None
        return self.optimizer

    def train_step(self, step: TrainStep) -> torch.Tensor:
        stage, modality = phase = schedule(step.epoch, self.params.stage_epochs, self.params.rectify_epochs)
        optimizer = self._phase_optimizer(step, phase)
        out, extras = step.wrapped(step.batch.audio, step.batch.frames)
        y = step.batch.label
        if modality is None:
            loss = F.cross_entropy(extras["fused"], y)
        else:
            other = MODALITIES[1 - MODALITIES.index(modality)]
            loss = boosting_loss(extras[modality], extras[other], y, step.network.heads.beta, self.params,
                                 other_trained=stage > 0)
        loss = step.world.with_every_output(loss, [out.fused, out.audio, out.visual, *extras.values()])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    def on_epoch_end(self, epoch, network):
        return {"reconboost/beta": network.heads.beta.item()}

    def predict(self, out: AVOutput, extras: dict) -> dict[str, torch.Tensor]:
        return {"fused": extras["fused"], "audio": extras["audio"], "visual": extras["visual"]}

    def state_dict(self) -> dict:
        # beta and H are in the network's state; the phase's optimizer is the method's own.
        return {"phase": self.phase, "optimizer": None if self.optimizer is None else self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self._resumed = state if state["phase"] is not None else None
