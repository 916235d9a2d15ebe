"""Explaining an ensemble: one map per member for the ensemble's class, averaged.

Every member is explained for the same class (the ensemble's prediction, or the class
asked for). Each member's map is first normalised on its own (:func:`normalize_maps`:
negatives dropped, divided by its maximum), so a member whose raw map has larger values
does not dominate; the mean of these maps is normalised again, so the result lies in
[0, 1] with a maximum of 1, like a single network's map. The probabilities are the
ensemble's: the mean of the members' temperature-scaled softmax (no test-time
augmentation, as for a single network's explanation).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from volnas.explain.cam import ClassArg, Explanation, normalize_maps


class EnsembleExplainer:
    """Called like an explainer (``explainer(x, class_idx)``), for several networks:
    ``explainers`` from :func:`volnas.explain.methods.make_explainer`, one per member."""

    def __init__(self, explainers: Sequence[Any],
                 temperatures: Sequence[float | None]) -> None:
        if len(explainers) != len(temperatures) or not explainers:
            raise ValueError("one temperature (or None) per member explainer")
        self.explainers = list(explainers)
        self.temperatures = list(temperatures)
        layers = list(dict.fromkeys(e.target_layer for e in self.explainers))
        self.target_layer = "; ".join(layers)

    def probabilities(self, x: Tensor) -> Tensor:
        """The ensemble's probabilities of the batch ``x``: the mean over members of
        ``softmax(logits / T)`` (T = 1 for a member without a temperature)."""
        probs = []
        with torch.no_grad():
            for e, t in zip(self.explainers, self.temperatures, strict=True):
                logits = e.model(x).float()
                probs.append(torch.softmax(logits / (1.0 if t is None else float(t)), dim=1))
        return torch.stack(probs).mean(0)

    def __call__(self, x: Tensor, class_idx: ClassArg = None) -> Explanation:
        """Explain ``x`` (B, C, D, H, W) for ``class_idx`` (None: the ensemble's prediction).

        ``raw`` of the result is the mean of the members' normalised maps at the input's
        size (member maps at their target layers may differ in shape), before it is
        normalised again; ``logits`` are the log of the ensemble's probabilities."""
        probs = self.probabilities(x)
        target = probs.argmax(dim=1) if class_idx is None else class_idx
        explained = [e(x, target) for e in self.explainers]
        maps = torch.stack([ex.maps.float() for ex in explained]).mean(0)
        return Explanation(normalize_maps(maps), maps, probs.clamp_min(1e-12).log(),
                           explained[0].classes)
