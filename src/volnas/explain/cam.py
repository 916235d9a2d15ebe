"""Class activation maps on 5D batches (B, C, D, H, W): CAM, Grad-CAM and Grad-CAM++.

All three share one forward hook on a *target layer* (the last feature map by default) and
return maps upsampled trilinearly to the model input, one per batch item, for a per-item
class. Every computation reduces over the spatial axes of one item only, so a batch gives
the same maps as its items one by one (MONAI 1.6.1's Grad-CAM++ sums over the batch).

* ``cam`` (Zhou et al. 2016): for a network ending in global average pooling + one linear
  layer, ``cam_c = sum_k W[c, k] A_k``; its spatial mean plus ``b_c`` is exactly the logit,
  which is checked on every call. No gradients.
* ``gradcam`` (Selvaraju et al. 2017): ``relu(sum_k mean(dy_c / dA_k) A_k)``, any model.
* ``gradcampp`` (Chattopadhay et al. 2018): the closed-form weights for an exponential
  score, ``alpha = g^2 / (2 g^2 + sum(A) g^3)``, ``w_k = sum(alpha relu(g))``.

Normalisation of the upsampled map (per item): negative values are dropped (they are
evidence *against* the class), then the map is divided by its maximum, so maps lie in
[0, 1]. A map with no positive value (the class has no positive evidence anywhere) is
min-max scaled instead, so it still shows where the evidence is least negative.

The factory by method name is :func:`volnas.explain.methods.make_explainer`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ClassArg = int | Sequence[int] | Tensor | None


class ExplainError(ValueError):
    """The model or layer cannot be explained as asked (message says why and what to do)."""


# --------------------------------------------------------------------------- layers


def default_target_layer(model: nn.Module, model_name: str | None = None) -> str:
    """The default Grad-CAM layer: the registry's ``cam_layer``, else ``layers`` (StackNet).

    Args:
        model: the network.
        model_name: its registry name (``resnet3d_18``, ``genotype:FILE``, ...) or None.
    """
    if model_name and ":" not in model_name:
        from volnas.models.registry import get_spec

        try:
            layer = get_spec(model_name).cam_layer
        except KeyError:
            layer = None
        if layer:
            return layer
    for name in ("layers", "features"):
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    raise ExplainError(
        f"no default target layer for {type(model).__name__}"
        + (f" ({model_name})" if model_name else "")
        + "; name one (a dotted module name, e.g. 'layer4')"
    )


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """``model``'s sub-module ``name`` (dotted); a clear error listing candidates if absent."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        top = [n for n, _ in model.named_children()]
        raise ExplainError(
            f"{type(model).__name__} has no layer {name!r}; top-level layers: {', '.join(top)}"
        ) from None


@dataclass(frozen=True)
class LinearHead:
    """The GAP + linear head that makes CAM exact: the linear layer and the map's module."""

    linear: nn.Linear
    feature_layer: str  # module whose output is pooled


def find_linear_head(model: nn.Module) -> LinearHead:
    """Detect a global-average-pooling + single-linear head, or raise ExplainError.

    Recognised: ``fc`` (Linear) after ``pool``/``avgpool`` (AdaptiveAvgPool3d(1)) as in
    StackNet, MONAI ResNet and the video ResNets; MONAI DenseNet's ``class_layers``
    (relu, pool, flatten, out).
    """
    fc = getattr(model, "fc", None)
    pool = getattr(model, "pool", None)
    if pool is None:
        pool = getattr(model, "avgpool", None)
    if isinstance(fc, nn.Linear) and _is_gap(pool):
        if isinstance(getattr(model, "layers", None), nn.Module):
            return LinearHead(fc, "layers")
        if isinstance(getattr(model, "layer4", None), nn.Module):
            return LinearHead(fc, "layer4")
    head = getattr(model, "class_layers", None)
    if isinstance(head, nn.Sequential) and isinstance(getattr(head, "out", None), nn.Linear):
        if _is_gap(getattr(head, "pool", None)) and hasattr(head, "relu"):
            return LinearHead(head.out, "class_layers.relu")
    raise ExplainError(
        f"CAM needs a network ending in global average pooling + one linear layer; "
        f"{type(model).__name__} has no such head - use Grad-CAM (method 'gradcam')"
    )


def _is_gap(module: object) -> bool:
    if isinstance(module, nn.AdaptiveAvgPool3d):
        size = module.output_size
        return all(s == 1 for s in size) if isinstance(size, tuple) else size == 1
    return False


# --------------------------------------------------------------------------- explainers


@dataclass
class Explanation:
    """Maps and scores of one batch."""

    maps: Tensor  # (B, D, H, W) at the model input size, in [0, 1]
    raw: Tensor  # (B, d, h, w) at the target layer, before normalisation
    logits: Tensor  # (B, classes)
    classes: Tensor  # (B,) class index each map explains

    @property
    def probs(self) -> Tensor:
        return torch.softmax(self.logits.float(), dim=1)


