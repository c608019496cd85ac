"""The `decision` method (the per-sample gate) and the decision-layer calibration fit, without Ray."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from networks import method_and_network

from mmray.data.manifest import load_manifest
from mmray.data.memory import InMemoryDataSource
from mmray.data.source import Batch
from mmray.errors import UserError
from mmray.methods.decision import certainty
from mmray.models import AVOutput
from mmray.train import loop
from mmray.train.calibrate import fit_calibration
from mmray.train.config import TrainConfig
from mmray.world import World

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def folder(small_synthetic):
    return small_synthetic


def _config(folder, **settings):
    return TrainConfig.from_flat({"method": "decision", "data_dir": str(folder), "epochs": 2, "width": 8,
                                  "batch_size": 32, **settings})


def _method_and_gate(folder, **settings):
    method, network = method_and_network(_config(folder, **settings))
    return method, network.heads


def _output(n=8, classes=10, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z_a, z_v = (torch.randn(n, classes, generator=gen, requires_grad=True) for _ in range(2))
    out = AVOutput(fused=z_a + z_v, audio=z_a, visual=z_v, audio_features=torch.zeros(n, 1),
                   visual_features=torch.zeros(n, 1))
    label = torch.randint(0, classes, (n,), generator=gen)
    return out, Batch(audio=torch.empty(0), frames=torch.empty(0), label=label, index=torch.arange(n))


def test_certainty_signals():
    uniform, sure = torch.zeros(1, 10), torch.tensor([[100.0] + [0.0] * 9])
    assert certainty(uniform, "entropy").item() == pytest.approx(1.0)
    assert certainty(sure, "entropy").item() == pytest.approx(0.0, abs=1e-6)
    assert certainty(uniform, "confidence").item() == pytest.approx(0.1)
    assert certainty(sure, "confidence").item() == pytest.approx(1.0)


def test_the_gate_starts_as_joint_training_and_its_weights_sum_to_two(folder):
    method, gate = _method_and_gate(folder)
    out, batch = _output()
    extras = gate(out)
    assert torch.allclose(extras["weights"], torch.ones(8, 2))
    assert torch.allclose(method.predict(out, extras)["fused"], out.fused)

    torch.nn.init.normal_(gate.net[2].weight)  # a gate that has learned something
    extras = gate(out)
    w = extras["weights"]
    assert torch.allclose(w.sum(1), torch.full((8,), 2.0)) and not torch.allclose(w, torch.ones(8, 2))
    assert torch.allclose(extras["fused"], w[:, :1] * out.audio + w[:, 1:] * out.visual)
    # Its inputs are detached: the fused loss reaches the encoders only through z_a, z_v themselves.
    grad = torch.autograd.grad(extras["weights"].sum(), out.audio, allow_unused=True, materialize_grads=True)[0]
    assert not grad.any()


def test_the_temperature_sharpens_the_weights(folder):
    out, _ = _output()
    spreads = []
    for temperature in (2.0, 0.5):
        _, gate = _method_and_gate(folder, gate_temperature=temperature)
        torch.manual_seed(0)
        torch.nn.init.normal_(gate.net[2].weight)
        spreads.append((gate(out)["weights"][:, 0] - 1).abs().mean().item())
    assert spreads[1] > spreads[0]


def test_loss_matches_the_formula(folder):
    method, gate = _method_and_gate(folder, unimodal_weight=0.7, weight_reg=0.3)
    torch.nn.init.normal_(gate.net[2].weight)
    out, batch = _output()
    extras = gate(out)
    y, w = batch.label, extras["weights"]
    unimodal = F.cross_entropy(out.audio, y) + F.cross_entropy(out.visual, y)
    by_hand = F.cross_entropy(extras["fused"], y) + 0.7 * unimodal + 0.3 * ((w - 1) ** 2).sum(1).mean()
    assert torch.allclose(method.loss(out, extras, batch, 0), by_hand)


def test_params_are_checked():
    with pytest.raises(UserError, match="gate_temperature"):
        TrainConfig.from_flat({"method": "decision", "gate_temperature": 0})
    with pytest.raises(UserError, match="gate_input"):
        TrainConfig.from_flat({"method": "decision", "gate_input": "margin"})


def test_training_reports_the_mean_weights(folder):
    cfg = _config(folder)
    manifest = load_manifest(folder)
    reports = []
    loop.train(cfg, manifest, InMemoryDataSource(folder, manifest, 32, 0), lambda m, s: reports.append((m, s)),
               World(0, 1, CPU))
    metrics, state = reports[-1]
    assert metrics["decision/w_audio"] + metrics["decision/w_visual"] == pytest.approx(2.0)
    assert metrics["decision/w_audio"] != pytest.approx(1.0, abs=1e-6)  # the gate has moved
    assert any(k.startswith("heads.net") for k in state["network"])


def _sampled(n, weights_a, weights_v, bias, seed=0, classes=5):
    """Logits z_a, z_v and labels drawn from softmax(w_a z_a + w_v z_v + b): the NLL optimum is (w_a, w_v, b)."""
    gen = torch.Generator().manual_seed(seed)
    z_a, z_v = torch.randn(n, classes, generator=gen), 2 * torch.randn(n, classes, generator=gen)
    truth = weights_a * z_a + weights_v * z_v + bias
    label = torch.multinomial(truth.softmax(1), 1, generator=gen).squeeze(1)
    return z_a, z_v, label


def test_scalar_calibration_recovers_known_weights():
    z_a, z_v, y = _sampled(40_000, 2.0, 0.5, torch.tensor([0.5, 0.0, 0.0, 0.0, -0.5]))
    c = fit_calibration(z_a, z_v, y, "scalar")
    assert c.w_audio.item() == pytest.approx(2.0, abs=0.06)
    assert c.w_visual.item() == pytest.approx(0.5, abs=0.03)
    centred = c.bias - c.bias.mean()  # softmax ignores a shift of the bias
    assert torch.allclose(centred.float(), torch.tensor([0.5, 0.0, 0.0, 0.0, -0.5]), atol=0.06)
    # The regulariser pulls the weights towards 1 (the uncalibrated sum).
    pulled = fit_calibration(z_a, z_v, y, "scalar", reg=10.0)
    assert 1.0 <= pulled.w_audio.item() < c.w_audio.item() and c.w_visual.item() < pulled.w_visual.item() <= 1.0


def test_per_class_calibration_recovers_known_weights():
    w_a = torch.tensor([2.0, 1.0, 0.5, 1.0, 1.5])
    z_a, z_v, y = _sampled(60_000, w_a, 0.5, 0.0, seed=1)
    c = fit_calibration(z_a, z_v, y, "class")
    assert torch.allclose(c.w_audio.float(), w_a, atol=0.1)
    assert torch.allclose(c.w_visual.float(), torch.full((5,), 0.5), atol=0.05)


def test_standardisation_undoes_a_known_scale_and_shift():
    z_a, z_v, y = _sampled(2_000, 1.0, 1.0, 0.0, seed=2)
    plain = fit_calibration(z_a, z_v, y, "standardize")
    scaled = fit_calibration(10 * z_a + 3, z_v, y, "standardize")
    assert scaled.scale_audio == pytest.approx(10 * plain.scale_audio)
    assert torch.allclose(scaled.apply(10 * z_a.double() + 3, z_v.double()), plain.apply(z_a.double(), z_v.double()))
    assert math.isclose(plain.scale_visual, scaled.scale_visual)
