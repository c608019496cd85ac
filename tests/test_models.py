"""The model contract (mmray/models): fused and per-modality logits from one pass."""

from __future__ import annotations

import pytest
import torch

from mmray.data.manifest import AudioSpec, FramesSpec, Manifest
from mmray.errors import UserError
from mmray.models import BACKBONES, AVOutput, Encoders, build_model

torch.set_num_threads(1)

K = 5


def manifest(audio_shape=(1, 32, 32), frames=2, size=24) -> Manifest:
    """Shaped like the manifest synthetic.prepare() writes (shards are not needed to build a model)."""
    return Manifest(
        dataset="synthetic-av",
        class_names=[f"class_{c}" for c in range(K)],
        audio=AudioSpec(shape=audio_shape, dtype="float16"),
        frames=FramesSpec(count=frames, height=size, width=size, mean=(0.5,) * 3, std=(0.16,) * 3),
        shards={},
    )


def inputs(m: Manifest, batch: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    audio = torch.randn((batch, *m.audio.shape), generator=g)
    frames = torch.randn((batch, m.frames.count, m.frames.channels, m.frames.height, m.frames.width), generator=g)
    return audio, frames


def built(backbone: str, fusion: str, m: Manifest, width: int = 16):
    torch.manual_seed(0)
    return build_model(backbone, fusion, m, width=width).eval()


@pytest.mark.parametrize("fusion", ["concat", "sum"])
def test_small_cnn_output_contract(fusion):
    m = manifest()
    model = built("small-cnn", fusion, m, width=16)
    with torch.no_grad():
        out = model(*inputs(m, batch=3))
    assert isinstance(out, AVOutput)
    for logits in (out.fused, out.audio, out.visual):
        assert logits.shape == (3, K)
    assert out.audio_features.shape == (3, 32)  # small-cnn features are 2 * width
    assert out.visual_features.shape == (3, 32)
    torch.testing.assert_close(out.fused, out.audio + out.visual)
    assert not torch.allclose(out.audio, out.visual)


def test_concat_split_is_weight_slices_plus_half_bias():
    m = manifest()
    model = built("small-cnn", "concat", m, width=16)
    with torch.no_grad():
        out = model(*inputs(m))
        fc = model.fusion.fc
        d_a = out.audio_features.shape[1]
        w_a, w_v = fc.weight[:, :d_a], fc.weight[:, d_a:]
        torch.testing.assert_close(out.audio, out.audio_features @ w_a.T + fc.bias / 2)
        torch.testing.assert_close(out.visual, out.visual_features @ w_v.T + fc.bias / 2)
        # and the fused logits are the plain linear layer on the concatenated features
        torch.testing.assert_close(out.fused, fc(torch.cat([out.audio_features, out.visual_features], dim=1)))


def test_sum_fusion_uses_one_head_per_modality():
    m = manifest()
    model = built("small-cnn", "sum", m, width=16)
    with torch.no_grad():
        out = model(*inputs(m))
        torch.testing.assert_close(out.audio, model.fusion.fc_audio(out.audio_features))
        torch.testing.assert_close(out.visual, model.fusion.fc_visual(out.visual_features))


def test_audio_logits_do_not_depend_on_frames():
    m = manifest()
    model = built("small-cnn", "concat", m)
    audio, frames = inputs(m)
    with torch.no_grad():
        a = model(audio, frames)
        b = model(audio, torch.randn_like(frames))
    torch.testing.assert_close(a.audio, b.audio)
    assert not torch.allclose(a.visual, b.visual)


def test_frame_order_does_not_change_output():
    m = manifest(frames=4)
    model = built("small-cnn", "concat", m)
    audio, frames = inputs(m)
    with torch.no_grad():
        before = model(audio, frames)
        after = model(audio, frames[:, [2, 0, 3, 1]])
        changed = model(audio, torch.cat([frames[:, :1]] * 4, dim=1))  # different content does change it
    torch.testing.assert_close(before.visual_features, after.visual_features)
    torch.testing.assert_close(before.fused, after.fused)
    assert not torch.allclose(before.visual_features, changed.visual_features)


def test_width_sets_feature_dims():
    m = manifest()
    with torch.no_grad():
        out = built("small-cnn", "sum", m, width=8)(*inputs(m, batch=2))
    assert out.audio_features.shape == (2, 16) and out.visual_features.shape == (2, 16)


def test_resnet18_runs_on_a_tiny_input_with_one_channel_audio():
    m = manifest(audio_shape=(1, 32, 32), frames=1, size=32)
    model = built("resnet18", "concat", m)
    with torch.no_grad():
        out = model(*inputs(m, batch=2))
    assert out.fused.shape == (2, K)
    assert out.audio_features.shape == (2, 512) and out.visual_features.shape == (2, 512)
    assert model.audio_encoder.conv1.in_channels == 1
    torch.testing.assert_close(out.fused, out.audio + out.visual)


def test_gradients_reach_both_encoders():
    m = manifest()
    model = build_model("small-cnn", "concat", m, width=8).train()
    out = model(*inputs(m, batch=4))
    out.fused.sum().backward()
    for encoder in (model.audio_encoder, model.visual_encoder):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())


@pytest.mark.parametrize("backbone, fusion, name", [("vgg", "concat", "vgg"), ("small-cnn", "attention", "attention")])
def test_unknown_names_raise_user_error(backbone, fusion, name):
    with pytest.raises(UserError, match=f"'{name}'"):
        build_model(backbone, fusion, manifest())


def test_backbones_return_named_encoders_and_get_only_their_options():
    m = manifest()
    small = BACKBONES["small-cnn"](m, width=8)
    assert isinstance(small, Encoders) and (small.audio_dim, small.visual_dim) == (16, 16)
    with pytest.raises(TypeError):
        BACKBONES["resnet18"](m, width=8)  # ResNet-18 has no width ...
    assert build_model("resnet18", "sum", m, width=8).audio_dim == 512  # ... so build_model does not pass it