class _Explainer:
    """Forward hook on one layer; subclasses turn (activations, logits) into raw maps."""

    needs_grad = True

    def __init__(self, model: nn.Module, target_layer: str) -> None:
        self.model = model
        self.target_layer = target_layer
        self.layer = get_layer(model, target_layer)
        self._act: Tensor | None = None

    def _hook(self, _m: nn.Module, _i: object, out: object) -> None:
        if not isinstance(out, Tensor):
            raise ExplainError(f"layer {self.target_layer!r} does not output one tensor")
        self._act = out

    def __call__(self, x: Tensor, class_idx: ClassArg = None) -> Explanation:
        """Explain ``x`` (B, C, D, H, W) for ``class_idx`` (None: each item's prediction)."""
        if x.ndim != 5:
            raise ExplainError(f"expected a 5D batch (B, C, D, H, W), got shape {tuple(x.shape)}")
        if self.model.training:
            raise ExplainError("put the model in eval mode first (batch norm and dropout)")
        handle = self.layer.register_forward_hook(self._hook)
        try:
            with torch.set_grad_enabled(self.needs_grad):
                xin = x.detach().requires_grad_(self.needs_grad)
                logits = self.model(xin)
                if self._act is None:
                    raise ExplainError(f"layer {self.target_layer!r} was not run by forward()")
                act = self._act
                if act.ndim != 5:
                    raise ExplainError(
                        f"layer {self.target_layer!r} gives shape {tuple(act.shape)}, "
                        "not a 3D feature map (B, K, d, h, w)"
                    )
                classes = _class_indices(class_idx, logits)
                raw = self._raw_maps(act, logits, classes)
        finally:
            handle.remove()
            self._act = None
        up = F.interpolate(raw[:, None].float(), size=tuple(x.shape[2:]), mode="trilinear",
                           align_corners=False)[:, 0]
        return Explanation(normalize_maps(up).detach(), raw.detach(), logits.detach(),
                           classes)

    def _raw_maps(self, act: Tensor, logits: Tensor, classes: Tensor) -> Tensor:
        raise NotImplementedError

    def _grads(self, act: Tensor, logits: Tensor, classes: Tensor) -> Tensor:
        # Items are independent in eval mode, so the gradient of the summed chosen logits
        # with respect to the batch's activations is each item's own gradient.
        score = logits.gather(1, classes[:, None]).sum()
        (g,) = torch.autograd.grad(score, act)
        return g


class CAM(_Explainer):
    """Exact CAM for GAP + linear heads; ``target_layer`` defaults to the pooled map."""

    needs_grad = False

    def __init__(self, model: nn.Module, target_layer: str | None = None) -> None:
        self.head = find_linear_head(model)
        super().__init__(model, target_layer or self.head.feature_layer)

    def _raw_maps(self, act: Tensor, logits: Tensor, classes: Tensor) -> Tensor:
        w = self.head.linear.weight  # (n_classes, K)
        if act.shape[1] != w.shape[1]:
            raise ExplainError(
                f"layer {self.target_layer!r} has {act.shape[1]} channels, the linear head "
                f"takes {w.shape[1]}: CAM needs the feature map that is pooled"
            )
        cams = torch.einsum("ck,bkdhw->bcdhw", w.float(), act.float())
        expect = cams.mean(dim=(2, 3, 4))
        if self.head.linear.bias is not None:
            expect = expect + self.head.linear.bias.float()
        tol = 1e-3 * (1.0 + logits.float().abs().max().item())
        if not torch.allclose(expect, logits.float(), atol=tol, rtol=1e-3):
            raise ExplainError(
                f"CAM of layer {self.target_layer!r} does not reproduce the logits: it is not "
                "the map that is average-pooled into the linear head; use Grad-CAM"
            )
        return cams[torch.arange(len(classes)), classes]


class GradCAM(_Explainer):
    """Grad-CAM: channel weights = spatial mean of the class score's gradient."""

    def _raw_maps(self, act: Tensor, logits: Tensor, classes: Tensor) -> Tensor:
        g = self._grads(act, logits, classes)
        w = g.mean(dim=(2, 3, 4), keepdim=True)
        return F.relu((w * act).sum(dim=1))


class GradCAMpp(_Explainer):
    """Grad-CAM++ with per-item sums (correct for batches)."""

    def _raw_maps(self, act: Tensor, logits: Tensor, classes: Tensor) -> Tensor:
        g = self._grads(act, logits, classes)
        g2, g3 = g.pow(2), g.pow(3)
        denom = 2 * g2 + act.sum(dim=(2, 3, 4), keepdim=True) * g3
        alpha = g2 / torch.where(denom != 0, denom, torch.ones_like(denom))
        w = (alpha * F.relu(g)).sum(dim=(2, 3, 4), keepdim=True)
        return F.relu((w * act).sum(dim=1))


# --------------------------------------------------------------------------- helpers


def _class_indices(class_idx: ClassArg, logits: Tensor) -> Tensor:
    b, n = logits.shape
    if class_idx is None:
        out = logits.detach().argmax(dim=1)
    elif isinstance(class_idx, int):
        out = torch.full((b,), class_idx, dtype=torch.long)
    else:
        out = torch.as_tensor(class_idx, dtype=torch.long).reshape(-1)
        if out.numel() == 1:
            out = out.expand(b)
    out = out.to(logits.device)
    if out.shape != (b,):
        raise ExplainError(f"{out.numel()} class indices for a batch of {b}")
    if ((out < 0) | (out >= n)).any():
        raise ExplainError(f"class index out of range 0..{n - 1}: {out.tolist()}")
    return out


def normalize_maps(maps: Tensor) -> Tensor:
    """Per item: drop negatives and divide by the max; all-non-positive maps are min-max scaled."""
    flat = maps.reshape(maps.shape[0], -1)
    mx = flat.max(dim=1, keepdim=True).values
    mn = flat.min(dim=1, keepdim=True).values
    pos = flat.clamp_min(0) / mx.clamp_min(1e-12)
    span = (mx - mn).clamp_min(1e-12)
    minmax = (flat - mn) / span
    out = torch.where(mx > 0, pos, minmax)
    return out.reshape(maps.shape)
