"""The training loop, written once.

It runs unchanged in-process, as a Tune trial and on every Ray Train worker: the launcher hands it
a data source, a `report` function and (on resume) a saved state, and it never imports Tune or
Train. Every epoch it evaluates on validation, then calls `report(metrics, state)`; the launcher
decides where the state goes (a checkpoint folder, a Tune or Train checkpoint). Every worker
calls `report` the same number of times, because under Ray Train it is a barrier.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from typing import Callable

import torch
from torch import nn

from mmray.data.manifest import Manifest
from mmray.data.source import DataSource
from mmray.methods import Method, MethodContext, TrainStep, get_method
from mmray.models import build_model
from mmray.train.config import TrainConfig
from mmray.train.metrics import HEADS, SCORES, confusion, metric_name
from mmray.world import World

# (metrics, state to checkpoint). The state holds the live tensors: save it before returning.
Report = Callable[[dict, dict], None]


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite: the run ends, and its epoch is neither reported nor saved."""


class Network(nn.Module):
    """The model plus the method's own heads, as one module so DDP and the optimizer see both."""

    def __init__(self, model: nn.Module, heads: nn.Module | None):
        super().__init__()
        self.model = model
        self.heads = heads

    def forward(self, audio, frames):
        out = self.model(audio, frames)
        extras = self.heads(out) if self.heads is not None else {}
        return out, extras


