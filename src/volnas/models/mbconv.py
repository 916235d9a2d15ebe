"""Building blocks of the searched networks: MBConv3D, the candidate table, layer specs.

One table of candidates (name -> constructor) serves both the supernet and the derived
network, so a derived network is exactly the sampled path of the supernet.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _DepthwiseCPU(torch.autograd.Function):
    """A stride-1 depthwise convolution whose input gradient is the forward convolution of
    the output gradient with the kernel flipped, which is the same sum. PyTorch's CPU kernel
    for that gradient takes 3-4x a forward pass (2026, torch 2.13), and in a searched network
    the depthwise layers' backward pass is most of a training step
    (``benchmarks/bench_depthwise.py``)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor, weight: Tensor,
                padding: tuple[int, int, int]) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding = padding  # type: ignore[attr-defined]
        return F.conv3d(x, weight, padding=padding, groups=weight.shape[0])

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx,  # type: ignore[override]
                 grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        x, weight = ctx.saved_tensors  # type: ignore[attr-defined]
        padding, groups = list(ctx.padding), weight.shape[0]  # type: ignore[attr-defined]
        gx = gw = None
        if ctx.needs_input_grad[0]:  # type: ignore[attr-defined]
            gx = F.conv3d(grad, weight.flip(2, 3, 4), padding=padding, groups=groups)
        if ctx.needs_input_grad[1]:  # type: ignore[attr-defined]
            gw = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [1, 1, 1], padding, [1, 1, 1], False, [0, 0, 0],
                groups, [False, True, False])[1]
        return gx, gw, None


