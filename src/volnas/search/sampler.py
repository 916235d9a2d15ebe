"""The one straight-through Gumbel-softmax sampler, shared by architecture and augmentation search.

Forward: a hard one-hot sample (only that candidate is computed). Backward: the gradient
of the soft Gumbel-softmax (MedPipe Eq. 3-4, GDAS). The candidate's output is multiplied
by its one-hot weight (exactly 1.0 in value) so that the logits receive a gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn


def gumbel_like(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard Gumbel noise with the logits' shape (drawn on the CPU generator if given)."""
    u = torch.rand(logits.shape, generator=generator, dtype=torch.float32)
    u = u.clamp_(1e-10, 1.0 - 1e-7).to(logits.device)
    return -torch.log(-torch.log(u))


def st_gumbel_softmax(
    logits: torch.Tensor, tau: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Straight-through Gumbel-softmax over the last dimension.

    Returns:
        weights: hard one-hot in value, with the soft sample's gradient.
        index: the sampled candidate(s), ``argmax`` of the hard sample.
    """
    if tau <= 0:
        raise ValueError(f"temperature must be > 0, got {tau}")
    y_soft = torch.softmax((logits.float() + gumbel_like(logits, generator)) / tau, dim=-1)
    index = y_soft.argmax(dim=-1)
    y_hard = torch.nn.functional.one_hot(index, logits.shape[-1]).to(y_soft.dtype)
    return y_hard - y_soft.detach() + y_soft, index


@dataclass
class TemperatureSchedule:
    """Temperature annealed from ``start`` to ``end`` over the search (exp or linear)."""

    start: float = 5.0
    end: float = 0.5
    kind: Literal["exp", "linear", "constant"] = "exp"

    def __call__(self, progress: float) -> float:
        """Temperature at ``progress`` in [0, 1] (fraction of the search done)."""
        p = min(max(progress, 0.0), 1.0)
        if self.kind == "constant":
            return self.start
        if self.kind == "linear":
            return self.start + (self.end - self.start) * p
        return self.start * math.exp(math.log(self.end / self.start) * p)


def mean_uniform_entropy(sizes: list[int]) -> float:
    """Mean entropy (nats) of uniform distributions over rows of ``sizes`` candidates."""
    return sum(math.log(n) for n in sizes) / len(sizes)


class ChoiceLogits(nn.Module):
    """Logits of a set of categorical choices (one row per searchable layer).

    Rows may have different numbers of candidates; each is its own Parameter. ``init``
    gives each row's starting logits (a prior); by default every row starts uniform.
    """

    def __init__(self, sizes: list[int], names: list[str] | None = None,
                 init: list[torch.Tensor] | None = None) -> None:
        super().__init__()
        start = init if init is not None else [torch.zeros(n) for n in sizes]
        if [len(t) for t in start] != list(sizes):
            raise ValueError(f"init logits have sizes {[len(t) for t in start]}, expected {sizes}")
        self.logits = nn.ParameterList([nn.Parameter(t.detach().float().clone()) for t in start])
        # the start, reference of decision() and of the logits' weight decay: buffers that
        # follow the module's device, not state (rebuilt from the configuration on resume)
        for i, t in enumerate(start):
            self.register_buffer(f"start{i}", t.detach().float().clone(), persistent=False)
        self.names = names or [f"choice{i}" for i in range(len(sizes))]
        self.tau = 1.0

    def __len__(self) -> int:
        return len(self.logits)

    def sample(
        self, generator: torch.Generator | None = None
    ) -> list[tuple[torch.Tensor, int]]:
        """One straight-through sample per row: (one-hot weights, chosen index)."""
        out = []
        for a in self.logits:
            w, idx = st_gumbel_softmax(a, self.tau, generator)
            out.append((w, int(idx)))
        return out

    def start_logits(self) -> list[torch.Tensor]:
        """Each row's starting logits (zeros for a uniform start)."""
        return [getattr(self, f"start{i}") for i in range(len(self.logits))]

    def argmax(self) -> list[int]:
        return [int(a.detach().argmax()) for a in self.logits]

    def probs(self) -> list[torch.Tensor]:
        return [torch.softmax(a.detach().float(), -1) for a in self.logits]

    def entropy(self) -> list[float]:
        """Entropy (nats) of each row's distribution: log(n) when uniform, 0 when decided."""
        return [_entropy(p) for p in self.probs()]

    def decision(self) -> dict[str, float]:
        """How far the search has moved from its start, averaged over the rows.

        ``entropy_ratio`` is the mean entropy over the start distribution's (log(n) for a
        uniform start): 1.0 at the start, 0.0 when every row is decided, above 1.0 where a
        non-uniform start has moved towards uniform; ``argmax_prob`` is
        the mean probability of each row's argmax, ``start_prob`` the same at the start.
        """
        probs = self.probs()
        h = float(sum(self.entropy())) / len(probs)
        start = [torch.softmax(t.float(), -1) for t in self.start_logits()]
        h0 = sum(_entropy(p) for p in start) / len(probs)
        return {"entropy": h, "start_entropy": h0, "entropy_ratio": h / h0 if h0 > 0 else 0.0,
                "argmax_prob": float(sum(float(p.max()) for p in probs)) / len(probs),
                "start_prob": float(sum(float(p.max()) for p in start)) / len(probs)}


def _entropy(p: torch.Tensor) -> float:
    return float(-(p * p.clamp_min(1e-12).log()).sum())


def score_function_gradient(
    logits: list[torch.Tensor], paths: list[list[int]], losses: torch.Tensor
) -> list[torch.Tensor]:
    """Gradient of the expected loss w.r.t. each row of logits from K >= 2 paths drawn from
    ``softmax(logits)`` and scored on the same batch (REINFORCE with a leave-one-out
    baseline: unbiased, and the batch's difficulty cancels).

    It compares candidates by the loss of the networks that use them, where the
    straight-through gradient only asks whether the sampled branch should be scaled, which
    weights trained to an optimum of that scale answer with about zero for every candidate.
    """
    k = len(paths)
    if k < 2 or losses.shape != (k,):
        raise ValueError(f"need >= 2 paths and one loss per path, got {k} and {tuple(losses.shape)}")
    losses = losses.detach().float()
    advantage = losses - (losses.sum() - losses) / (k - 1)
    grads = []
    for r, a in enumerate(logits):
        p = torch.softmax(a.detach().float(), -1)
        chosen = torch.tensor([path[r] for path in paths], device=p.device)
        onehot = torch.nn.functional.one_hot(chosen, p.numel()).float()
        grads.append((advantage.to(p.device)[:, None] * (onehot - p)).mean(0).to(a.dtype))
    return grads