def build_method_and_network(cfg: TrainConfig, manifest: Manifest, data: DataSource, world: World) -> tuple[Method, Network]:
    """The method and the network it trains, on CPU; identical on every worker and every rerun."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, cfg.fusion, manifest, width=cfg.width, audio_grid=cfg.audio_grid)
    ctx = MethodContext(manifest, cfg.data_dir, cfg.epochs, world, data,
                        feature_dims=(model.audio_dim, model.visual_dim), seed=cfg.seed)
    method = get_method(cfg.method)(cfg.method_params, ctx)
    return method, Network(model, method.heads())


def lr_factor(cfg: TrainConfig, method: Method, epoch: int) -> float:
    """The learning rate of `epoch` relative to `cfg.lr`: the schedule's, times the method's own factor."""
    schedule = (1 + math.cos(math.pi * epoch / cfg.epochs)) / 2 if cfg.lr_schedule == "cosine" else 1.0
    return schedule * method.lr_factor(epoch)


def build_optimizer(cfg: TrainConfig, params, lr: float | None = None) -> torch.optim.Optimizer:
    lr = cfg.lr if lr is None else lr
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)


@torch.no_grad()
def recompute_batchnorm(network: nn.Module, batches, world: World, autocast) -> None:
    """Precise BatchNorm: every BatchNorm layer's statistics become the plain average over `batches`
    ((audio, frames) pairs from training) under the current weights, pooled over all workers.

    The running averages trail the weights: at a high learning rate they describe a network several
    steps old, and validation with them can sit 20 points below what the weights do (synthetic-av,
    lr 1e-2: 0.76 with the running averages, 0.96 recomputed). Every per-epoch value (the best epoch
    mmray selects, ASHA's stopping decisions, the checkpoint evaluated on test) is read after this.
    """
    norms = [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return
    saved = [(m.momentum, m.training) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches below
        m.train()
    samples = 0
    with autocast:
        for audio, frames in batches:
            network(audio, frames)
            samples += len(audio)
    # Pooled over workers, weighted by their samples, so that every rank evaluates the same network.
    device = norms[0].running_mean.device
    total = world.all_reduce_sum(torch.tensor(float(samples), device=device))
    for m, (momentum, training) in zip(norms, saved):
        for stats in (m.running_mean, m.running_var):
            stats.copy_(world.all_reduce_sum(stats * samples) / total.clamp(min=1))
        m.momentum = momentum
        m.train(training)


def batchnorm_inputs(method: Method, batches, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (audio, frames) of the samples in `batches` that the method lets BatchNorm statistics come from."""
    inputs = []
    for batch in batches:
        keep = method.batchnorm_samples(batch, epoch)
        audio, frames = (batch.audio, batch.frames) if keep is None else (batch.audio[keep], batch.frames[keep])
        if len(audio) > 1:  # BatchNorm in train mode needs two samples
            inputs.append((audio, frames))
    return inputs


@torch.no_grad()
def evaluate(network: nn.Module, method: Method, batches, num_classes: int, prefix: str) -> dict[str, float]:
    """Accuracy and macro-F1 of the fused and per-modality predictions, and the mean modality gap."""
    network.eval()
    # Accumulated on the network's device and read once at the end: no host sync per batch.
    device = next(network.parameters()).device
    conf = {k: torch.zeros(num_classes, num_classes, dtype=torch.long, device=device) for k in HEADS}
    gap_sum, n = torch.zeros((), dtype=torch.float64, device=device), 0
    for batch in batches:
        out, extras = network(batch.audio, batch.frames)
        logits = method.predict(out, extras)
        for key, z in logits.items():
            conf[key] += confusion(z.argmax(1), batch.label, num_classes)
        # Modality gap g = p_a(y) - p_v(y) from the two per-modality predictions the method makes.
        p_a = logits["audio"].float().softmax(1).gather(1, batch.label[:, None]).squeeze(1)
        p_v = logits["visual"].float().softmax(1).gather(1, batch.label[:, None]).squeeze(1)
        gap_sum += (p_a - p_v).sum().double()
        n += len(batch.label)
    network.train()
    conf = {k: c.cpu() for k, c in conf.items()}
    metrics = {}
    for head, c in conf.items():
        for kind, score in SCORES.items():
            metrics[metric_name(prefix, kind, head)] = score(c)
    metrics[metric_name(prefix, "gap")] = gap_sum.item() / max(n, 1)
    return metrics


def train(cfg: TrainConfig, manifest: Manifest, data: DataSource, report: Report,
          world: World, resume_state: dict | None = None, init_network: dict | None = None) -> dict[str, float]:
    """Train `cfg.epochs` epochs and return the last metrics.

    `resume_state` continues an interrupted run where it stopped; `init_network` starts a new run
    (fresh optimizer, epoch 0) from trained weights, e.g. fine-tuning after purification.
    """
    method, network = build_method_and_network(cfg, manifest, data, world)
    if init_network is not None:
        network.load_state_dict(init_network)
    network = network.to(world.device)
    if cfg.channels_last:  # NHWC convolutions: faster on GPUs with tensor cores
        network = network.to(memory_format=torch.channels_last)
    wrapped = world.wrap(network, method.leaves_parameters_unused)
    # bf16 autocast for the forward pass and the loss, on a GPU only (on CPU it is slower): see TrainConfig.precision.
    autocast = torch.autocast(world.device.type, dtype=torch.bfloat16,
                              enabled=cfg.precision == "bf16" and world.device.type == "cuda")
    optimizer = build_optimizer(cfg, network.parameters())
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(cfg, method, epoch))

    start_epoch = 0
    if resume_state is not None:
        network.load_state_dict(resume_state["network"])
        optimizer.load_state_dict(resume_state["optimizer"])
        method.load_state_dict(resume_state["method"])
        schedule.load_state_dict(resume_state["schedule"])
        start_epoch = resume_state["epoch"] + 1

    def make_optimizer(params) -> torch.optim.Optimizer:
        return build_optimizer(cfg, params, lr=optimizer.param_groups[0]["lr"])

    batches = math.ceil(manifest.split_size("train") / (cfg.batch_size * world.size))
    metrics: dict[str, float] = {}
    for epoch in range(start_epoch, cfg.epochs):
        metrics = {"epoch": epoch + 1, **method.on_epoch_start(epoch, network)}
        started = time.perf_counter()
        loss_sum, steps = torch.zeros((), dtype=torch.float64, device=world.device), 0
        recent = collections.deque(maxlen=cfg.precise_bn_batches)  # the epoch's last batches, for recompute_batchnorm
        for index, batch in enumerate(data.train_batches(epoch)):
            if cfg.channels_last:
                batch = dataclasses.replace(batch, audio=batch.audio.contiguous(memory_format=torch.channels_last))
            recent.append(batch)
            with autocast:
                loss = method.train_step(TrainStep(network, wrapped, optimizer, make_optimizer, world, batch,
                                                   epoch, index, batches))
            loss_sum += loss  # summed on the device: no host sync per step
            steps += 1
        # Checked once per epoch, over all workers so that every rank stops alike (NaN and inf
        # propagate through the sums): a broken run ends here, before this epoch is reported.
        train_loss = world.all_reduce_sum(loss_sum).item() / max(steps * world.size, 1)
        if not math.isfinite(train_loss):
            raise NonFiniteLoss(f"train/loss is {train_loss} in epoch {epoch + 1} (method {cfg.method}, lr {cfg.lr:g})")
        metrics["train/loss"] = train_loss
        metrics["train/epoch_s"] = time.perf_counter() - started  # after that read: the device has finished
        if cfg.precise_bn_batches:
            recompute_batchnorm(network, batchnorm_inputs(method, recent, epoch), world, autocast)
        schedule.step()
        metrics.update(method.on_epoch_end(epoch, network))
        metrics.update(evaluate(network, method, data.eval_batches("val"), manifest.num_classes, "val"))
        state = {
            "epoch": epoch,
            "config": cfg.to_flat(),
            "network": network.state_dict(),
            "optimizer": optimizer.state_dict(),
            "method": method.state_dict(),
            "schedule": schedule.state_dict(),
            "artifacts": method.artifacts() if world.is_main else {},
        }
        report(metrics, state)
    return metrics
