"""The interface through which a balancing method plugs into the one training loop.

The loop owns data, optimisation, evaluation, checkpoints and reporting. A method supplies:
- `heads()`: any modules it adds (unimodal heads, gates); the loop trains them with the model;
- `loss()`: the training loss from the model output of one batch;
- `after_backward()`: gradient modulation between backward and the optimizer step;
- `on_epoch_start()` / `on_epoch_end()`: work over whole epochs (refits, assignments), returning metrics;
- `lr_factor()`: a factor on the run's learning rate for an epoch (e.g. fine-tuning epochs at a lower rate);
- `predict()`: the logits its prediction rule uses, fused and per modality;
- `state_dict()` / `load_state_dict()`: its own state, saved in every checkpoint;
- `artifacts()`: files (name -> bytes) to save next to each checkpoint, e.g. diagnostic plots.
The defaults implement plain joint training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

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

    def on_epoch_start(self, epoch: int, network: nn.Module) -> dict[str, float]:
        return {}

    def on_epoch_end(self, epoch: int, network: nn.Module) -> dict[str, float]:
        return {}

    def lr_factor(self, epoch: int) -> float:
        """This epoch's learning rate relative to the run's schedule (1: as scheduled)."""
        return 1.0

    def predict(self, out: AVOutput, extras: dict) -> dict[str, torch.Tensor]:
        """Logits for the fused prediction and for each modality's own prediction."""
        return {"fused": out.fused, "audio": out.audio, "visual": out.visual}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def artifacts(self) -> dict[str, bytes]:
        return {}
