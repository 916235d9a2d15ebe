"""One registry for every network volnas can build: baselines by name, searched networks as
``genotype:FILE``."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

ModelFactory = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about one model name."""

    name: str
    factory: ModelFactory
    family: str
    description: str
    cam_layer: str | None = None  # dotted module name of the last conv feature map (Grad-CAM default)


_REGISTRY: dict[str, ModelSpec] = {}
# prefix -> builder for parametrised names such as "genotype:FILE"
_RESOLVERS: dict[str, Callable[[str, int, int], nn.Module]] = {}


def register_model(
    name: str, *, family: str, description: str, cam_layer: str | None = None
) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: register ``factory(in_channels=1, num_classes=2, **kw) -> nn.Module``."""

    def deco(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelSpec(name, factory, family, description, cam_layer)
        return factory

    return deco


def register_resolver(prefix: str, builder: Callable[[str, int, int], nn.Module]) -> None:
    """Resolve names ``PREFIX:ARG`` with ``builder(arg, in_channels, num_classes)``."""
    _RESOLVERS[prefix] = builder


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a glob pattern, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    return _REGISTRY[name]


def check_model_name(name: str) -> None:
    """Raise ValueError listing the known names unless ``name`` is one volnas can build
    (a registered name or ``PREFIX:ARG`` of a resolver; the argument is not checked here)."""
    prefix, sep, arg = name.partition(":")
    if sep and prefix in _RESOLVERS:
        if not arg:
            raise ValueError(f"model {name!r} names no {prefix} (write {prefix}:...)")
        return
    if name not in _REGISTRY:
        forms = ", ".join(f"{p}:..." for p in sorted(_RESOLVERS))
        raise ValueError(f"unknown model {name!r}; known: {', '.join(list_models())}"
                         + (f" (or {forms})" if forms else ""))


def create_model(name: str, in_channels: int = 1, num_classes: int = 2, **kwargs) -> nn.Module:
    """Build a registered model (or a ``prefix:arg`` name such as ``genotype:FILE``)."""
    prefix, sep, arg = name.partition(":")
    if sep and prefix in _RESOLVERS:
        return _RESOLVERS[prefix](arg, in_channels, num_classes)
    return get_spec(name).factory(in_channels=in_channels, num_classes=num_classes, **kwargs)
