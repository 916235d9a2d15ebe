"""Genotypes (a searched architecture written down) and the plain network built from one.

A genotype is one operation name per layer of a search space. It prints as a short
string and is saved as JSON; ``volnas train --model genotype:FILE`` builds it through the
model registry like any baseline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from volnas.models.mbconv import LayerSpec, make_op, stride_pattern
from volnas.models.registry import register_resolver
from volnas.models.spaces import layer_specs


def stride_of(op: str) -> int:
    """The largest stride of a stem or calibration operation (1 for the others)."""
    return max(stride_pattern(op))


class StackNet(nn.Module):
    """Layers in sequence, then global average pooling and one linear layer (exact CAM)."""

    def __init__(self, layers: list[nn.Module], channels: int, num_classes: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(channels, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.layers(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def build_layer(spec: LayerSpec, op: str, in_channels: int) -> nn.Module:
    """The module for ``op`` at ``spec`` (the stem takes the network's input channels)."""
    if op not in spec.allowed:
        raise ValueError(f"{spec.name}: {op!r} is not a candidate ({', '.join(spec.candidates)})")
    cin = in_channels if spec.kind == "stem" else spec.cin
    return make_op(op, cin, spec.cout, stride_of(op))


@dataclass
class Genotype:
    """One chosen operation per layer of ``space``, plus what the network was searched for."""

    space: str
    ops: list[str]
    num_classes: int = 2
    in_channels: int = 1
    input_shape: tuple[int, ...] | None = None  # (C, D, H, W) the retrain expects
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. an augmentation policy

    def __post_init__(self) -> None:
        specs = layer_specs(self.space)
        if len(self.ops) != len(specs):
            raise ValueError(f"{self.space} has {len(specs)} layers, genotype gives {len(self.ops)}")
        for spec, op in zip(specs, self.ops, strict=True):
            if op not in spec.allowed:
                raise ValueError(f"{spec.name}: {op!r} is not one of {spec.candidates}")
        if self.input_shape is not None:
            self.input_shape = tuple(int(v) for v in self.input_shape)

    @property
    def specs(self) -> list[LayerSpec]:
        return layer_specs(self.space)

    # ---- text forms --------------------------------------------------------------------

    def to_string(self) -> str:
        """``space[stem|calib:op,op,...|...]``, e.g. ``medpipe[conv_s1|conv_s2:k3e3,skip|...]``."""
        cells: list[str] = [self.ops[0]]
        current: list[str] = []
        for spec, op in zip(self.specs[1:], self.ops[1:], strict=True):
            if spec.kind == "calib":
                if current:
                    cells.append(current[0] + ":" + ",".join(current[1:]))
                current = [op]
            else:
                current.append(op)
        cells.append(current[0] + ":" + ",".join(current[1:]))
        return f"{self.space}[{'|'.join(cells)}]"

    @classmethod
    def from_string(cls, text: str, **kwargs: Any) -> Genotype:
        text = text.strip()
        if "[" not in text or not text.endswith("]"):
            raise ValueError(f"not a genotype string: {text!r}")
        space, body = text[:-1].split("[", 1)
        parts = body.split("|")
        ops = [parts[0]]
        for cell in parts[1:]:
            calib, _, normal = cell.partition(":")
            ops.append(calib)
            ops.extend(o for o in normal.split(",") if o)
        return cls(space, ops, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "space": self.space,
            "genotype": self.to_string(),
            "ops": list(self.ops),
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "input_shape": list(self.input_shape) if self.input_shape else None,
            **({"extra": self.extra} if self.extra else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Genotype:
        return cls(d["space"], list(d["ops"]), int(d.get("num_classes", 2)),
                   int(d.get("in_channels", 1)), d.get("input_shape"), dict(d.get("extra") or {}))

    def save(self, path: Path) -> None:
        from volnas.core.files import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> Genotype:
        p = Path(path)
        try:
            d = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{p}: cannot read genotype JSON: {e}") from e
        if "genotype" in d and isinstance(d["genotype"], dict):
            d = d["genotype"]
        try:
            return cls.from_dict(d)
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"{p}: invalid genotype: {e}") from e

    def __str__(self) -> str:
        return self.to_string()

    # ---- the network -------------------------------------------------------------------

    def build(self, in_channels: int | None = None, num_classes: int | None = None) -> StackNet:
        """The derived network: only the chosen operations exist."""
        cin = in_channels or self.in_channels
        specs = self.specs
        layers = [build_layer(s, op, cin) for s, op in zip(specs, self.ops, strict=True)]
        return StackNet(layers, specs[-1].cout, num_classes or self.num_classes)

    def layer_table(self, input_shape: tuple[int, ...] | None = None) -> list[dict[str, Any]]:
        """Per-layer name, op, channels, output size, parameters and FLOPs for one scan."""
        from volnas.models.profile import count_flops, count_params

        shape = tuple(input_shape or self.input_shape or (self.in_channels, 16, 64, 64))
        net = self.build(shape[0])
        rows = []
        x = torch.zeros(1, *shape)
        with torch.no_grad():
            for spec, op, layer in zip(self.specs, self.ops, net.layers, strict=True):
                flops = count_flops(layer, tuple(x.shape[1:])) if count_params(layer) else 0
                x = layer.eval()(x)
                rows.append({"layer": spec.name, "op": op, "cin": spec.cin if spec.cin > 0 else shape[0],
                             "cout": spec.cout, "out": tuple(x.shape[2:]),
                             "params": count_params(layer), "flops": flops})
        return rows


def _from_file(arg: str, in_channels: int, num_classes: int) -> nn.Module:
    return Genotype.load(arg).build(in_channels, num_classes)


register_resolver("genotype", _from_file)
