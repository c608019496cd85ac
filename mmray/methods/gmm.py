"""`gmm`: GMM-guided adaptive loss (Liu et al., 2025), in our formulation (docs/methods.md, "gmm").

Two unimodal heads of the method's own give each sample a modality gap g = p_a(y) - p_v(y).
After a warm-up on CE(z) + CE(z_a) + CE(z_v), a Gaussian mixture is fitted to the gaps of the
whole training split at the start of every `refit_every`-th adaptive epoch. Its component with the
mean nearest 0 is "balanced"; r_i = P(sample i is imbalanced) then shapes each sample's loss:
balanced samples weigh the fused CE more, imbalanced ones pay penalties that pull their gap
towards 0 and towards the balanced component.

Under several workers each sweeps its own part of train; the gaps are gathered, rank 0 fits the
mixture and broadcasts it, and every rank computes r for every sample itself, because a worker
may be handed other samples in the next epoch. The purification step (`purify_*`) lives elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmray.data.shards import read_column_by_index
from mmray.errors import UserError
from mmray.methods import register_method
from mmray.methods.base import Method, require
from mmray.methods.heads import UnimodalHeads  # z_a, z_v of the gap and of the unimodal CE
from mmray.plots import subplots, to_png

# A collapsed balanced component (e.g. many gaps saturated at one value) has a near-zero variance,
# which would make the lambda2 penalty (g - mu_b)^2 / (2 sigma_b^2) explode: floor its std.
MIN_SIGMA = 1e-3


@dataclass(frozen=True)
class GMMParams:
    warmup_epochs: int = 2
    gmm_components: int = 2
    refit_every: int = 1
    alpha: float = 1.0  # extra weight of the |g| penalty for imbalanced samples
    beta: float = 1.0  # extra weight of the fused CE for balanced samples
    lambda1: float = 0.5  # weight of the |g| penalty
    lambda2: float = 0.5  # weight of the pull towards the balanced component
    stopgrad_strong: bool = False
    purify_threshold: float = 0.5  # keep samples with P(balanced) above this (purification)
    purify_epochs: int = 0  # > 0: the run's last epochs fine-tune on the kept samples only
    purify_lr_factor: float = 0.1  # the learning rate of those epochs, relative to the run's schedule

    def __post_init__(self):
        require(self.warmup_epochs >= 0, "warmup_epochs", self.warmup_epochs, "must be at least 0")
        require(self.gmm_components >= 1, "gmm_components", self.gmm_components, "must be at least 1")
        require(self.refit_every >= 1, "refit_every", self.refit_every, "must be at least 1")
        for key in ("alpha", "beta", "lambda1", "lambda2"):
            require(getattr(self, key) >= 0, key, getattr(self, key), "must not be negative")
        require(0 <= self.purify_threshold < 1, "purify_threshold", self.purify_threshold, "must be in [0, 1)")
        require(self.purify_epochs >= 0, "purify_epochs", self.purify_epochs, "must be at least 0")
        require(0 < self.purify_lr_factor <= 1, "purify_lr_factor", self.purify_lr_factor, "must be in (0, 1]")


@dataclass(frozen=True)
class GapMixture:
    """A 1-D Gaussian mixture over modality gaps, its components sorted by mean (stable names)."""

    means: np.ndarray  # (K,)
    variances: np.ndarray  # (K,)
    weights: np.ndarray  # (K,)

    @property
    def balanced(self) -> int:
        return int(np.argmin(np.abs(self.means)))

    @property
    def mu_b(self) -> float:
        return float(self.means[self.balanced])

    @property
    def sigma_b(self) -> float:
        return max(float(np.sqrt(self.variances[self.balanced])), MIN_SIGMA)

    def imbalance_posterior(self, gaps: np.ndarray) -> np.ndarray:
        """r_i = P(any component but the balanced one | g_i), in closed form (no sklearn on any rank)."""
        g = np.asarray(gaps, np.float64)[:, None]
        log_joint = np.log(self.weights) - 0.5 * (np.log(2 * np.pi * self.variances)
                                                  + (g - self.means) ** 2 / self.variances)
        responsibility = np.exp(log_joint - log_joint.max(axis=1, keepdims=True))
        responsibility /= responsibility.sum(axis=1, keepdims=True)
        # Summed over the other components, not 1 - P(balanced): small r keep their precision.
        return np.delete(responsibility, self.balanced, axis=1).sum(axis=1)

    def packed(self) -> np.ndarray:
        return np.stack([self.means, self.variances, self.weights])

    @classmethod
    def unpack(cls, packed: np.ndarray) -> "GapMixture":
        return cls(*np.asarray(packed, np.float64))


@dataclass(frozen=True)
class BalancedSelection:
    """Which train samples a model's gap mixture finds balanced: P(balanced) > threshold."""

    index: np.ndarray  # every train index, ascending
    gaps: np.ndarray  # g of each, same order
    p_imbalanced: np.ndarray  # r of each, same order
    kept: np.ndarray  # the indices kept (P(balanced) > threshold)
    dropped: np.ndarray  # the others
    fit: dict[str, float]  # the fit's metrics (gmm/...)

    @property
    def kept_fraction(self) -> float:
        return len(self.kept) / len(self.index)


