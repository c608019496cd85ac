"""`mmpareto`: the min-norm weights and the rescaling by hand in the conflicting and non-conflicting cases,
the gradients one step applies, two gloo workers in step, and resume."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from distributed import parameters, train_on_two_workers, train_reports

from mmray.data.memory import InMemoryDataSource
from mmray.data.manifest import load_manifest
from mmray.methods import TrainStep
from mmray.methods.mmpareto import pareto_gradient, pareto_weights
from mmray.train.config import TrainConfig
from mmray.train.loop import build_method_and_network, build_optimizer
from mmray.world import World

pytestmark = pytest.mark.usefixtures("one_thread")


def _settings(folder, **settings) -> dict:
    return {"method": "mmpareto", "data_dir": str(folder), "width": 8, "batch_size": 32, "epochs": 2, **settings}


def test_no_conflict_gives_equal_weights_and_the_plain_sum():
    g_mm, g_m = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])  # cos = 1/sqrt(2) > 0
    a1, cos, conflict = pareto_weights(g_mm, g_m)
    assert not conflict and a1.item() == 0.5 and cos.item() == pytest.approx(1 / math.sqrt(2))
    # d = 2 (g_mm + g_m) / 2 = s: r = |s| / (|s| + eps) < 1, so the gradient is gamma * s.
    assert torch.allclose(pareto_gradient(g_mm, g_m, a1, 1.5), 1.5 * torch.tensor([2.0, 1.0]))


def test_conflict_gives_the_min_norm_weights_and_the_rescaling_per_tensor():
    # One encoder of two tensors: P (2 values) and Q (1 value). Flat: G1 = [1, 0, 1], G2 = [-1, 1, 0.5].
    g_mm = {"P": torch.tensor([1.0, 0.0]), "Q": torch.tensor([1.0])}
    g_m = {"P": torch.tensor([-1.0, 1.0]), "Q": torch.tensor([0.5])}
    a1, cos, conflict = pareto_weights(torch.cat(list(g_mm.values())), torch.cat(list(g_m.values())))
    # <G1,G2> = -0.5 < 0; a1 = (|G2|^2 - <G1,G2>) / |G1 - G2|^2 = (2.25 + 0.5) / (4 + 1 + 0.25)
    assert conflict and cos.item() == pytest.approx(-0.5 / (math.sqrt(2) * 1.5))
    assert a1.item() == pytest.approx(2.75 / 5.25)
    a1_, a2_ = 2.75 / 5.25, 2.5 / 5.25
    # P: d = 2 (a1 [1, 0] + a2 [-1, 1]) is shorter than s = [0, 1]: scaled up to |s|.
    d = torch.tensor([2 * (a1_ - a2_), 2 * a2_])
    assert d.norm() < 1
    assert torch.allclose(pareto_gradient(g_mm["P"], g_m["P"], a1, 2.0), 2.0 * d / d.norm(), atol=1e-6)
    # Q: d = 2 (a1 + 0.5 a2) = 1.5238 is longer than s = 1.5: kept as is.
    assert torch.allclose(pareto_gradient(g_mm["Q"], g_m["Q"], a1, 2.0), torch.tensor([2.0 * 2 * (a1_ + 0.5 * a2_)]))


def test_weights_are_clipped():
    # G2 = 0: the min-norm point is G2 itself (a1 = 0), clipped to 0.001.
    a1, _, conflict = pareto_weights(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]))
    assert conflict and a1.item() == pytest.approx(0.001)


def test_one_step_applies_the_pareto_gradient_to_encoders_and_plain_ones_to_heads(small_synthetic):
    cfg = TrainConfig.from_flat(_settings(small_synthetic, gamma=2.0, optimizer="sgd", lr=1.0, momentum=0.0,
                                          weight_decay=0.0))
    manifest = load_manifest(small_synthetic)
    data = InMemoryDataSource(small_synthetic, manifest, cfg.batch_size, cfg.seed)
    world = World.current()
    method, network = build_method_and_network(cfg, manifest, data, world)
    batch = next(data.train_batches(0))
    network.eval()  # BatchNorm in eval: the reference forward below sees the same model
    before = {k: v.detach().clone() for k, v in network.named_parameters()}

    out, extras = network(batch.audio, batch.frames)
    enc = list(network.model.audio_encoder.parameters())
    g_mm = torch.autograd.grad(F.cross_entropy(out.fused, batch.label), enc, retain_graph=True)
    g_a = torch.autograd.grad(F.cross_entropy(extras["audio"], batch.label), enc + list(network.heads.audio.parameters()))
    a1, _, _ = pareto_weights(torch.cat([g.flatten() for g in g_mm]), torch.cat([g.flatten() for g in g_a[:len(enc)]]))

    optimizer = build_optimizer(cfg, network.parameters())  # SGD, lr 1: the step moves each parameter by -grad
    method.on_epoch_start(0, network)
    method.train_step(TrainStep(network, network, optimizer, None, world, batch, 0, 0, 4))
    moved = {k: before[k] - v.detach() for k, v in network.named_parameters()}
    names = [k for k, _ in network.model.audio_encoder.named_parameters()]
    for name, gm, gu in zip(names, g_mm, g_a):
        assert torch.allclose(moved[f"model.audio_encoder.{name}"], pareto_gradient(gm, gu, a1, 2.0), atol=1e-5)
    assert torch.allclose(moved["heads.audio.weight"], g_a[len(enc)], atol=1e-6)  # plain, not scaled by gamma
    metrics = method.on_epoch_end(0, network)
    assert metrics["mmpareto/a1_audio"] == pytest.approx(a1.item())
    assert metrics["mmpareto/conflict_frac_audio"] in (0.0, 1.0)


def test_two_workers_keep_identical_parameters(small_synthetic, tmp_path):
    zero, one = train_on_two_workers(_settings(small_synthetic), tmp_path)
    for (m0, s0), (m1, s1) in zip(zero, one):
        for key in ("mmpareto/conflict_frac_audio", "mmpareto/a1_audio", "mmpareto/a1_visual", "mmpareto/cos_visual"):
            assert m0[key] == m1[key], key
        for key, value in parameters(s0).items():
            assert torch.equal(value, s1["network"][key]), key


def test_resume_gives_the_straight_run(small_synthetic):
    straight = train_reports(_settings(small_synthetic, epochs=3))
    resumed = train_reports(_settings(small_synthetic, epochs=3), resume=straight[0][1])
    for key, value in straight[-1][1]["network"].items():
        assert torch.allclose(value.float(), resumed[-1][1]["network"][key].float(), atol=1e-6), key
    assert resumed[-1][0]["mmpareto/a1_audio"] == pytest.approx(straight[-1][0]["mmpareto/a1_audio"])
    assert 0.0 <= straight[-1][0]["mmpareto/conflict_frac_visual"] <= 1.0
