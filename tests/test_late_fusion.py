"""`late-fusion`: the averaged prediction in both modes, two unimodal models that do not see each other,
two gloo workers in step, and resume."""

from __future__ import annotations

import pytest
import torch
from distributed import parameters, train_on_two_workers, train_reports

from mmray.data.memory import InMemoryDataSource
from mmray.data.manifest import load_manifest
from mmray.methods.late_fusion import late_fusion
from mmray.train.config import TrainConfig
from mmray.train.loop import build_method_and_network, train
from mmray.world import World

pytestmark = pytest.mark.usefixtures("one_thread")


def _settings(folder, **settings) -> dict:
    return {"method": "late-fusion", "data_dir": str(folder), "width": 8, "batch_size": 32, "epochs": 2, **settings}


def test_prediction_averages_probabilities_or_logits():
    p_audio = torch.tensor([[0.90, 0.02, 0.08]])
    p_visual = torch.tensor([[0.02, 0.50, 0.48]])
    z_audio, z_visual = p_audio.log() + 3.0, p_visual.log() - 1.0  # logits: any shift per modality
    # prob_mean: (p_a + p_v) / 2 = [0.46, 0.26, 0.28] -> class 0
    fused = late_fusion(z_audio, z_visual, "prob_mean")
    assert torch.allclose(fused.softmax(1), torch.tensor([[0.46, 0.26, 0.28]]), atol=1e-6)
    assert fused.argmax(1).item() == 0
    # logit_mean: softmax((z_a + z_v) / 2) is the normalised geometric mean sqrt(p_a p_v) -> class 2
    fused = late_fusion(z_audio, z_visual, "logit_mean")
    geometric = (p_audio * p_visual).sqrt()
    assert torch.allclose(fused.softmax(1), geometric / geometric.sum(), atol=1e-6)
    assert fused.argmax(1).item() == 2


class _OtherFrames(InMemoryDataSource):
    """The same batches with every visual input replaced by noise."""

    def train_batches(self, epoch):
        for batch in super().train_batches(epoch):
            batch.frames = torch.randn(batch.frames.shape, generator=torch.Generator().manual_seed(len(batch.index)))
            yield batch


def test_the_audio_model_does_not_depend_on_the_visual_input(small_synthetic):
    """Two unimodal models in one run: the audio encoder and head train as if the visual side did not exist."""
    cfg = TrainConfig.from_flat(_settings(small_synthetic, epochs=1))
    manifest = load_manifest(small_synthetic)
    ends = []
    for source in (InMemoryDataSource, _OtherFrames):
        reports = []
        train(cfg, manifest, source(small_synthetic, manifest, 32, 0), lambda m, s: reports.append(s["network"]),
              World.current())
        ends.append(reports[-1])
    audio = [k for k in ends[0] if k.startswith(("model.audio_encoder.", "heads.audio."))]
    assert audio and all(torch.equal(ends[0][k], ends[1][k]) for k in audio)
    assert not torch.equal(ends[0]["heads.visual.weight"], ends[1]["heads.visual.weight"])
    # The fusion layer is not used: no gradient, so the optimizer leaves it at its initial weights.
    _, network = build_method_and_network(cfg, manifest, None, World.current())
    assert torch.equal(ends[0]["model.fusion.fc.weight"], network.model.fusion.fc.weight)


def test_two_workers_keep_identical_parameters(small_synthetic, tmp_path):
    zero, one = train_on_two_workers(_settings(small_synthetic), tmp_path)
    for (m0, s0), (m1, s1) in zip(zero, one):
        for key, value in parameters(s0).items():
            assert torch.equal(value, s1["network"][key]), key
    assert zero[-1][0]["val/fused_acc"] == one[-1][0]["val/fused_acc"]


def test_resume_gives_the_straight_run(small_synthetic):
    straight = train_reports(_settings(small_synthetic, epochs=3, average="logit_mean"))
    resumed = train_reports(_settings(small_synthetic, epochs=3, average="logit_mean"), resume=straight[0][1])
    assert len(resumed) == 2
    for key, value in straight[-1][1]["network"].items():
        assert torch.allclose(value.float(), resumed[-1][1]["network"][key].float(), atol=1e-6), key
    assert resumed[-1][0]["val/fused_acc"] == straight[-1][0]["val/fused_acc"]
