"""The one training loop without Ray: reporting, resuming, and the unimodal baselines."""

from __future__ import annotations

import copy
import subprocess
import sys

import torch

from mmray.data.manifest import load_manifest
from mmray.data.memory import InMemoryDataSource
from mmray.train.config import TrainConfig
from mmray.train.loop import train
from mmray.world import World


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
