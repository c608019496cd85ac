"""`aug`: sustained boosting with adaptive classifier assignment (AUG, NeurIPS 2025), docs/methods.md "aug".

Each modality's encoder feeds `n_m` classifiers, Linear(D, hidden) -> ReLU -> one Linear(hidden, K)
shared by every classifier of both modalities; a modality's logits are the sum of its heads. A
modality with t > 1 heads is trained with three terms: the whole ensemble right, the earlier
heads right, and the newest head fitting the residual label that the earlier heads leave.

Every `check_every` epochs (the first check after epoch 1) the epoch's confident scores
s_m = mean_i softmax(z_m)_i[y_i] decide which modality is behind; that one gets one more head.

Under DDP every parameter must exist on every rank from the start, so `max_heads` heads per
modality are built up front and switched on by a counter (a buffer: it is saved with the network,
so a checkpoint rebuilds the same architecture). A head that is not on gets no gradient, so the
optimizer, which holds every head from the start, leaves it at its initial weights until it is
switched on, and trains it from that step. The scores are all-reduced, so every rank decides alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmray.errors import UserError
from mmray.methods import register_method
from mmray.methods.base import Method, require
from mmray.models import AVOutput
from mmray.plots import subplots, to_png

MODALITIES = ("audio", "visual")
ALPHA_GRID = np.linspace(0.0, 1.0, 21)  # the values alpha is fitted over


@dataclass(frozen=True)
class AUGParams:
    boost_rate: float = 0.5  # lambda of the paper: how much of the earlier heads' confidence the new head is spared
    sigma: float = 1.0  # weight of the other modality's score in the assignment rule
    tau: float = 0.01  # dead zone: no head while the scores are this close
    check_every: int = 1  # epochs between assignment checks
    max_heads: int = 4  # per modality
    hidden: int = 256  # width of each head's hidden layer
    alpha: float | None = None  # fused = alpha z_a + (1 - alpha) z_v; None: fitted on train every epoch

    def __post_init__(self):
        require(0.0 <= self.boost_rate <= 1.0, "boost_rate", self.boost_rate, "must be in [0, 1]")
        require(self.sigma >= 0.0, "sigma", self.sigma, "must be at least 0")
        require(self.tau >= 0.0, "tau", self.tau, "must be at least 0")
        require(self.check_every >= 1, "check_every", self.check_every, "must be at least 1")
        require(self.max_heads >= 1, "max_heads", self.max_heads, "must be at least 1")
        require(self.hidden >= 1, "hidden", self.hidden, "must be at least 1")
        require(self.alpha is None or 0.0 <= self.alpha <= 1.0, "alpha", self.alpha, "must be in [0, 1] or null")


def boosting_loss(head_logits: torch.Tensor, label: torch.Tensor, boost_rate: float) -> torch.Tensor:
    """The loss of one modality from its active heads' logits (t, B, K), head 1 first.

    t = 1: CE(z_1, y). t > 1: CE(sum_j<=t z_j, y) + CE(sum_j<t z_j, y) + CE(z_t, y_res), with the
    soft residual label y_res = y - lambda * y * softmax(sum_j<t z_j), detached (non-zero only at y).
    """
    if head_logits.shape[0] == 1:
        return F.cross_entropy(head_logits[0], label)
    earlier = head_logits[:-1].sum(0)
    newest = head_logits[-1]
    eps_all = F.cross_entropy(earlier + newest, label)
    eps_pre = F.cross_entropy(earlier, label)
    p_earlier = earlier.detach().softmax(1).gather(1, label[:, None]).squeeze(1)
    residual = 1.0 - boost_rate * p_earlier  # y_res at the true class; 0 elsewhere
    eps = -(residual * newest.log_softmax(1).gather(1, label[:, None]).squeeze(1)).mean()
    return eps_all + eps_pre + eps


def assign_head(score_audio: float, score_visual: float, sigma: float, tau: float) -> str | None:
    """The modality that gets the next head: the one the other leads by more than `tau`, or none.

    With sigma < 1 both may qualify; then the one that is further behind gets it (one head per check).
    """
    behind = {"visual": score_audio - sigma * score_visual - tau,  # audio leads: visual is behind
              "audio": score_visual - sigma * score_audio - tau}
    modality = max(behind, key=behind.get)
    return modality if behind[modality] > 0 else None


def fit_alpha(audio: torch.Tensor, visual: torch.Tensor, label: torch.Tensor) -> float:
    """The alpha in ALPHA_GRID with the best accuracy of alpha z_a + (1 - alpha) z_v, ties to the lower NLL."""
    best = None
    for alpha in ALPHA_GRID:
        fused = alpha * audio + (1 - alpha) * visual
        key = ((fused.argmax(1) == label).float().mean().item(), -F.cross_entropy(fused, label).item())
        if best is None or key > best[0]:
            best = (key, float(alpha))
    return best[1]


class BoostedHeads(nn.Module):
    """`max_heads` classifiers per modality, `active` of them on, over one shared output layer."""

    def __init__(self, feature_dims: tuple[int, int], num_classes: int, max_heads: int, hidden: int):
        super().__init__()
        self.hidden_layers = nn.ModuleDict({
            m: nn.ModuleList(nn.Sequential(nn.Linear(dim, hidden), nn.ReLU()) for _ in range(max_heads))
            for m, dim in zip(MODALITIES, feature_dims)})
        self.output = nn.Linear(hidden, num_classes)  # shared by every head of both modalities
        self.register_buffer("active", torch.ones(len(MODALITIES), dtype=torch.long))

    def count(self, modality: str) -> int:
        return int(self.active[MODALITIES.index(modality)])

    def add(self, modality: str) -> None:
        self.active[MODALITIES.index(modality)] += 1

    def forward(self, out: AVOutput) -> dict[str, torch.Tensor]:
        """Per modality, the active heads' logits stacked (t, B, K)."""
        features = {"audio": out.audio_features, "visual": out.visual_features}
        return {m: torch.stack([self.output(layer(features[m])) for layer in self.hidden_layers[m][: self.count(m)]])
                for m in MODALITIES}


