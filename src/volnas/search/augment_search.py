"""Searchable augmentation (MedPipe): one layer per type of Table I, same sampler as the architecture.

Each layer's candidates are (magnitude, probability) pairs; the straight-through Gumbel
sample picks one, the batch is augmented with it and multiplied by the candidate's
one-hot weight (1.0 in value), so the augmentation logits receive a gradient.

The start distribution (``prior``) matters more than it looks: a layer has one identity
candidate (p = 0) beside 2 x M augmenting ones (M magnitudes, up to 25), so a uniform
start gives the identity 1/(2M + 1) of the mass and an undecided search exports a heavy
policy. ``prior="probability"`` (the default) starts each probability level with the same
mass, 1/3 each for {0, 0.5, 0.8}, as the paper's grid (probability x magnitude) does when
all its p = 0 entries are counted; the identity then starts log(M) ahead of every other
candidate, so an undecided layer exports no augmentation (for M = 1, noise and flips,
both priors are the same uniform start).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from volnas.data.augment import AUG_TYPES, Magnitude, Policy, PolicyOp, candidates
from volnas.search.sampler import ChoiceLogits

AugPrior = Literal["probability", "candidates"]


def prior_logits(cands: list[tuple[Magnitude, float]], prior: AugPrior) -> torch.Tensor:
    """Starting logits of one layer: every candidate equal (``candidates``) or every
    probability level equal, its magnitudes sharing its mass (``probability``)."""
    if prior == "candidates":
        return torch.zeros(len(cands))
    if prior != "probability":
        raise ValueError(f"unknown augmentation prior {prior!r}; use 'probability' or 'candidates'")
    per_level = {p: sum(1 for _, q in cands if q == p) for _, p in cands}
    return torch.tensor([-math.log(per_level[p]) for _, p in cands])


class AugmentSearch(nn.Module):
    """All augmentation types as searchable layers, applied in Table I order."""

    def __init__(self, types: tuple[str, ...] | None = None,
                 probs: tuple[float, ...] = (0.0, 0.5, 0.8),
                 prior: AugPrior = "probability") -> None:
        super().__init__()
        self.types = tuple(types or AUG_TYPES)
        self.prior = prior
        self.choices = [candidates(t, probs) for t in self.types]
        self.alpha = ChoiceLogits([len(c) for c in self.choices], [f"aug.{t}" for t in self.types],
                                  init=[prior_logits(c, prior) for c in self.choices])
        self.last_indices: list[int] = []

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augment a batch through a sampled policy.

        ``generator`` draws both the candidates and the augmentations' randomness, so the
        same seed reproduces the same augmented batch (the unrolled objective relies on it).
        """
        sample = self.alpha.sample(generator)
        self.last_indices = [i for _, i in sample]
        for t, (w, idx), cands in zip(self.types, sample, self.choices, strict=True):
            magnitude, p = cands[idx]
            if p > 0:
                x = AUG_TYPES[t].apply(x, magnitude, p, generator)
            x = x * w[idx].to(x.dtype)
        return x

    def policy(self, indices: list[int] | None = None) -> Policy:
        """The fixed policy of ``indices`` (default: the argmax of every layer)."""
        idx = indices if indices is not None else self.alpha.argmax()
        return Policy(tuple(PolicyOp(t, *self.choices[k][i])
                            for k, (t, i) in enumerate(zip(self.types, idx, strict=True))))

    def expected_strength(self) -> float:
        """Mean probability of applying an op under the current distribution (0..1)."""
        total = 0.0
        for probs, cands in zip(self.alpha.probs(), self.choices, strict=True):
            total += float(sum(pr * c[1] for pr, c in zip(probs.tolist(), cands, strict=True)))
        return total / len(self.types)
