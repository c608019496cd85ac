"""`mla`: the projector update and the per-sample entropy weights by hand, two sub-steps per batch,
two gloo workers in step, and resume."""

from __future__ import annotations

import math

import pytest
import torch
from distributed import parameters, train_on_two_workers, train_reports

from mmray.data.memory import InMemoryDataSource
from mmray.data.manifest import load_manifest
from mmray.methods import TrainStep
from mmray.methods.mla import entropy_weights, update_projector
from mmray.train.config import TrainConfig
from mmray.train.loop import build_method_and_network, build_optimizer
from mmray.world import World

pytestmark = pytest.mark.usefixtures("one_thread")


def _settings(folder, **settings) -> dict:
    return {"method": "mla", "data_dir": str(folder), "width": 8, "batch_size": 32, "epochs": 2, **settings}


def test_projector_update_by_hand():
    # P = I, r = [1, 0], alpha = 0.1: k = [1, 0], r^T k = 1, P - k k^T / 1.1 = diag(1 - 1/1.1, 1), then / |.|_F.
    p = update_projector(torch.eye(2), torch.tensor([1.0, 0.0]), 0.1)
    a = 1 - 1 / 1.1
    assert torch.allclose(p, torch.diag(torch.tensor([a, 1.0])) / math.sqrt(a * a + 1), atol=1e-7)
    # A second direction, r = [1, 1]: k = P r, P - k k^T / (alpha + r^T k), normalised.
    r = torch.tensor([1.0, 1.0])
    k = p @ r
    expected = p - torch.outer(k, k) / (0.05 + r @ k)
    assert torch.allclose(update_projector(p, r, 0.05), expected / expected.norm(), atol=1e-7)


def test_entropy_weights_are_per_sample():
    # Sample 0: audio uniform (e = ln 2), visual p = [0.9, 0.1]; sample 1: the other way round.
    uniform, sure = torch.zeros(2), torch.tensor([math.log(0.9), math.log(0.1)])
    audio, visual = torch.stack([uniform, sure]), torch.stack([sure, uniform])
    e_sure = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    w_audio_0 = math.exp(-math.log(2)) / (math.exp(-math.log(2)) + math.exp(-e_sure))
    w = entropy_weights(audio, visual)
    assert torch.allclose(w[0], torch.tensor([w_audio_0, 1 - w_audio_0]), atol=1e-6)
    assert torch.allclose(w.sum(0), torch.ones(2))


def test_a_batch_is_two_optimizer_steps_and_the_head_gradient_is_projected(small_synthetic):
    cfg = TrainConfig.from_flat(_settings(small_synthetic, optimizer="sgd", lr=0.1, momentum=0.0, weight_decay=0.0))
    manifest = load_manifest(small_synthetic)
    data = InMemoryDataSource(small_synthetic, manifest, cfg.batch_size, cfg.seed)
    world = World.current()
    method, network = build_method_and_network(cfg, manifest, data, world)
    optimizer = build_optimizer(cfg, network.parameters())
    steps = []
    optimizer.register_step_post_hook(lambda opt, args, kwargs: steps.append(network.heads.projector.clone()))
    batches = data.train_batches(0)
    method.on_epoch_start(0, network)
    fusion = network.model.fusion.fc.weight.detach().clone()
    for index in range(2):
        method.train_step(TrainStep(network, network, optimizer, None, world, next(batches), 0, index, 4))
    assert len(steps) == 4, "two optimizer steps per batch"
    assert torch.equal(steps[0], torch.eye(steps[0].shape[0])), "the run's first sub-step is not projected"
    assert all(not torch.equal(a, b) for a, b in zip(steps, steps[1:])), "every later sub-step updates P"
    assert steps[-1].norm().item() == pytest.approx(1.0)
    assert torch.equal(network.model.fusion.fc.weight, fusion), "the fusion layer is not trained"
    metrics = method.on_epoch_end(0, network)
    assert 0 < metrics["mla/weight_audio"] < 1 and metrics["mla/loss_audio"] > 0

    off, network_off = build_method_and_network(TrainConfig.from_flat(_settings(small_synthetic, head_memory="off")),
                                                manifest, data, world)
    off.on_epoch_start(0, network_off)
    off.train_step(TrainStep(network_off, network_off, build_optimizer(cfg, network_off.parameters()), None, world,
                             next(data.train_batches(0)), 0, 1, 4))
    assert torch.equal(network_off.heads.projector, torch.eye(steps[0].shape[0]))


def test_two_workers_keep_identical_parameters_and_projector(small_synthetic, tmp_path):
    zero, one = train_on_two_workers(_settings(small_synthetic), tmp_path)
    for (m0, s0), (m1, s1) in zip(zero, one):
        assert m0["mla/weight_audio"] == m1["mla/weight_audio"]
        for key, value in parameters(s0).items():
            assert torch.equal(value, s1["network"][key]), key
    assert "heads.projector" in zero[-1][1]["network"]
    assert not torch.equal(zero[-1][1]["network"]["heads.projector"],
                           torch.eye(zero[-1][1]["network"]["heads.projector"].shape[0]))


def test_resume_gives_the_straight_run(small_synthetic):
    straight = train_reports(_settings(small_synthetic, epochs=3))
    resumed = train_reports(_settings(small_synthetic, epochs=3), resume=straight[0][1])
    for key, value in straight[-1][1]["network"].items():
        assert torch.allclose(value.float(), resumed[-1][1]["network"][key].float(), atol=1e-6), key
    assert resumed[-1][0]["val/fused_acc"] == straight[-1][0]["val/fused_acc"]