@register_method
class AUG(Method):
    name = "aug"
    Params = AUGParams
    leaves_parameters_unused = True  # heads not yet switched on get no gradient

    def __init__(self, params: AUGParams, ctx):
        super().__init__(params, ctx)
        self.boosted = BoostedHeads(ctx.feature_dims, ctx.num_classes, params.max_heads, params.hidden)
        self.alpha = 0.5 if params.alpha is None else params.alpha
        self.pending: str | None = None  # the modality whose new head switches on at the next epoch
        self.history: list[dict] = []  # per epoch: heads and scores, for the plot
        # This epoch's summed scores and sample count, on the device: read once, at the epoch's end.
        self._score_sum = torch.zeros(len(MODALITIES) + 1, dtype=torch.float64, device=ctx.world.device)

    @classmethod
    def check_config(cls, params: AUGParams, epochs: int) -> None:
        if params.check_every >= epochs:
            raise UserError(f"check_every: {params.check_every} must be below epochs ({epochs}), "
                            f"or no head is ever assigned")

    def heads(self) -> nn.Module:
        return self.boosted

    def on_epoch_start(self, epoch: int, network: nn.Module) -> dict[str, float]:
        # A head decided at the end of the last epoch switches on now: it was not part of the model
        # that epoch's validation and checkpoint describe, and it trains from this epoch's first step.
        if self.pending is not None:
            self.boosted.add(self.pending)
            self.pending = None
        self._score_sum.zero_()
        return {}

    def loss(self, out, extras, batch, epoch):
        y = batch.label
        with torch.no_grad():
            for k, m in enumerate(MODALITIES):
                self._score_sum[k] += extras[m].sum(0).softmax(1).gather(1, y[:, None]).sum().double()
            self._score_sum[-1] += y.numel()
        return sum(boosting_loss(extras[m], y, self.params.boost_rate) for m in MODALITIES)

    def on_epoch_end(self, epoch: int, network: nn.Module) -> dict[str, float]:
        p, world = self.params, self.ctx.world
        # Every rank sees the same scores, so every rank makes the same decision.
        totals = world.all_reduce_sum(self._score_sum)
        scores = dict(zip(MODALITIES, (totals[:2] / totals[2].clamp(min=1)).tolist()))
        metrics = {f"aug/heads_{m}": float(self.boosted.count(m)) for m in MODALITIES}
        metrics.update({f"aug/score_{m}": scores[m] for m in MODALITIES})
        if epoch % p.check_every == 0:
            modality = assign_head(scores["audio"], scores["visual"], p.sigma, p.tau)
            if modality is not None and self.boosted.count(modality) < p.max_heads:
                self.pending = modality
        if p.alpha is None:
            self.alpha = self._fit_alpha_on_train(network)
        metrics["aug/alpha"] = self.alpha
        self.history.append({"epoch": epoch + 1, **{k.removeprefix("aug/"): v for k, v in metrics.items()}})
        return metrics

    @torch.no_grad()
    def _fit_alpha_on_train(self, network: nn.Module) -> float:
        """Fitted on the training split (as stored, not augmented), never on validation: the validation
        score that selects checkpoints and configurations must not contain the data alpha was fitted on.
        Each worker sweeps its own share; the gathered logits are the same on every rank, and so is the fit."""
        world = self.ctx.world
        network.eval()
        logits = {m: [] for m in MODALITIES}
        labels = []
        for batch in self.ctx.data.eval_batches("train"):
            _, extras = network(batch.audio, batch.frames)
            for m in MODALITIES:
                logits[m].append(extras[m].sum(0))
            labels.append(batch.label)
        network.train()
        gathered = {m: world.all_gather(torch.cat(logits[m])).cpu() for m in MODALITIES}
        return fit_alpha(gathered["audio"], gathered["visual"], world.all_gather(torch.cat(labels)).cpu())

    def predict(self, out: AVOutput, extras: dict) -> dict[str, torch.Tensor]:
        audio, visual = extras["audio"].sum(0), extras["visual"].sum(0)
        return {"fused": self.alpha * audio + (1 - self.alpha) * visual, "audio": audio, "visual": visual}

    def state_dict(self) -> dict:
        # The active head counts are in the network's state (a buffer of BoostedHeads).
        return {"alpha": self.alpha, "pending": self.pending, "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.alpha, self.pending, self.history = state["alpha"], state["pending"], list(state["history"])

    def artifacts(self) -> dict[str, bytes]:
        return {"aug_heads.png": plot_history(self.history)} if self.history else {}


def plot_history(history: list[dict]) -> bytes:
    """PNG bytes: heads per modality (top) and confident scores (bottom) over epochs."""
    epochs = [h["epoch"] for h in history]
    fig, (top, bottom) = subplots(2, 1, figsize=(6, 4.5), dpi=100, sharex=True)
    for m in MODALITIES:
        top.step(epochs, [h[f"heads_{m}"] for h in history], where="post", label=m)
        bottom.plot(epochs, [h[f"score_{m}"] for h in history], marker="o", label=m)
    top.set_ylabel("heads")
    top.yaxis.get_major_locator().set_params(integer=True)
    top.legend(fontsize=8)
    bottom.set_ylabel("confident score")
    bottom.set_xlabel("epoch")
    bottom.legend(fontsize=8)
    return to_png(fig)