class DepthwiseConv3d(nn.Conv3d):
    """Depthwise k^3 convolution (one filter per channel, odd k, "same" padding); on the CPU
    at stride 1 its backward pass takes the faster route of :class:`_DepthwiseCPU`, with the
    same gradients. Parameters and state dict are those of ``nn.Conv3d``."""

    def __init__(self, channels: int, k: int, stride: int = 1) -> None:
        super().__init__(channels, channels, k, stride=stride, padding=k // 2, groups=channels,
                         bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu" or self.stride != (1, 1, 1) or not torch.is_grad_enabled():
            return super().forward(x)
        return _DepthwiseCPU.apply(x, self.weight, self.padding)


class ConvBNAct(nn.Sequential):
    """Conv3d -> BatchNorm3d -> ReLU6 (the stem and calibration layers; with ``groups`` equal
    to the channels, the depthwise layer of :class:`MBConv3D`)."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
                 act: bool = True) -> None:
        depthwise = groups > 1 and groups == cin == cout and k % 2 == 1
        layers: list[nn.Module] = [
            DepthwiseConv3d(cin, k, stride) if depthwise else
            nn.Conv3d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
            nn.BatchNorm3d(cout),
        ]
        if act:
            layers.append(nn.ReLU6(inplace=True))
        super().__init__(*layers)


class MBConv3D(nn.Module):
    """Mobile inverted bottleneck in 3D (docs/design.md, section 4).

    1x1x1 conv C -> eC, BN, ReLU6; depthwise k^3 conv, BN, ReLU6; 1x1x1 conv eC -> C', BN;
    identity shortcut when input and output shapes match. With the shortcut, the last
    BatchNorm starts at zero scale: the block starts as the identity, so a deep stack of
    them trains from the start like a shallow one (and a supernet's candidates start equal).
    """

    def __init__(self, cin: int, cout: int, k: int, e: int, stride: int = 1) -> None:
        super().__init__()
        mid = cin * e
        self.expand = ConvBNAct(cin, mid, 1) if e != 1 else nn.Identity()
        self.depthwise = ConvBNAct(mid, mid, k, stride=stride, groups=mid)
        self.project = ConvBNAct(mid, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout
        if self.residual:
            nn.init.zeros_(self.project[1].weight)

    def forward(self, x: Tensor) -> Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


def _mbconv(k: int, e: int) -> Callable[[int, int, int], nn.Module]:
    return lambda cin, cout, stride: MBConv3D(cin, cout, k, e, stride)


def _skip(cin: int, cout: int, stride: int) -> nn.Module:
    if cin != cout or stride != 1:
        raise ValueError("skip is only a candidate where input and output shapes match")
    return nn.Identity()


def _conv(stride: int | tuple[int, int, int]) -> Callable[[int, int, int], nn.Module]:
    return lambda cin, cout, _stride: ConvBNAct(cin, cout, 3, stride=stride)


def stride_op(strides: tuple[int, int, int]) -> str:
    """The 3^3 convolution with per-axis ``strides`` (D, H, W): conv_s1, conv_s2, or e.g.
    conv_s1x2x2 (in-plane only, for scans with few slices)."""
    if len(set(strides)) == 1:
        return f"conv_s{strides[0]}"
    return "conv_s" + "x".join(str(s) for s in strides)


def stride_pattern(op: str) -> tuple[int, int, int]:
    """Per-axis strides of a stem or calibration operation (1, 1, 1 for the others)."""
    if not op.startswith("conv_s"):
        return (1, 1, 1)
    parts = tuple(int(v) for v in op[len("conv_s"):].split("x"))
    return parts * 3 if len(parts) == 1 else parts  # type: ignore[return-value]


def _pointwise(cin: int, cout: int, _stride: int) -> nn.Module:
    return ConvBNAct(cin, cout, 1)


# name -> constructor(cin, cout, stride). Normal layers choose among MBCONV_CANDIDATES;
# stem and calibration layers choose a stride (MedPipe) or have it fixed (CovidNet3D).
# kKeE: a depthwise kernel of K^3, expansion E
MBCONV_SHAPES: dict[str, tuple[int, int]] = {
    f"k{k}e{e}": (k, e) for k, e in ((3, 3), (3, 4), (3, 6), (5, 3), (5, 4), (7, 3), (7, 4))}
OPS: dict[str, Callable[[int, int, int], nn.Module]] = {
    **{name: _mbconv(k, e) for name, (k, e) in MBCONV_SHAPES.items()},
    "skip": _skip,
    "conv_s1": _conv(1),
    "conv_s2": _conv(2),
    "pw_s1": _pointwise,  # a calibration layer that only changes channels (1x1x1)
}
# downsampling fitted to the input (volnas.models.spaces.fit_strides): a layer of stride 2
# keeps it only along the axes whose map stays large enough
STRIDE_PATTERNS = tuple(stride_op((d, h, w)) for d in (1, 2) for h in (1, 2) for w in (1, 2))
OPS.update({op: _conv(stride_pattern(op)) for op in STRIDE_PATTERNS if op not in OPS})
MBCONV_CANDIDATES = (*MBCONV_SHAPES, "skip")
STRIDE_CANDIDATES = ("conv_s1", "conv_s2")


def make_op(name: str, cin: int, cout: int, stride: int = 1) -> nn.Module:
    if name not in OPS:
        raise KeyError(f"unknown operation {name!r}; known: {', '.join(OPS)}")
    return OPS[name](cin, cout, stride)


@dataclass(frozen=True)
class LayerSpec:
    """One layer of a searched network: its place, channels and candidate operations."""

    name: str  # e.g. "stem", "cell2.calib", "cell2.layer3"
    kind: str  # stem | calib | normal
    cin: int
    cout: int
    candidates: tuple[str, ...]  # one entry: a fixed layer
    # operations this layer had in earlier versions of its space: genotypes saved then
    # still build with them; a search never draws them
    legacy: tuple[str, ...] = ()

    @property
    def allowed(self) -> tuple[str, ...]:
        """What a genotype may hold here: the candidates, legacy operations, and for a
        fixed downsampling layer its strides fitted to a small input (any stride pattern)."""
        fitted = STRIDE_PATTERNS if self.candidates == ("conv_s2",) else ()
        return self.candidates + self.legacy + tuple(o for o in fitted if o not in self.candidates)

    @property
    def searchable(self) -> bool:
        return len(self.candidates) > 1
