"""Test-time augmentation: average a model's softmax over label-preserving views of a scan.

``flips`` averages the identity and the flips along H, along W and along both (the group
the two in-plane flips generate, so the average itself is flip-invariant): four forward
passes per scan. H and W are the in-slice axes of an axial stack (front-back and
left-right), which the default training augmentation flips too. D, the slice axis
(superior-inferior), is not flipped: anatomy is not mirror-symmetric head to foot, the
default training never shows the network such a volume, and a D flip reverses the order
in which a scan's slices were sampled.

TTA acts on the model's probabilities; a calibration temperature is applied after it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

TTA_MODES = ("none", "flips")
FLIP_DIMS: tuple[tuple[int, ...], ...] = ((-2,), (-1,), (-2, -1))  # H, W, H and W
COST = {"none": 1, "flips": 1 + len(FLIP_DIMS)}  # forward passes per scan


def check_mode(mode: str, where: str = "tta") -> str:
    """``mode`` if it is one of :data:`TTA_MODES`, else a ValueError naming ``where``."""
    if mode not in TTA_MODES:
        raise ValueError(f"{where}: unknown test-time augmentation {mode!r}; choose "
                         f"{' or '.join(TTA_MODES)}")
    return mode


def views(x: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """The batch ``x`` (N, C, D, H, W) as each view of ``mode`` sees it, identity first."""
    check_mode(mode)
    if mode == "none":
        return [x]
    return [x, *(x.flip(dims) for dims in FLIP_DIMS)]


def transform(mode: str) -> Callable[[torch.Tensor], list[torch.Tensor]] | None:
    """The ``transform`` hook of :meth:`Trainer.predict` for ``mode`` (None: no TTA)."""
    check_mode(mode)
    if mode == "none":
        return None
    return lambda x: views(x, mode)


def mean_softmax(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """The average of the softmax probabilities of several views' logits (float32)."""
    probs = [torch.softmax(z.float(), 1) for z in logits]
    return probs[0] if len(probs) == 1 else torch.stack(probs).mean(0)


def predict_tta(
    trainer_or_model: Any, loader: Iterable, mode: str, *, device: torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Probabilities, labels and mean loss over ``loader`` with test-time augmentation
    ``mode``, like :meth:`Trainer.predict` (same order; device, autocast and memory format of
    the trainer). A bare ``nn.Module`` is run on ``device`` (default CPU), in float32."""
    from volnas.training.config import TrainConfig
    from volnas.training.trainer import Trainer

    check_mode(mode)
    trainer = trainer_or_model
    if isinstance(trainer_or_model, nn.Module):
        dev = device or torch.device("cpu")
        cfg = TrainConfig(device=str(dev), amp=False, channels_last=False)
        # class names only size an empty result, which predict refuses anyway
        trainer = Trainer(trainer_or_model, cfg, class_names=["0"], positive_class=None,
                          device=dev, run_dir=Path("."))
    return trainer.predict(loader, transform=transform(mode))
