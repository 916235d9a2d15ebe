"""Video ResNets for volumes: R3D-18, MC3-18 and R(2+1)D-18 (Tran et al., CVPR 2018).

One :class:`VideoResNet` covers all three; they differ only in the stem and in the kind of
3x3x3 convolution each of the four stages uses:

- ``"3d"``: a full 3x3x3 convolution (R3D everywhere, MC3 in stage 1).
- ``"2d"``: a spatial-only 1x3x3 convolution with stride (1, s, s) (MC3 stages 2-4), so the
  depth axis is never downsampled there.
- ``"2plus1d"``: 1x3x3 spatial conv to M mid-channels, BN, ReLU, then a 3x1x1 depth conv
  (R(2+1)D), with M chosen so the pair has about the parameters of one 3x3x3 conv.

The layout follows the torchvision video ResNets (BasicBlock, stages [2, 2, 2, 2] of 64, 128,
256, 512 channels, stride 2 in stages 2-4, 1x1x1 projection shortcuts, global average pool
and one linear layer), so parameter counts match torchvision's published ones. The depth
axis of a CT volume plays the part of time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

ConvKind = Literal["3d", "2d", "2plus1d"]
Triple = tuple[int, int, int]


def midplanes(in_planes: int, out_planes: int, t: int = 3, d: int = 3) -> int:
    """Mid-channels M of a (2+1)D conv with about the parameters of a t x d x d conv.

    Tran et al. 2018, Sec. 3.5: ``M = floor(t d^2 N_in N_out / (d^2 N_in + t N_out))``.
    """
    return (t * d * d * in_planes * out_planes) // (d * d * in_planes + t * out_planes)


def _shortcut_stride(kind: ConvKind, stride: int) -> Triple:
    return (1, stride, stride) if kind == "2d" else (stride, stride, stride)


def _conv3x3(kind: ConvKind, in_planes: int, out_planes: int, stride: int, mid: int) -> nn.Module:
    """The 3x3x3-equivalent convolution of a basic block (no BN after it)."""
    if kind == "3d":
        return nn.Conv3d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
    if kind == "2d":
        return nn.Conv3d(
            in_planes,
            out_planes,
            (1, 3, 3),
            stride=(1, stride, stride),
            padding=(0, 1, 1),
            bias=False,
        )
    if kind == "2plus1d":
        return nn.Sequential(
            nn.Conv3d(
                in_planes, mid, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False
            ),
            nn.BatchNorm3d(mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(
                mid, out_planes, (3, 1, 1), stride=(stride, 1, 1), padding=(1, 0, 0), bias=False
            ),
        )
    raise ValueError(f"unknown conv kind {kind!r}; expected '3d', '2d' or '2plus1d'")


class BasicBlock3d(nn.Module):
    """Two 3x3x3-equivalent convs with BN, ReLU and a residual connection.

    Args:
        kind: which convolution replaces the 3x3x3 one.
        in_planes: input channels.
        planes: output channels.
        stride: spatial (and, except for ``"2d"``, depth) stride of the first conv.

    Both (2+1)D convs of a block use ``midplanes(in_planes, planes)``, as torchvision does;
    for the second conv of a widening block this is a few channels fewer than the per-conv
    formula gives, and it is what reproduces torchvision's 31.5 M parameters.
    """

    def __init__(self, kind: ConvKind, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        mid = midplanes(in_planes, planes)
        self.conv1 = nn.Sequential(
            _conv3x3(kind, in_planes, planes, stride, mid),
            nn.BatchNorm3d(planes),
            nn.ReLU(inplace=True),
        )
        self.conv2 = nn.Sequential(_conv3x3(kind, planes, planes, 1, mid), nn.BatchNorm3d(planes))
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv3d(in_planes, planes, 1, stride=_shortcut_stride(kind, stride), bias=False),
                nn.BatchNorm3d(planes),
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv2(self.conv1(x)) + identity)


def _stem(kind: Literal["3d", "2plus1d"], in_channels: int) -> nn.Sequential:
    if kind == "3d":
        return nn.Sequential(
            nn.Conv3d(in_channels, 64, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
            nn.BatchNorm3d(64),
            nn.ReLU(inplace=True),
        )
    # (2+1)D stem: 45 mid-channels, i.e. midplanes of a 3x7x7 conv from 3 to 64 channels.
    return nn.Sequential(
        nn.Conv3d(in_channels, 45, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
        nn.BatchNorm3d(45),
        nn.ReLU(inplace=True),
        nn.Conv3d(45, 64, (3, 1, 1), padding=(1, 0, 0), bias=False),
        nn.BatchNorm3d(64),
        nn.ReLU(inplace=True),
    )


class VideoResNet(nn.Module):
    """ResNet with a per-stage choice of 3D / 2D / (2+1)D convolutions.

    Args:
        stage_kinds: conv kind of each of the four stages.
        stem: ``"3d"`` (3x7x7, stride (1, 2, 2), 64 channels) or ``"2plus1d"``.
        layers: basic blocks per stage.
        in_channels: input channels (1 for CT).
        num_classes: outputs of the final linear layer.
    """

    def __init__(
        self,
        stage_kinds: Sequence[ConvKind],
        stem: Literal["3d", "2plus1d"] = "3d",
        layers: Sequence[int] = (2, 2, 2, 2),
        in_channels: int = 1,
        num_classes: int = 2,
    ) -> None:
        super().__init__()
        if len(stage_kinds) != 4 or len(layers) != 4:
            raise ValueError("stage_kinds and layers need four entries each")
        self.stem = _stem(stem, in_channels)
        in_planes = 64
        for i, (kind, n_blocks, planes) in enumerate(
            zip(stage_kinds, layers, (64, 128, 256, 512), strict=True)
        ):
            blocks = []
            for j in range(n_blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock3d(kind, in_planes, planes, stride))
                in_planes = planes
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(512, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last feature map (B, 512, d, h, w), before pooling."""
        x = self.stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.forward_features(x)), 1))


def r3d_18(in_channels: int = 1, num_classes: int = 2) -> VideoResNet:
    """R3D-18: 3x3x3 convolutions everywhere."""
    return VideoResNet(["3d"] * 4, "3d", in_channels=in_channels, num_classes=num_classes)


def mc3_18(in_channels: int = 1, num_classes: int = 2) -> VideoResNet:
    """MC3-18: 3D convs in the stem and stage 1, spatial-only 1x3x3 convs in stages 2-4."""
    return VideoResNet(
        ["3d", "2d", "2d", "2d"], "3d", in_channels=in_channels, num_classes=num_classes
    )


def r2plus1d_18(in_channels: int = 1, num_classes: int = 2) -> VideoResNet:
    """R(2+1)D-18: every 3D conv factorised into 1x3x3 spatial + 3x1x1 depth convs."""
    return VideoResNet(["2plus1d"] * 4, "2plus1d", in_channels=in_channels, num_classes=num_classes)
