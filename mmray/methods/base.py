"""The interface through which a balancing method plugs into the one training loop.

The loop owns data, optimisation, evaluation, checkpoints and reporting. A method supplies:
- `heads()`: any modules it adds (unimodal heads, gates); the loop trains them with the model;
- `loss()`: the training loss from the model output of one batch;
- `after_backward()`: gradient modulation between backward and the optimizer step;
- `train_step()`: one batch's whole optimisation step; the default is loss -> backward -> after_backward ->
  optimizer step, and a method overrides it only when it needs several backward passes, several optimizer
  steps per batch, or optimizers of its own for phases that train different parameters;
- `on_epoch_start()` / `on_epoch_end()`: work over whole epochs (refits, assignments), returning metrics;
- `lr_factor()`: a factor on the run's learning rate for an epoch (e.g. fine-tuning epochs at a lower rate);
- `predict()`: the logits its prediction rule uses, fused and per modality;
- `state_dict()` / `load_state_dict()`: its own state, saved in every checkpoint;
- `artifacts()`: files (name -> bytes) to save next to each checkpoint, e.g. diagnostic plots.
The defaults implement plain joint training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ClassVar, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from mmray.config import require  # noqa: F401  (methods import it from here, beside Method)
from mmray.models import AVOutput

if TYPE_CHECKING:
    from mmray.data.manifest import Manifest
    from mmray.data.source import Batch, DataSource
    from mmray.world import World


@dataclass(frozen=True)
class NoParams:
    """A method without hyperparameters of its own."""


@dataclass
class TrainStep:
    """What one training step may use; the loop builds one per batch."""

    network: nn.Module  # the network itself: its parameters, gradients and submodules
    wrapped: nn.Module  # the same network under DDP (itself with one worker): a backward through it averages gradients
    optimizer: torch.optim.Optimizer  # the run's optimizer over every parameter; the loop checkpoints it
    # A fresh optimizer over some parameters with the run's settings (kind, lr as scheduled now, weight decay,
    # momentum), for a method whose phases need their own optimizer state; the method checkpoints those.
    make_optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
    world: "World"
    batch: "Batch"
    epoch: int
    index: int  # of the batch within the epoch
    batches: int  # batches per epoch on this worker (from the split size: the streaming split may drop a few)


@dataclass
class MethodContext:
    manifest: "Manifest"  # class count, shapes, per-sample metadata columns (e.g. synthetic-av's `corrupted`)
    data_dir: str  # the prepared dataset folder, for methods that read per-sample metadata
    epochs: int
    world: "World"  # rank, size, collectives: methods that gather over workers use it
    data: "DataSource"  # epoch hooks may sweep the training split (this worker's part)
    feature_dims: tuple[int, int]  # (D_a, D_v) of the encoders' features, for heads a method adds
    seed: int  # the run's seed, for randomness a method must draw identically on every worker

    @property
    def num_classes(self) -> int:
        return self.manifest.num_classes


class Method:
    name: ClassVar[str]
    Params: ClassVar[type] = NoParams
    # True for a method whose parameters may get no gradient in a step (a head not yet switched on):
    # DDP must then look for unused parameters, which costs a graph traversal every step.
    leaves_parameters_unused: ClassVar[bool] = False

    def __init__(self, params, ctx: MethodContext):
        self.params = params
        self.ctx = ctx

    @classmethod
    def check_config(cls, params, epochs: int) -> None:
        """Refuse hyperparameters that do not fit the run's other settings (raise UserError)."""

    def heads(self) -> nn.Module | None:
        """Extra modules; called once. Their forward takes the AVOutput and returns a dict of tensors."""
        return None

    def loss(self, out: AVOutput, extras: dict, batch: "Batch", epoch: int) -> torch.Tensor:
        return F.cross_entropy(out.fused, batch.label)

    def after_backward(self, network: nn.Module, out: AVOutput, extras: dict, batch: "Batch", epoch: int) -> None:
        """Gradients are computed (and all-reduced under DDP); modulate them here."""

    def train_step(self, step: TrainStep) -> torch.Tensor:
        """One batch's optimisation; returns the loss (detached) the epoch's `train/loss` averages."""
        out, extras = step.wrapped(step.batch.audio, step.batch.frames)
        loss = step.world.with_every_output(self.loss(out, extras, step.batch, step.epoch),
                                            [out.fused, out.audio, out.visual, *extras.values()])
        step.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.after_backward(step.network, out, extras, step.batch, step.epoch)
        step.optimizer.step()
        return loss.detach()

    def on_epoch_start(self, epoch: int, network: nn.Module) -> dict[str, float]:
        return {}

    def on_epoch_end(self, epoch: int, network: nn.Module) -> dict[str, float]:
        return {}

    def lr_factor(self, epoch: int) -> float:
        """This epoch's learning rate relative to the run's schedule (1: as scheduled)."""
        return 1.0

    def batchnorm_samples(self, batch: "Batch", epoch: int) -> torch.Tensor | None:
        """Which samples of a training batch BatchNorm statistics may be computed from (a bool mask; None: all)."""
        return None

    def predict(self, out: AVOutput, extras: dict) -> dict[str, torch.Tensor]:
        """Logits for the fused prediction and for each modality's own prediction."""
        return {"fused": out.fused, "audio": out.audio, "visual": out.visual}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def artifacts(self) -> dict[str, bytes]:
        return {}
