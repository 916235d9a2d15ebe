"""The explanation methods by name: one registry, one factory (:func:`make_explainer`).

Every explainer is called as ``explainer(x, class_idx)`` on a 5D batch (B, C, D, H, W) in
eval mode and returns an :class:`~volnas.explain.cam.Explanation` whose ``maps`` lie on the
network input grid (B, D, H, W), normalised per item to [0, 1] (negatives dropped, see
:func:`~volnas.explain.cam.normalize_maps`); :mod:`volnas.explain.geometry` then maps them
to the source scan's grid. Items of a batch never mix: a batch gives the maps of its items
one by one.

Methods (``METHODS``):

* ``cam``, ``gradcam``, ``gradcampp``: one feature map (:mod:`volnas.explain.cam`), as
  coarse as the target layer (1x2x2 for a ResNet's last stage on a 16x48x48 input).
* ``layercam``: per-voxel weights ``relu(grad) * A`` summed over channels, so it keeps the
  resolution of an early layer where Grad-CAM's one weight per channel washes out.
* ``layercam-fused``: LayerCAM at the end of every resolution stage of the network, each
  upsampled to the input and normalised, then averaged (fine location from early stages,
  class specificity from late ones).
* ``occlusion``: slide a box of background (zero) over the input; the map is the mean drop
  of the class probability over the boxes covering a voxel. Model-agnostic and slow
  (one forward per box position; positions are batched).
* ``smoothgrad``: mean absolute input gradient of the class logit over noisy copies.
* ``intgrad``: integrated gradients from a background (zero) input: ``(x - x0)`` times the
  mean gradient along the straight path, midpoint rule with ``samples`` steps, batched.
  Its attributions sum to ``logit(x) - logit(x0)`` up to the quadrature error; the map is
  the attribution of the 3x3x3 cube around each voxel (``smooth``).

``DEFAULT_METHOD`` is the method that measured best on lesion masks
(``docs/results/explanations.md``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from volnas.explain.cam import (
    CAM,
    ClassArg,
    ExplainError,
    Explanation,
    GradCAM,
    GradCAMpp,
    _class_indices,
    _Explainer,
    default_target_layer,
    get_layer,
    normalize_maps,
)

DEFAULT_METHOD = "intgrad"


@dataclass(frozen=True)
class MethodInfo:
    """A registered method: label, one-line description, whether it takes a target layer."""

    name: str
    label: str
    description: str
    uses_layer: bool
    build: Callable[..., Any]


_REGISTRY: dict[str, MethodInfo] = {}


def register_method(name: str, label: str, description: str, uses_layer: bool
                    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register a builder ``(model, target_layer, model_name, **options)``."""

    def deco(build: Callable[..., Any]) -> Callable[..., Any]:
        _REGISTRY[name] = MethodInfo(name, label, description, uses_layer, build)
        return build

    return deco


def list_methods() -> list[str]:
    """Registered method names, in registration order."""
    return list(_REGISTRY)


