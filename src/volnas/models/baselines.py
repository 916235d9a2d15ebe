"""The papers' hand-designed baselines, registered by name.

ResNet3D-18/50/101 and DenseNet3D-121 are MONAI's networks (ResNets with a (1, 2, 2)
strided stem, see below); MC3-18, R(2+1)D-18 and R3D-18 are :mod:`volnas.models.video`.

Published sizes (CovidNet3D Table 3, MedPipe Table VI) are reproduced to the printed two
decimals with 3 input channels (so the papers counted 3-channel models): ResNet3D-101
325.21, DenseNet3D-121 43.06 and MC3-18 43.84 MB with 2 classes, R(2+1)D-18 119.41 MB
with 3 (MedPipe's Clean-CC-CCII). With our 1 input channel the stem loses
``2 * 7*7*7 * 64`` (MONAI) or ``2 * 3*7*7 * 64`` (video) weights: at most 0.4 % smaller.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from monai.networks import nets as monai_nets
from torch import nn

from volnas.models import video
from volnas.models.registry import ModelFactory, register_model

# MONAI 1.x (checked on 1.6.1) applies conv1_t_stride to every axis and defaults it to 1,
# so the 7x7x7 stem runs at full resolution: ResNet3D-18 then costs 126 instead of 31 GFLOPs
# per 32x128x128 scan. We use the stride (1, 2, 2) of Hara et al.'s 3D-ResNets, which MONAI's
# ResNet follows (same weights, so the same parameter count); pass conv1_t_stride to change.
_RESNET_STEM: dict[str, Any] = {"conv1_t_size": 7, "conv1_t_stride": (1, 2, 2)}


def _monai_resnet(depth: int, in_channels: int, num_classes: int, **kw: Any) -> nn.Module:
    build = getattr(monai_nets, f"resnet{depth}")
    return build(
        spatial_dims=3,
        n_input_channels=in_channels,
        num_classes=num_classes,
        **{**_RESNET_STEM, **kw},
    )


class _HalvingAvgPool3d(nn.Module):
    """2x2x2 average pool with stride 2, except along axes of size 1, which are kept."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = tuple(2 if s > 1 else 1 for s in x.shape[2:])
        return F.avg_pool3d(x, kernel_size=k, stride=k)


def _resnet_factory(depth: int) -> ModelFactory:
    def build(in_channels: int = 1, num_classes: int = 2, **kw: Any) -> nn.Module:
        return _monai_resnet(depth, in_channels, num_classes, **kw)

    build.__name__ = f"resnet3d_{depth}"
    return build


for _depth, _blocks in ((18, "basic blocks [2,2,2,2]"), (50, "bottlenecks [3,4,6,3]"),
                        (101, "bottlenecks [3,4,23,3]")):
    register_model(f"resnet3d_{_depth}", family="resnet3d",
                   description=f"MONAI ResNet-{_depth} 3D ({_blocks}, shortcut B)",
                   cam_layer="layer4")(_resnet_factory(_depth))


@register_model(
    "densenet3d_121",
    family="densenet3d",
    description="MONAI DenseNet-121 3D (growth 32, blocks [6,12,24,16])",
    # features ends with norm5; the ReLU that follows sits in class_layers.
    cam_layer="class_layers.relu",
)
def densenet3d_121(in_channels: int = 1, num_classes: int = 2, **kw: Any) -> nn.Module:
    model = monai_nets.DenseNet121(
        spatial_dims=3, in_channels=in_channels, out_channels=num_classes, **kw
    )
    # The transitions' 2x2x2 average pools fail on an axis already down to 1 voxel
    # (inputs below 32 voxels per axis); this one leaves such an axis alone.
    for name, module in list(model.features.named_children()):
        if name.startswith("transition"):
            module.pool = _HalvingAvgPool3d()
    return model


@register_model(
    "r3d_18",
    family="video_resnet",
    description="R3D-18 (Tran et al. 2018): 3x3x3 convs in every stage",
    cam_layer="layer4",
)
def r3d_18(in_channels: int = 1, num_classes: int = 2) -> nn.Module:
    return video.r3d_18(in_channels, num_classes)


@register_model(
    "mc3_18",
    family="video_resnet",
    description="MC3-18 (Tran et al. 2018): 3D convs in stem and stage 1, 1x3x3 after",
    cam_layer="layer4",
)
def mc3_18(in_channels: int = 1, num_classes: int = 2) -> nn.Module:
    return video.mc3_18(in_channels, num_classes)


@register_model(
    "r2plus1d_18",
    family="video_resnet",
    description="R(2+1)D-18 (Tran et al. 2018): 1x3x3 spatial + 3x1x1 depth convs",
    cam_layer="layer4",
)
def r2plus1d_18(in_channels: int = 1, num_classes: int = 2) -> nn.Module:
    return video.r2plus1d_18(in_channels, num_classes)