def fit_gap_mixture(gaps: np.ndarray, components: int) -> GapMixture:
    from sklearn.mixture import GaussianMixture  # here: sklearn takes ~0.8 s to import, and only refits need it

    gm = GaussianMixture(n_components=components, random_state=0).fit(np.asarray(gaps, np.float64).reshape(-1, 1))
    order = np.argsort(gm.means_[:, 0])
    return GapMixture(gm.means_[order, 0], gm.covariances_.reshape(-1)[order], gm.weights_[order])


def plot_gap_mixture(gaps: np.ndarray, mixture: GapMixture) -> bytes:
    """PNG bytes: the gap histogram (density) with each weighted component and their sum."""
    fig, ax = subplots(figsize=(6, 3.5), dpi=100)
    ax.hist(gaps, bins=60, range=(-1, 1), density=True, color="0.75", label="gap g = p_a(y) - p_v(y)")
    x = np.linspace(-1, 1, 400)
    total = np.zeros_like(x)
    for k, (mean, var, weight) in enumerate(zip(mixture.means, mixture.variances, mixture.weights)):
        pdf = weight * np.exp(-(x - mean) ** 2 / (2 * var)) / np.sqrt(2 * np.pi * var)
        total += pdf
        kind = "balanced" if k == mixture.balanced else "imbalanced"
        ax.plot(x, pdf, label=f"{kind}: mean {mean:+.2f}, w {weight:.2f}")
    ax.plot(x, total, "k--", linewidth=1, label="mixture")
    ax.set_xlabel("modality gap")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    return to_png(fig)


def modality_gap(extras: dict, label: torch.Tensor, stopgrad_strong: bool = False) -> torch.Tensor:
    """g = p_a(y) - p_v(y) from the unimodal heads; with `stopgrad_strong` the larger one is a constant."""
    p_a = extras["audio"].softmax(1).gather(1, label[:, None]).squeeze(1)
    p_v = extras["visual"].softmax(1).gather(1, label[:, None]).squeeze(1)
    if stopgrad_strong:
        # The penalties should lift the weak modality, not pull the strong one down.
        audio_strong = p_a >= p_v
        p_a = torch.where(audio_strong, p_a.detach(), p_a)
        p_v = torch.where(audio_strong, p_v, p_v.detach())
    return p_a - p_v


def freeze_batchnorm(network: nn.Module) -> None:
    """BatchNorm layers in eval mode: they normalise with their running statistics and stop updating them."""
    for module in network.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


