"""The `ogm` method without Ray: the OGM-GE coefficient for hand-computed shares, gradient scaling of the
dominant encoder with and without GE noise, the epoch window, training, and two gloo workers scaling
identically."""

from __future__ import annotations

import math

import pytest
import torch
from distributed import run_on_two_workers
from networks import method_and_network

from mmray.data.manifest import load_manifest
from mmray.data.memory import InMemoryDataSource
from mmray.data.source import Batch
from mmray.errors import UserError
from mmray.methods.ogm import ogm_coefficients
from mmray.models import AVOutput
from mmray.train import loop
from mmray.train.config import TrainConfig
from mmray.world import World

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def folder(small_synthetic):
    return small_synthetic


def _config(folder, **settings) -> TrainConfig:
    return TrainConfig.from_flat({"method": "ogm", "data_dir": str(folder), "epochs": 2, "width": 8,
                                  "batch_size": 32, **settings})


def _step(p_audio: float, p_visual: float, n: int = 4, classes: int = 10):
    """Logits whose true-class softmax probability is exactly p_audio (audio) and p_visual (visual) on every sample."""
    def logits(p):
        # true class: log p; the other K-1 classes share 1 - p equally
        z = torch.full((n, classes), math.log((1 - p) / (classes - 1)))
        z[:, 0] = math.log(p)
        return z
    out = AVOutput(fused=torch.zeros(n, classes), audio=logits(p_audio), visual=logits(p_visual),
                   audio_features=torch.zeros(n, 1), visual_features=torch.zeros(n, 1))
    batch = Batch(audio=torch.empty(0), frames=torch.empty(0), label=torch.zeros(n, dtype=torch.long),
                  index=torch.arange(n))
    return out, batch


def _set_grads(network, value=1.0):
    for p in network.parameters():
        p.grad = torch.full_like(p, value)


def _encoder_grads(network):
    return {m: torch.cat([p.grad.flatten() for p in getattr(network.model, f"{m}_encoder").parameters()])
            for m in ("audio", "visual")}


def test_coefficient_for_hand_computed_shares():
    # rho_a = 30 / 10 = 3: audio dominates, k_a = 1 - tanh(0.5 * 2) = 1 - tanh(1)
    k_a, k_v = ogm_coefficients(30.0, 10.0, alpha=0.5)
    assert k_a == pytest.approx(1 - math.tanh(1.0)) == pytest.approx(0.2384058)
    assert k_v == 1.0
    # rho_v = 12 / 8 = 1.5: vision dominates, k_v = 1 - tanh(0.8 * 0.5)
    k_a, k_v = ogm_coefficients(8.0, 12.0, alpha=0.8)
    assert k_a == 1.0 and k_v == pytest.approx(1 - math.tanh(0.4)) == pytest.approx(0.6200510)
    assert ogm_coefficients(5.0, 5.0, alpha=0.8) == (1.0, 1.0)


def test_the_dominant_encoder_is_scaled_in_the_window_only(folder):
    method, network = method_and_network(_config(folder, alpha=0.5, ge=False, modulation_starts=1))
    out, batch = _step(p_audio=0.9, p_visual=0.3)  # s_a / s_v = 3
    k_a = 1 - math.tanh(1.0)

    method.on_epoch_start(0, network)
    _set_grads(network)
    method.after_backward(network, out, {}, batch, epoch=0)  # before modulation_starts
    grads = _encoder_grads(network)
    assert torch.all(grads["audio"] == 1) and torch.all(grads["visual"] == 1)
    assert network.model.fusion.fc.weight.grad.eq(1).all()
    assert method.on_epoch_end(0, network)["ogm/modulated_audio_frac"] == 0.0

    method.on_epoch_start(1, network)
    _set_grads(network)
    method.after_backward(network, out, {}, batch, epoch=1)
    grads = _encoder_grads(network)
    assert torch.allclose(grads["audio"], torch.full_like(grads["audio"], k_a))
    assert torch.all(grads["visual"] == 1) and network.model.fusion.fc.weight.grad.eq(1).all()
    metrics = method.on_epoch_end(1, network)
    assert metrics["ogm/coeff_audio"] == pytest.approx(k_a) and metrics["ogm/coeff_visual"] == 1.0
    assert metrics["ogm/modulated_audio_frac"] == 1.0 and metrics["ogm/modulated_visual_frac"] == 0.0
    assert metrics["ogm/ratio_audio"] == pytest.approx(3.0)

    # The other direction: vision dominant, only the visual encoder is scaled.
    _set_grads(network)
    out, batch = _step(p_audio=0.2, p_visual=0.6)
    method.after_backward(network, out, {}, batch, epoch=1)
    grads = _encoder_grads(network)
    assert torch.all(grads["audio"] == 1)
    assert torch.allclose(grads["visual"], torch.full_like(grads["visual"], 1 - math.tanh(1.0)))


