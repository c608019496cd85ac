"""The one training loop without Ray: reporting, resuming, the unimodal baselines, precise BatchNorm."""

from __future__ import annotations

import contextlib
import copy
import subprocess
import sys

import pytest
import torch
from torch import nn

from mmray.data.manifest import load_manifest
from mmray.data.memory import InMemoryDataSource
from mmray.train.config import TrainConfig
from mmray.train.loop import build_method_and_network, recompute_batchnorm, train
from mmray.world import World

from tests.distributed import run_on_two_workers


def _run(folder, epochs, resume=None, **settings):
    manifest = load_manifest(folder)
    cfg = TrainConfig.from_flat({"data_dir": str(folder), "epochs": epochs, "width": 8, "batch_size": 32, **settings})
    data = InMemoryDataSource(folder, manifest, cfg.batch_size, cfg.seed)
    reports = []
    # The state holds live tensors (launchers save it at once): keep a snapshot.
    train(cfg, manifest, data, lambda metrics, state: reports.append((metrics, copy.deepcopy(state))),
          World.current(), resume)
    return reports


def test_reports_validation_metrics_every_epoch(tiny_synthetic):
    reports = _run(tiny_synthetic, epochs=2)
    assert [m["epoch"] for m, _ in reports] == [1, 2]
    for metrics, state in reports:
        for head in ("fused", "audio", "visual"):
            assert 0.0 <= metrics[f"val/{head}_acc"] <= 1.0
            assert 0.0 <= metrics[f"val/{head}_f1"] <= 1.0
        assert -1.0 <= metrics["val/gap"] <= 1.0
        assert {"network", "optimizer", "method", "epoch", "config"} <= set(state)
    assert reports[1][0]["train/loss"] < reports[0][0]["train/loss"]


def test_resuming_from_a_checkpoint_continues_exactly(tiny_synthetic):
    straight = _run(tiny_synthetic, epochs=2, lr_schedule="cosine")
    first = _run(tiny_synthetic, epochs=2, lr_schedule="cosine")[0][1]
    resumed = _run(tiny_synthetic, epochs=2, resume=first, lr_schedule="cosine")
    assert len(resumed) == 1 and resumed[0][0]["epoch"] == 2
    for key, value in straight[-1][1]["network"].items():
        assert torch.allclose(value.float(), resumed[0][1]["network"][key].float(), atol=1e-6), key


def test_unimodal_baseline_leaves_the_other_encoder_untouched(tiny_synthetic):
    before = _run(tiny_synthetic, epochs=1, method="audio-only", lr=1e-9)[0][1]["network"]
    after = _run(tiny_synthetic, epochs=1, method="audio-only")[0][1]["network"]
    visual = [k for k in after if k.startswith("model.visual_encoder") and "running" not in k and "num_batches" not in k]
    audio = [k for k in after if k.startswith("model.audio_encoder") and "weight" in k]
    assert visual and all(torch.equal(before[k], after[k]) for k in visual)
    assert any(not torch.equal(before[k], after[k]) for k in audio)


def test_the_data_source_interface_and_the_in_memory_source_import_no_ray():
    code = "import sys, mmray.data.source, mmray.data.memory; print(sorted(m for m in sys.modules if m[:3] == 'ray'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_non_finite_loss_ends_the_run_before_that_epoch_is_reported(small_synthetic):
    # AdamW's decoupled decay multiplies the weights by 1 - lr * wd = -1e10 per step: they overflow.
    import pytest

    from mmray.train.loop import NonFiniteLoss

    reports = []
    manifest = load_manifest(small_synthetic)
    cfg = TrainConfig.from_flat({"data_dir": str(small_synthetic), "epochs": 2, "width": 8, "batch_size": 32,
                                 "lr": 1e-2, "weight_decay": 1e12})
    with pytest.raises(NonFiniteLoss, match="train/loss is nan in epoch 1"):
        train(cfg, manifest, InMemoryDataSource(small_synthetic, manifest, 32, 0),
              lambda metrics, state: reports.append(metrics), World.current())
    assert reports == []