@register_method
class GMM(Method):
    name = "gmm"
    Params = GMMParams

    def __init__(self, params: GMMParams, ctx):
        super().__init__(params, ctx)
        self.mixture: GapMixture | None = None  # the last fit, shared by all ranks
        self.posteriors: torch.Tensor | None = None  # r by train index (NaN for an index never seen)
        self.last_gaps: np.ndarray | None = None  # the last fit's gaps in index order, for diagnostics
        self.keep: torch.Tensor | None = None  # purification: 1.0 for kept train samples, by index
        self._corrupted: np.ndarray | None = None
        self._device_tables: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # name -> (host table, its copy)
        # With purify_epochs > 0 the run ends with that many purification epochs (the search option):
        # refit once, drop samples with P(balanced) <= purify_threshold, plain CE on the rest at
        # purify_lr_factor x the learning rate, BatchNorm statistics frozen (so dropped samples,
        # which still pass through the network, never shape them) and recomputed from kept samples only.
        self.purify_from = ctx.epochs - params.purify_epochs if params.purify_epochs else None

    @classmethod
    def check_config(cls, params: GMMParams, epochs: int) -> None:
        if params.purify_epochs >= epochs:
            raise UserError(f"purify_epochs: {params.purify_epochs} must be below epochs ({epochs})")

    @property
    def last_fit(self) -> dict | None:
        """The last fit's parameters (components sorted by mean), for diagnostics and checkpoints."""
        m = self.mixture
        if m is None:
            return None
        return {"means": m.means.tolist(), "variances": m.variances.tolist(), "weights": m.weights.tolist(),
                "balanced": m.balanced, "mu_b": m.mu_b, "sigma_b": m.sigma_b}

    def heads(self) -> nn.Module:
        # The feature sizes depend on the backbone, which the loop builds: it passes them in the context.
        audio_dim, visual_dim = self.ctx.feature_dims
        return UnimodalHeads(audio_dim, visual_dim, self.ctx.num_classes)

    def purifying(self, epoch: int) -> bool:
        return self.purify_from is not None and epoch >= self.purify_from

    def on_epoch_start(self, epoch: int, network: nn.Module) -> dict[str, float]:
        p = self.params
        if self.purifying(epoch):
            metrics = {"gmm/stage": 2.0}
            if epoch == self.purify_from:
                selection = self.select_balanced(network, p.purify_threshold)
                metrics.update(selection.fit)
                self.keep = torch.zeros_like(self.posteriors)
                self.keep[selection.kept] = 1.0
            metrics["gmm/kept_frac"] = float(self.keep.nansum() / (~self.posteriors.isnan()).sum())
            freeze_batchnorm(network)  # until the loop's validation pass sets the network back to train mode
            return metrics
        if epoch < p.warmup_epochs:
            return {"gmm/stage": 0.0}
        metrics = {"gmm/stage": 1.0}
        if (epoch - p.warmup_epochs) % p.refit_every == 0:
            metrics.update(self.refit(network))
        return metrics

    def loss(self, out, extras, batch, epoch):
        p, y = self.params, batch.label
        ce_fused = F.cross_entropy(out.fused, y, reduction="none")
        ce_unimodal = (F.cross_entropy(extras["audio"], y, reduction="none")
                       + F.cross_entropy(extras["visual"], y, reduction="none"))
        if self.purifying(epoch):
            keep = self._on_device("keep", y.device)[batch.index]
            # The mean over the kept samples of this step on all workers (DDP averages the gradients
            # over workers, so each divides by the global kept count over the world size).
            world = self.ctx.world
            kept_per_worker = world.all_reduce_sum(keep.sum()) / world.size
            return (keep * (ce_fused + ce_unimodal)).sum() / kept_per_worker.clamp(min=1.0 / world.size)
        if epoch < p.warmup_epochs:
            return (ce_fused + ce_unimodal).mean()
        r = self._on_device("posteriors", y.device)[batch.index]
        g = modality_gap(extras, y, p.stopgrad_strong)
        mu_b, sigma_b = self.mixture.mu_b, self.mixture.sigma_b
        per_sample = ((1 + p.beta * (1 - r)) * ce_fused + ce_unimodal
                      + p.lambda1 * (1 + p.alpha * r) * g.abs()
                      + p.lambda2 * r * (g - mu_b) ** 2 / (2 * sigma_b ** 2))
        return per_sample.mean()

    def batchnorm_samples(self, batch, epoch):
        if not self.purifying(epoch):
            return None
        return self._on_device("keep", batch.label.device)[batch.index] > 0.5

    def _on_device(self, name: str, device: torch.device) -> torch.Tensor:
        """The per-index table `name` (posteriors, keep), copied to the device once per refit, so a step
        looks its batch up there without moving the batch's indices to the host."""
        table = getattr(self, name)
        cached = self._device_tables.get(name)
        if cached is None or cached[0] is not table:
            cached = self._device_tables[name] = (table, table.to(device))
        return cached[1]

    def lr_factor(self, epoch: int) -> float:
        return self.params.purify_lr_factor if self.purifying(epoch) else 1.0

    def refit(self, network: nn.Module) -> dict[str, float]:
        """Sweep train on every worker, fit the mixture on rank 0, and give every rank r for every sample."""
        world = self.ctx.world
        local_index, local_gap = self._sweep_gaps(network)
        index = world.all_gather(local_index).cpu()
        gap = world.all_gather(local_gap).cpu()
        expected = self.ctx.manifest.split_size("train")
        if index.unique().numel() != index.numel() or index.numel() != expected:
            raise RuntimeError(f"gmm: the sweep over train gave {index.numel()} gaps for {index.unique().numel()} "
                               f"distinct samples; every one of the {expected} train samples must appear once")
        # In index order, the fit sees the same data however train was split over workers.
        order = index.argsort()
        index, gap = index[order], gap[order].numpy()
        mixture = self._share(fit_gap_mixture(gap, self.params.gmm_components) if world.is_main else None)
        r = mixture.imbalance_posterior(gap)
        self.posteriors = torch.full((int(index.max()) + 1,), float("nan"))
        self.posteriors[index] = torch.from_numpy(r).float()
        self.mixture, self.last_gaps = mixture, gap
        return self._fit_metrics(index.numpy(), gap, r)

    def select_balanced(self, network: nn.Module, threshold: float) -> BalancedSelection:
        """Refit the mixture on `network`'s gaps over all of train and keep the samples it finds balanced."""
        fit = self.refit(network)
        index = np.flatnonzero(~self.posteriors.isnan().numpy())
        r = self.posteriors.numpy()[index]
        balanced = (1.0 - r) > threshold
        return BalancedSelection(index, self.last_gaps, r, index[balanced], index[~balanced], fit)

    @torch.no_grad()
    def _sweep_gaps(self, network: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """(index, gap) of each train sample this worker holds, in eval mode."""
        network.eval()
        indices, gaps = [], []
        for batch in self.ctx.data.eval_batches("train"):
            _, extras = network(batch.audio, batch.frames)
            indices.append(batch.index)
            gaps.append(modality_gap(extras, batch.label).float())
        network.train()
        return torch.cat(indices), torch.cat(gaps)

    def _share(self, mixture: GapMixture | None) -> GapMixture:
        """Rank 0's mixture on every rank."""
        world = self.ctx.world
        packed = (torch.from_numpy(mixture.packed()) if world.is_main
                  else torch.zeros(3, self.params.gmm_components, dtype=torch.float64))
        return GapMixture.unpack(world.broadcast(packed.to(world.device)).cpu().numpy())

    def _fit_metrics(self, index: np.ndarray, gap: np.ndarray, r: np.ndarray) -> dict[str, float]:
        m = self.mixture
        metrics = {"gmm/imbalanced_frac": float((r > 0.5).mean()), "gmm/mean_gap": float(gap.mean())}
        for k in range(len(m.means)):
            metrics[f"gmm/mean_{k}"] = float(m.means[k])
            metrics[f"gmm/var_{k}"] = float(m.variances[k])
            metrics[f"gmm/weight_{k}"] = float(m.weights[k])
        flags = self._corrupted_flags()
        if flags is not None:
            flags = flags[index]
            if 0 < flags.sum() < len(flags):  # AUROC needs both kinds of sample
                from sklearn.metrics import roc_auc_score

                metrics["gmm/auroc_corrupted"] = float(roc_auc_score(flags, r))
        return metrics

    def _corrupted_flags(self) -> np.ndarray | None:
        """Per train index, whether a modality is corrupted, where the dataset records it; read once."""
        manifest = self.ctx.manifest
        if "corrupted" not in manifest.metadata_columns:
            return None
        if self._corrupted is None:
            self._corrupted = read_column_by_index(self.ctx.data_dir, manifest, "train", "corrupted") != "none"
        return self._corrupted

    def state_dict(self) -> dict:
        return {
            "fitted": self.mixture is not None,
            "fit": self.last_fit,  # includes mu_b and sigma_b
            "posteriors": self.posteriors,
            "gaps": None if self.last_gaps is None else torch.from_numpy(self.last_gaps),
            "keep": self.keep,
        }

    def artifacts(self) -> dict[str, bytes]:
        """The last fit, drawn: histogram of the gaps with the fitted mixture (PNG)."""
        if self.mixture is None or self.last_gaps is None:
            return {}
        return {"gmm_gaps.png": plot_gap_mixture(self.last_gaps, self.mixture)}

    def load_state_dict(self, state: dict) -> None:
        if not state["fitted"]:
            return
        fit = state["fit"]
        self.mixture = GapMixture.unpack([fit["means"], fit["variances"], fit["weights"]])
        self.posteriors = state["posteriors"].cpu()
        self.last_gaps = state["gaps"].numpy()
        self.keep = state.get("keep")