def test_no_modulation_from_modulation_ends_on(folder):
    method, network = method_and_network(_config(folder, ge=False, modulation_ends=1))
    out, batch = _step(p_audio=0.9, p_visual=0.3)
    _set_grads(network)
    method.after_backward(network, out, {}, batch, epoch=1)
    assert all(torch.all(g == 1) for g in _encoder_grads(network).values())


def test_ge_adds_noise_with_the_gradient_std_reproducibly(folder):
    method, network = method_and_network(_config(folder, alpha=0.5, ge=True))
    out, batch = _step(p_audio=0.9, p_visual=0.3)
    seen = []
    for _ in range(2):
        method.on_epoch_start(0, network)  # the same (seed, epoch, step): the same noise
        for p in network.parameters():
            p.grad = torch.linspace(-1, 1, p.numel()).view_as(p)
        method.after_backward(network, out, {}, batch, epoch=0)
        seen.append(_encoder_grads(network))
    assert torch.equal(seen[0]["audio"], seen[1]["audio"])
    # Visual untouched; audio = k * g + noise, and the noise is about the gradient's own std.
    first = next(network.model.audio_encoder.parameters())
    g = torch.linspace(-1, 1, first.numel())
    noise = first.grad.flatten() - (1 - math.tanh(1.0)) * g
    assert noise.abs().max() > 0 and noise.std().item() == pytest.approx(g.std(unbiased=False).item(), rel=0.3)
    assert torch.equal(seen[0]["visual"], torch.cat([torch.linspace(-1, 1, p.numel()) for p in
                                                     network.model.visual_encoder.parameters()]))
    # The next step draws other noise.
    for p in network.parameters():
        p.grad = torch.linspace(-1, 1, p.numel()).view_as(p)
    method.after_backward(network, out, {}, batch, epoch=0)
    assert not torch.equal(_encoder_grads(network)["audio"], seen[0]["audio"])


def test_window_is_checked():
    with pytest.raises(UserError, match="modulation_ends"):
        TrainConfig.from_flat({"method": "ogm", "modulation_starts": 3, "modulation_ends": 2})
    with pytest.raises(UserError, match="modulation_starts"):
        TrainConfig.from_flat({"method": "ogm", "epochs": 4, "modulation_starts": 4})


def test_training_reports_the_modulation(folder):
    cfg = TrainConfig.from_flat({"method": "ogm", "data_dir": str(folder), "epochs": 2, "width": 8,
                                 "batch_size": 32, "modulation_starts": 1})
    manifest = load_manifest(folder)
    reports = []
    loop.train(cfg, manifest, InMemoryDataSource(folder, manifest, 32, 0), lambda m, s: reports.append(m),
               World(0, 1, CPU))
    first, second = reports
    assert first["ogm/coeff_audio"] == first["ogm/coeff_visual"] == 1.0 and first["ogm/modulated_audio_frac"] == 0
    assert second["ogm/modulated_audio_frac"] + second["ogm/modulated_visual_frac"] > 0
    assert min(second["ogm/coeff_audio"], second["ogm/coeff_visual"]) < 1.0


def _worker(world, folder, out_dir):
    method, network = method_and_network(_config(folder, alpha=0.5, ge=True), world=world)
    # Different batches per worker: audio dominates on rank 0's, vision on rank 1's.
    out, batch = _step(p_audio=0.9, p_visual=0.1) if world.rank == 0 else _step(p_audio=0.3, p_visual=0.5)
    method.on_epoch_start(0, network)
    for p in network.parameters():  # DDP hands every worker the same averaged gradients
        p.grad = torch.linspace(-1, 1, p.numel()).view_as(p)
    method.after_backward(network, out, {}, batch, epoch=0)
    torch.save({"grads": _encoder_grads(network), "metrics": method.on_epoch_end(0, network)},
               out_dir / f"rank{world.rank}.pt")


def test_two_workers_scale_identically_from_the_summed_shares(folder, tmp_path):
    run_on_two_workers(_worker, folder, tmp_path)
    zero, one = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for m in ("audio", "visual"):
        assert torch.equal(zero["grads"][m], one["grads"][m]), m
    # Summed over both workers: s_a = 4 * (0.9 + 0.3), s_v = 4 * (0.1 + 0.5), rho_a = 2.
    assert zero["metrics"]["ogm/ratio_audio"] == pytest.approx(2.0)
    assert zero["metrics"]["ogm/coeff_audio"] == pytest.approx(1 - math.tanh(0.5)) == one["metrics"]["ogm/coeff_audio"]
    assert zero["metrics"]["ogm/coeff_visual"] == 1.0
    assert torch.equal(zero["grads"]["visual"], torch.cat([torch.linspace(-1, 1, p.numel()) for p in
                                                           _visual_params(folder)]))


def _visual_params(folder):
    return list(method_and_network(_config(folder))[1].model.visual_encoder.parameters())
