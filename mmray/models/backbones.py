"""Encoders: a compact CNN for synthetic-av, torchvision ResNet-18 (from scratch) for real data."""

from __future__ import annotations

from torch import nn

from mmray.data.manifest import Manifest
from mmray.models.registry import Encoders, register_backbone


def _small_cnn(in_channels: int, width: int, grid: int = 1) -> nn.Module:
    """Three conv blocks, then (B, C, H, W) -> (B, 2 * width): global average pooling (grid 1), or a
    grid x grid average map, flattened and projected, which keeps where a pattern sits (in time and
    frequency, for a spectrogram)."""
    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))
    layers = [block(in_channels, width // 2), block(width // 2, width), block(width, 2 * width),
              nn.AdaptiveAvgPool2d(grid), nn.Flatten()]
    if grid > 1:
        layers.append(nn.Linear(2 * width * grid * grid, 2 * width))
    return nn.Sequential(*layers)


@register_backbone("small-cnn")
def small_cnn(manifest: Manifest, width: int, audio_grid: int = 1) -> Encoders:
    """`audio_grid`: the audio encoder's pooled map side (1: global pooling)."""
    audio = _small_cnn(manifest.audio.shape[0], width, audio_grid)
    visual = _small_cnn(manifest.frames.channels, width)
    return Encoders(audio, visual, 2 * width, 2 * width)


def _resnet18(in_channels: int) -> nn.Module:
    from torchvision.models import resnet18  # here: importing torchvision costs every process about a second

    net = resnet18(weights=None)  # from scratch: nothing is downloaded
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    net.fc = nn.Identity()
    return net


@register_backbone("resnet18")
def resnet18_pair(manifest: Manifest) -> Encoders:
    """No width option: ResNet-18 features are 512-d."""
    return Encoders(_resnet18(manifest.audio.shape[0]), _resnet18(manifest.frames.channels), 512, 512)
