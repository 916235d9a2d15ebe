"""Networks by name (:func:`create_model`) and what they cost (:func:`profile_model`)."""

from __future__ import annotations

# the model modules fill the registry as they are imported
from volnas.models import baselines, genotype  # noqa: F401
from volnas.models.profile import count_flops, count_params, profile_model, size_mb
from volnas.models.registry import (
    ModelSpec,
    create_model,
    get_spec,
    list_models,
    register_model,
    register_resolver,
)

__all__ = [
    "ModelSpec",
    "count_flops",
    "count_params",
    "create_model",
    "get_spec",
    "list_models",
    "profile_model",
    "register_model",
    "register_resolver",
    "size_mb",
]