def method_info(name: str) -> MethodInfo:
    """The registered method ``name``, or an ExplainError listing the choices."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ExplainError(f"unknown method {name!r}; expected one of "
                           f"{', '.join(_REGISTRY)}") from None


# --------------------------------------------------------------------------- LayerCAM


class LayerCAM(_Explainer):
    """LayerCAM: ``relu(sum_k relu(dy_c/dA_k) * A_k)`` at the target layer."""

    def _raw_maps(self, act: Tensor, logits: Tensor, classes: Tensor) -> Tensor:
        g = self._grads(act, logits, classes)
        return F.relu((F.relu(g) * act).sum(dim=1))


def stage_layers(model: nn.Module, x: Tensor) -> list[str]:
    """The last module of every spatial resolution the network passes through.

    Candidates are the model's top-level children, a long ``nn.Sequential`` child (a
    StackNet's ``layers``) expanded into its blocks; one forward pass of ``x`` records
    which give 5D outputs, and for each spatial size (more than one voxel) the last
    candidate to produce it is kept, in execution order.
    """
    cands: list[str] = []
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential) and len(child) > 4:
            cands += [f"{name}.{n}" for n, _ in child.named_children()]
        else:
            cands.append(name)
    seen: list[tuple[str, tuple[int, ...]]] = []
    handles = []
    for name in cands:
        def hook(_m: nn.Module, _i: object, out: object, name: str = name) -> None:
            if isinstance(out, Tensor) and out.ndim == 5:
                seen.append((name, tuple(out.shape[2:])))
        handles.append(get_layer(model, name).register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    last: dict[tuple[int, ...], str] = {}
    for name, shape in seen:
        if math.prod(shape) > 1:
            last.pop(shape, None)
            last[shape] = name  # re-insert: order of last appearance
    if not last:
        raise ExplainError(f"{type(model).__name__}: no layer gives a 3D feature map")
    return list(last.values())


class FusedLayerCAM:
    """LayerCAM at several layers, each upsampled to the input and normalised, averaged.

    Args:
        model: network in eval mode.
        layers: dotted module names; None: :func:`stage_layers` (found on the first call).
    """

    def __init__(self, model: nn.Module, layers: Sequence[str] | None = None) -> None:
        self.model = model
        self.layers = list(layers) if layers else None
        for name in self.layers or ():
            get_layer(model, name)

    @property
    def target_layer(self) -> str:
        return "+".join(self.layers) if self.layers else "stages"

    def __call__(self, x: Tensor, class_idx: ClassArg = None) -> Explanation:
        """Explain ``x`` (B, C, D, H, W) for ``class_idx`` (None: each item's prediction)."""
        _check_input(self.model, x)
        if self.layers is None:
            self.layers = stage_layers(self.model, x)
        acts: dict[str, Tensor] = {}

        def make_hook(name: str) -> Callable[..., None]:
            def hook(_m: nn.Module, _i: object, out: object) -> None:
                if isinstance(out, Tensor) and out.ndim == 5:
                    acts[name] = out
            return hook

        handles = [get_layer(self.model, n).register_forward_hook(make_hook(n))
                   for n in self.layers]
        try:
            with torch.enable_grad():
                logits = self.model(x.detach())
                classes = _class_indices(class_idx, logits)
                missing = [n for n in self.layers if n not in acts]
                if missing:
                    raise ExplainError(f"layers {missing} gave no 3D feature map")
                score = logits.gather(1, classes[:, None]).sum()
                grads = torch.autograd.grad(score, [acts[n] for n in self.layers])
        finally:
            for h in handles:
                h.remove()
        maps = []
        for name, g in zip(self.layers, grads, strict=True):
            raw = F.relu((F.relu(g) * acts[name]).sum(dim=1)).detach()
            up = F.interpolate(raw[:, None].float(), size=tuple(x.shape[2:]), mode="trilinear",
                               align_corners=False)[:, 0]
            maps.append(normalize_maps(up))
        mean = torch.stack(maps).mean(0)
        return Explanation(normalize_maps(mean), mean, logits.detach(), classes)


# --------------------------------------------------------------------------- input-space methods


def _check_input(model: nn.Module, x: Tensor) -> None:
    if x.ndim != 5:
        raise ExplainError(f"expected a 5D batch (B, C, D, H, W), got shape {tuple(x.shape)}")
    if model.training:
        raise ExplainError("put the model in eval mode first (batch norm and dropout)")


class _InputExplainer:
    """Base of the methods that attribute to input voxels (the map is already full size).

    ``smooth`` > 1 averages the attribution over a ``smooth``-voxel cube around each voxel
    (edges: over the part inside the scan). For integrated gradients, whose attributions
    add up, this is the attribution of the cube around the voxel: a single voxel's value is
    noisy, so without it the map's maximum is often a stray voxel beside the lesion.
    """

    target_layer = "input"

    def __init__(self, model: nn.Module, batch_size: int = 16, smooth: int = 1) -> None:
        if batch_size < 1:
            raise ExplainError(f"batch size must be >= 1, got {batch_size}")
        if smooth < 1 or smooth % 2 == 0:
            raise ExplainError(f"smooth must be an odd size >= 1, got {smooth}")
        self.model = model
        self.batch_size = batch_size
        self.smooth = smooth

    def __call__(self, x: Tensor, class_idx: ClassArg = None) -> Explanation:
        """Explain ``x`` (B, C, D, H, W) for ``class_idx`` (None: each item's prediction)."""
        _check_input(self.model, x)
        x = x.detach()
        with torch.no_grad():
            logits = self.model(x)
        classes = _class_indices(class_idx, logits)
        raw = torch.stack([self._attribute(x[i : i + 1], int(classes[i]))
                           for i in range(len(x))])
        if self.smooth > 1:
            raw = F.avg_pool3d(raw[:, None], self.smooth, stride=1, padding=self.smooth // 2,
                               count_include_pad=False)[:, 0]
        return Explanation(normalize_maps(raw), raw, logits, classes)

    def _attribute(self, x: Tensor, cls: int) -> Tensor:
        """(D, H, W) signed attribution of one item (1, C, D, H, W) to class ``cls``."""
        raise NotImplementedError

    def _input_grads(self, xs: Tensor, cls: int) -> Tensor:
        """Gradient of the class logit for each item of ``xs``, in chunks of batch_size."""
        out = []
        for start in range(0, len(xs), self.batch_size):
            chunk = xs[start : start + self.batch_size].detach().requires_grad_(True)
            with torch.enable_grad():
                logit = self.model(chunk)[:, cls].sum()
                (g,) = torch.autograd.grad(logit, chunk)
            out.append(g.detach())
        return torch.cat(out)


class IntegratedGradients(_InputExplainer):
    """Integrated gradients from a constant baseline (``baseline``, 0 = background)."""

    def __init__(self, model: nn.Module, samples: int = 16, baseline: float = 0.0,
                 batch_size: int = 16, smooth: int = 3) -> None:
        super().__init__(model, batch_size, smooth)
        if samples < 1:
            raise ExplainError(f"samples must be >= 1, got {samples}")
        self.samples = samples
        self.baseline = baseline

    def attributions(self, x: Tensor, cls: int) -> Tensor:
        """Per-input-voxel attributions (1, C, D, H, W) of one item (sum ~ logit gap)."""
        x0 = torch.full_like(x, self.baseline)
        alphas = (torch.arange(self.samples, dtype=x.dtype, device=x.device) + 0.5) / self.samples
        path = x0 + alphas.view(-1, 1, 1, 1, 1) * (x - x0)
        grads = self._input_grads(path, cls).mean(0, keepdim=True)
        return (x - x0) * grads

    def _attribute(self, x: Tensor, cls: int) -> Tensor:
        return self.attributions(x, cls)[0].sum(0)


class SmoothGrad(_InputExplainer):
    """Mean absolute input gradient over ``samples`` noisy copies (noise: ``sigma`` x range)."""

    def __init__(self, model: nn.Module, samples: int = 16, sigma: float = 0.15,
                 batch_size: int = 16, seed: int = 0, smooth: int = 3) -> None:
        super().__init__(model, batch_size, smooth)
        if samples < 1:
            raise ExplainError(f"samples must be >= 1, got {samples}")
        self.samples, self.sigma, self.seed = samples, sigma, seed

    def _attribute(self, x: Tensor, cls: int) -> Tensor:
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        span = float(x.max() - x.min()) or 1.0
        noise = torch.randn((self.samples, *x.shape[1:]), generator=gen).to(x)
        g = self._input_grads(x + self.sigma * span * noise, cls)
        return g.abs().mean(0).sum(0)


class Occlusion(_InputExplainer):
    """Occlusion sensitivity: mean drop of the class probability over covering boxes.

    Args:
        box: (D, H, W) of the occluding box (clipped to the input).
        stride: step between boxes; None: half the box (at least 1).
        value: what the box holds (0 = background after preprocessing).
    """

    def __init__(self, model: nn.Module, box: Sequence[int] = (4, 8, 8),
                 stride: Sequence[int] | None = None, value: float = 0.0,
                 batch_size: int = 16) -> None:
        super().__init__(model, batch_size)
        self.box = tuple(int(b) for b in box)
        self.stride = tuple(int(s) for s in stride) if stride else tuple(max(1, b // 2)
                                                                         for b in self.box)
        if len(self.box) != 3 or len(self.stride) != 3 or min(self.box + self.stride) < 1:
            raise ExplainError(f"box {self.box} and stride {self.stride} need 3 positive sizes")
        self.value = value

    def positions(self, shape: Sequence[int]) -> list[tuple[int, int, int]]:
        """Box corners covering a (D, H, W) grid (the last box of an axis ends at its edge)."""
        axes = []
        for n, b, s in zip(shape, self.box, self.stride, strict=True):
            b = min(b, n)
            starts = list(range(0, n - b + 1, s))
            if starts[-1] != n - b:
                starts.append(n - b)
            axes.append(starts)
        return [(a, b, c) for a in axes[0] for b in axes[1] for c in axes[2]]

    def _attribute(self, x: Tensor, cls: int) -> Tensor:
        shape = tuple(x.shape[2:])
        box = tuple(min(b, n) for b, n in zip(self.box, shape, strict=True))
        pos = self.positions(shape)
        with torch.no_grad():
            p0 = torch.softmax(self.model(x).float(), 1)[0, cls]
            total = torch.zeros(shape, device=x.device)
            count = torch.zeros(shape, device=x.device)
            for start in range(0, len(pos), self.batch_size):
                chunk = pos[start : start + self.batch_size]
                xs = x.repeat(len(chunk), 1, 1, 1, 1)
                for k, (a, b, c) in enumerate(chunk):
                    xs[k, :, a : a + box[0], b : b + box[1], c : c + box[2]] = self.value
                p = torch.softmax(self.model(xs).float(), 1)[:, cls]
                for k, (a, b, c) in enumerate(chunk):
                    sl = (slice(a, a + box[0]), slice(b, b + box[1]), slice(c, c + box[2]))
                    total[sl] += p0 - p[k]
                    count[sl] += 1
        return total / count.clamp_min(1)


# --------------------------------------------------------------------------- registry


def _layer(model: nn.Module, target_layer: str | None, model_name: str | None) -> str:
    return target_layer or default_target_layer(model, model_name)


@register_method("cam", "CAM", "class activation map of the pooled feature map (exact, coarse)",
                 True)
def _cam(model: nn.Module, target_layer: str | None, model_name: str | None,
         **_: Any) -> CAM:
    return CAM(model, target_layer)


@register_method("gradcam", "Grad-CAM", "gradient-weighted feature map of one layer", True)
def _gradcam(model: nn.Module, target_layer: str | None, model_name: str | None,
             **_: Any) -> GradCAM:
    return GradCAM(model, _layer(model, target_layer, model_name))


@register_method("gradcampp", "Grad-CAM++", "Grad-CAM with second-order weights", True)
def _gradcampp(model: nn.Module, target_layer: str | None, model_name: str | None,
               **_: Any) -> GradCAMpp:
    return GradCAMpp(model, _layer(model, target_layer, model_name))


@register_method("layercam", "LayerCAM", "per-voxel positive-gradient weights of one layer",
                 True)
def _layercam(model: nn.Module, target_layer: str | None, model_name: str | None,
              **_: Any) -> LayerCAM:
    return LayerCAM(model, _layer(model, target_layer, model_name))


@register_method("layercam-fused", "LayerCAM (fused)",
                 "LayerCAM of every resolution stage, normalised and averaged", True)
def _layercam_fused(model: nn.Module, target_layer: str | None, model_name: str | None,
                    **_: Any) -> FusedLayerCAM:
    return FusedLayerCAM(model, target_layer.split(",") if target_layer else None)


@register_method("occlusion", "Occlusion", "probability drop under a sliding background box",
                 False)
def _occlusion(model: nn.Module, target_layer: str | None, model_name: str | None, *,
               box: Sequence[int] | None = None, stride: Sequence[int] | None = None,
               batch_size: int = 16, **_: Any) -> Occlusion:
    return Occlusion(model, box or (4, 8, 8), stride, batch_size=batch_size)


@register_method("smoothgrad", "SmoothGrad", "mean |input gradient| over noisy copies", False)
def _smoothgrad(model: nn.Module, target_layer: str | None, model_name: str | None, *,
                samples: int | None = None, batch_size: int = 16, smooth: int | None = None,
                **_: Any) -> SmoothGrad:
    return SmoothGrad(model, samples or 16, batch_size=batch_size,
                      smooth=3 if smooth is None else smooth)


@register_method("intgrad", "Integrated gradients",
                 "input x mean gradient on the path from a background input", False)
def _intgrad(model: nn.Module, target_layer: str | None, model_name: str | None, *,
             samples: int | None = None, batch_size: int = 16, smooth: int | None = None,
             **_: Any) -> IntegratedGradients:
    return IntegratedGradients(model, samples or 16, batch_size=batch_size,
                               smooth=3 if smooth is None else smooth)


METHODS: tuple[str, ...] = tuple(_REGISTRY)


def make_explainer(
    model: nn.Module,
    method: str = DEFAULT_METHOD,
    target_layer: str | None = None,
    model_name: str | None = None,
    **options: Any,
) -> Any:
    """The explainer for ``method`` with its target layer resolved.

    Args:
        model: network in eval mode.
        method: a name of :func:`list_methods`.
        target_layer: dotted module name (``layercam-fused``: comma-separated names);
            default: CAM's pooled map, else the registry's ``cam_layer``; ignored by the
            input-space methods (occlusion, smoothgrad, intgrad).
        model_name: registry name, used to find the default layer.
        options: ``box``, ``stride`` (occlusion), ``samples`` and ``smooth`` (smoothgrad,
            intgrad; ``smooth``: odd cube size the map is averaged over, default 3),
            ``batch_size`` (inputs per forward pass of the input-space methods).
    """
    info = method_info(method)
    return info.build(model, target_layer if info.uses_layer else None, model_name, **options)
