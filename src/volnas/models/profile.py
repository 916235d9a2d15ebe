"""Parameters, size and FLOPs of a network, as the papers report them.

Size is ``parameters x 4 bytes`` in MB of 2^20 bytes (the papers' "Model size (MB)").
FLOPs come from :class:`torch.utils.flop_counter.FlopCounterMode`, which counts one
multiply-add as 2 FLOPs and counts only matmul-like ops (convolutions, linear layers);
BN, activations, pooling and additions are left out. Papers that quote "FLOPs" from
thop/ptflops usually mean MACs, i.e. half of our figure.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from volnas.models.registry import create_model


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


def size_mb(model: nn.Module) -> float:
    """Model size in MB as the papers report it: ``params * 4 / 2**20``."""
    return count_params(model) * 4 / 2**20


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs (2 x MACs) of one forward pass on one scan.

    Args:
        model: the network; run in eval mode under ``torch.no_grad`` and then put back
            in the mode it was in.
        input_shape: shape of one scan without the batch axis, e.g. ``(1, 32, 128, 128)``.
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros((1, *input_shape), device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def profile_model(
    name_or_module: str | nn.Module,
    input_shape: tuple[int, ...] = (1, 32, 128, 128),
    num_classes: int = 3,
) -> dict[str, Any]:
    """Parameters, size (MB) and FLOPs per scan of a registered name or a module.

    Args:
        name_or_module: registry name (built with ``input_shape[0]`` input channels and
            ``num_classes`` outputs) or an already built module.
        input_shape: one scan, channels first, without the batch axis.
        num_classes: classes when building from a name.
    """
    if isinstance(name_or_module, str):
        model = create_model(name_or_module, in_channels=input_shape[0], num_classes=num_classes)
    else:
        model = name_or_module
    return {
        "params": count_params(model),
        "size_mb": size_mb(model),
        "flops": count_flops(model, input_shape),
    }
