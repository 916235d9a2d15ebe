"""The depthwise layer's faster CPU backward gives nn.Conv3d's outputs and gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from volnas.models.mbconv import DepthwiseConv3d, MBConv3D


@pytest.mark.parametrize("k", [3, 5, 7])
@pytest.mark.parametrize("channels_last", [False, True])
def test_depthwise_matches_a_grouped_conv3d(k: int, channels_last: bool) -> None:
    torch.manual_seed(k)
    ours = DepthwiseConv3d(6, k)
    ref = nn.Conv3d(6, 6, k, padding=k // 2, groups=6, bias=False)
    ref.load_state_dict(ours.state_dict())  # the same parameters under the same names
    x = torch.randn(3, 6, 5, 7, 6)
    if channels_last:
        x = x.to(memory_format=torch.channels_last_3d)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn(3, 6, 5, 7, 6)
    ya, yb = ours(xa), ref(xb)
    assert "_DepthwiseCPU" in ya.grad_fn.name()  # the faster route was taken
    (ya * g).sum().backward()
    (yb * g).sum().backward()
    torch.testing.assert_close(ya, yb)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-5, atol=1e-5)
    assert xa.grad.abs().sum() > 0 and ours.weight.grad.abs().sum() > 0


def test_the_weight_alone_and_a_strided_layer_also_match() -> None:
    torch.manual_seed(0)
    for stride in (1, 2):
        ours = DepthwiseConv3d(4, 3, stride)
        ref = nn.Conv3d(4, 4, 3, stride=stride, padding=1, groups=4, bias=False)
        ref.load_state_dict(ours.state_dict())
        x = torch.randn(2, 4, 6, 6, 6)  # an input that needs no gradient (a first layer)
        ours(x).square().sum().backward()
        ref(x).square().sum().backward()
        torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-5, atol=1e-5)


def test_an_mbconv_block_keeps_its_state_dict_names() -> None:
    block = MBConv3D(8, 8, 5, 3)
    assert isinstance(block.depthwise[0], DepthwiseConv3d)
    assert "depthwise.0.weight" in block.state_dict()
    assert block.depthwise[0].weight.shape == (24, 1, 5, 5, 5)