class _AudioNorm(nn.Module):
    """A network with one BatchNorm over the audio channels (frames are ignored)."""

    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm2d(3)

    def forward(self, audio, frames):
        return self.norm(audio)


def _batches(seed: int, sizes=(8, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 3, 4, 4, generator=g) * (1 + i) + i, None) for i, n in enumerate(sizes)]


def test_recompute_batchnorm_averages_the_batches_statistics_and_restores_the_layer():
    network = _AudioNorm()
    network.norm.running_mean.fill_(5.0)  # stale statistics, as a fast-moving network leaves them
    network.norm.eval()  # e.g. frozen by a method: it stays so
    batches = _batches(0)
    recompute_batchnorm(network, batches, World.current(), contextlib.nullcontext())
    means = torch.stack([a.mean(dim=(0, 2, 3)) for a, _ in batches]).mean(0)
    variances = torch.stack([a.transpose(0, 1).reshape(3, -1).var(1) for a, _ in batches]).mean(0)
    assert torch.allclose(network.norm.running_mean, means, atol=1e-5)
    assert torch.allclose(network.norm.running_var, variances, atol=1e-4)
    assert network.norm.momentum == 0.1 and not network.norm.training


def _recompute_on_worker(world, out_dir):
    network = _AudioNorm()
    sizes = (8, 8) if world.rank == 0 else (8, 8, 8, 8)  # rank 1 has twice the samples: it weighs twice
    recompute_batchnorm(network, _batches(world.rank, sizes), world, contextlib.nullcontext())
    torch.save(network.norm.state_dict(), out_dir / f"rank{world.rank}.pt")


def test_recompute_batchnorm_pools_the_workers_statistics_by_their_samples(tmp_path):
    run_on_two_workers(_recompute_on_worker, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    alone = []
    for rank, sizes in ((0, (8, 8)), (1, (8, 8, 8, 8))):
        network = _AudioNorm()
        recompute_batchnorm(network, _batches(rank, sizes), World.current(), contextlib.nullcontext())
        alone.append(network.norm)
    for key in ("running_mean", "running_var"):
        pooled = (getattr(alone[0], key) * 16 + getattr(alone[1], key) * 32) / 48
        assert torch.allclose(ranks[0][key], pooled, atol=1e-5), key
        assert torch.equal(ranks[0][key], ranks[1][key]), key


def test_each_epochs_checkpoint_holds_statistics_of_its_last_batches_under_its_weights(tiny_synthetic):
    reports = _run(tiny_synthetic, epochs=2, precise_bn_batches=2, lr=3e-3)
    cfg = TrainConfig.from_flat({"data_dir": str(tiny_synthetic), "epochs": 2, "width": 8, "batch_size": 32})
    manifest = load_manifest(tiny_synthetic)
    data = InMemoryDataSource(tiny_synthetic, manifest, cfg.batch_size, cfg.seed)
    _, network = build_method_and_network(cfg, manifest, data, World.current())
    saved = reports[-1][1]["network"]
    network.load_state_dict(saved)
    last = [(b.audio, b.frames) for b in data.train_batches(1)][-2:]  # epoch 2's last two batches
    recompute_batchnorm(network, last, World.current(), contextlib.nullcontext())
    stats = [k for k in saved if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.allclose(network.state_dict()[k], saved[k], atol=1e-5) for k in stats)
    without = _run(tiny_synthetic, epochs=2, precise_bn_batches=0, lr=3e-3)[-1][1]["network"]
    assert any(not torch.allclose(without[k], saved[k], atol=1e-3) for k in stats), "the running averages differ"


def test_precise_bn_batches_must_not_be_negative(tiny_synthetic):
    from mmray.errors import UserError

    with pytest.raises(UserError, match="precise_bn_batches"):
        TrainConfig.from_flat({"data_dir": str(tiny_synthetic), "precise_bn_batches": -1})
