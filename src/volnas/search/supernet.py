"""The single-path supernet: every searchable layer holds all candidates, runs only the sampled one."""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor, nn

from volnas.models.genotype import Genotype, StackNet, build_layer
from volnas.models.mbconv import STRIDE_CANDIDATES, stride_pattern
from volnas.models.profile import count_params
from volnas.models.spaces import REFERENCE_STRIDES, layer_specs
from volnas.search.sampler import ChoiceLogits

MAX_EXPANSION = 6


class ChoiceLayer(nn.Module):
    """All candidates of one layer; forward runs ``candidates[index]`` times its one-hot weight."""

    def __init__(self, candidates: list[nn.Module], names: tuple[str, ...]) -> None:
        super().__init__()
        self.candidates = nn.ModuleList(candidates)
        self.names = names
        self.index = 0
        self.weight: Tensor | None = None  # one-hot with straight-through gradient
        self.branch_gradient = True  # weight what a candidate adds to a skippable layer's input
        self.skippable = "skip" in names

    def forward(self, x: Tensor) -> Tensor:
        op = self.candidates[self.index]
        if self.weight is None:
            return op(x)
        # The weight is exactly 1.0 in value: the output is unchanged, the logits get a
        # gradient. In a layer that can be skipped, the weight scales what the candidate adds
        # to its input (y - x: an MBConv's branch), so the gradient measures each candidate
        # against skip, which adds nothing (a sampled skip moves no logit); weighting the
        # whole output would add the input's candidate-independent share to every gradient.
        w = self.weight[self.index]
        y = op(x)
        if self.branch_gradient and self.skippable:
            if y is x:  # skip: nothing added, no gradient (not a gradient of zeros)
                return y
            return y + (w - w.detach()).to(y.dtype) * (y - x)
        return y * w.to(y.dtype)


class SuperNet(nn.Module):
    """Supernet of a search space; ``alpha`` holds one row of logits per searchable layer.

    In training mode each forward samples one path (straight-through Gumbel-softmax);
    in eval mode it runs the argmax path (the architecture the search would export now).
    """

    def __init__(self, space: str, in_channels: int = 1, num_classes: int = 2,
                 stride_budget: float | None = 2.0,
                 spatial: tuple[int, ...] | None = None, stride_rule: str = "end") -> None:
        """``stride_budget``: where strides are searched (medpipe), a path may keep at most
        this multiple of the activation volume of :data:`REFERENCE_STRIDES`; paths over it
        are redrawn (a path of stride-1 layers at full resolution would need tens of GB).
        None: no limit. ``spatial`` (D, H, W): fit the space's fixed strides to this input
        (:func:`volnas.models.spaces.fit_strides`, by ``stride_rule``); None: the space's
        own strides."""
        super().__init__()
        self.space = space
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.spatial = tuple(int(n) for n in spatial) if spatial is not None else None
        self.stride_rule = stride_rule
        self.specs = layer_specs(space, self.spatial, stride_rule)
        layers: list[nn.Module] = []
        sizes, names = [], []
        for spec in self.specs:
            if spec.searchable:
                layers.append(ChoiceLayer([build_layer(spec, op, in_channels) for op in spec.candidates],
                                          spec.candidates))
                sizes.append(len(spec.candidates))
                names.append(spec.name)
            else:
                layers.append(build_layer(spec, spec.candidates[0], in_channels))
        self.net = StackNet(layers, self.specs[-1].cout, num_classes)
        self.alpha = ChoiceLogits(sizes, names)
        self._costs = [torch.tensor([float(count_params(c)) for c in layer.candidates])
                       for layer in self.choice_layers]
        self.generator: torch.Generator | None = None  # set for rank-identical sampling
        self.fixed_path: list[int] | None = None  # force a path (tests, probing)
        searchable = [sp for sp in self.specs if sp.searchable]
        self._stride_rows = [i for i, sp in enumerate(searchable)
                             if sp.candidates == STRIDE_CANDIDATES]
        self.stride_budget = stride_budget
        self._max_cost = math.inf
        if stride_budget is not None and len(self._stride_rows) == len(REFERENCE_STRIDES):
            self._max_cost = stride_budget * self.stride_cost(REFERENCE_STRIDES)

    @property
    def branch_gradient(self) -> bool:
        """Whether the straight-through weight scales only what a candidate of a skippable
        layer adds to its input."""
        return all(layer.branch_gradient for layer in self.choice_layers)

    @branch_gradient.setter
    def branch_gradient(self, value: bool) -> None:
        for layer in self.choice_layers:
            layer.branch_gradient = value

    @property
    def choice_layers(self) -> list[ChoiceLayer]:
        return [m for m in self.net.layers if isinstance(m, ChoiceLayer)]

    def weight_parameters(self) -> list[nn.Parameter]:
        return list(self.net.parameters())

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.alpha.parameters())

    def set_path(self, indices: list[int], weights: list[Tensor] | None = None) -> None:
        for i, layer in enumerate(self.choice_layers):
            layer.index = indices[i]
            layer.weight = None if weights is None else weights[i]

    # ------------------------------------------------------------------ stride budget

    def path_strides(self, indices: list[int]) -> tuple[int, ...]:
        """Strides of the searched stride layers on the path (empty if none is searched)."""
        return tuple(int(STRIDE_CANDIDATES[indices[r]][-1]) for r in self._stride_rows)

    def stride_cost(self, strides: tuple[int, ...]) -> float:
        """Relative activation volume of a stride pattern: sum over layers of width x voxels,
        with every searchable layer at the widest expansion."""
        it = iter(strides)
        scale, cost = 1.0, 0.0
        for spec in self.specs:
            if spec.kind == "normal":
                cost += spec.cout * MAX_EXPANSION * scale
                continue
            if spec.searchable:
                scale /= next(it) ** 3
            else:
                scale /= math.prod(stride_pattern(spec.candidates[0]))
            cost += spec.cout * scale
        return cost

    def feasible(self, indices: list[int]) -> bool:
        """Does the path keep within the stride budget?"""
        return not self._stride_rows or self.stride_cost(self.path_strides(indices)) <= self._max_cost

    def best_feasible(self, indices: list[int]) -> list[int]:
        """``indices`` with its stride choices replaced by the most probable stride pattern
        within the budget (unchanged when already feasible)."""
        if self.feasible(indices):
            return list(indices)
        logp = [torch.log_softmax(self.alpha.logits[r].detach().float(), -1) for r in self._stride_rows]
        best, best_lp = None, -math.inf
        for pattern in itertools.product(range(len(STRIDE_CANDIDATES)), repeat=len(self._stride_rows)):
            strides = tuple(int(STRIDE_CANDIDATES[i][-1]) for i in pattern)
            lp = float(sum(lp_r[i] for lp_r, i in zip(logp, pattern, strict=True)))
            if lp > best_lp and self.stride_cost(strides) <= self._max_cost:
                best, best_lp = pattern, lp
        assert best is not None  # all stride 2 is always within a budget >= 1
        out = list(indices)
        for r, i in zip(self._stride_rows, best, strict=True):
            out[r] = i
        return out

    def argmax_path(self) -> list[int]:
        """The most probable path within the stride budget (what the search exports)."""
        return self.best_feasible(self.alpha.argmax())

    def sample_path(self) -> list[int]:
        """Draw a path (with straight-through weights) and install it; returns the indices.

        A path over the stride budget is redrawn (rejection sampling: the sample then comes
        from the distribution restricted to the budget); after 50 rejections its stride
        choices are replaced by the most probable pattern within the budget.
        """
        for _ in range(50):
            sample = self.alpha.sample(self.generator)
            indices = [i for _, i in sample]
            if self.feasible(indices):
                break
        weights = [w for w, _ in sample]
        fixed = self.best_feasible(indices)
        for r, (i, j) in enumerate(zip(indices, fixed, strict=True)):
            if i != j:
                weights[r] = nn.functional.one_hot(torch.tensor(j), len(weights[r])).to(weights[r])
        self.set_path(fixed, weights)
        return fixed

    def forward(self, x: Tensor) -> Tensor:
        if self.fixed_path is not None:
            self.set_path(self.fixed_path)
        elif self.training:
            self.sample_path()
        else:
            self.set_path(self.argmax_path())
        return self.net(x)

    def features(self, x: Tensor) -> Tensor:
        return self.net.features(x)

    def genotype(self, indices: list[int] | None = None, input_shape: tuple[int, ...] | None = None) -> Genotype:
        """The genotype of a path (default: the argmax path)."""
        idx = iter(indices if indices is not None else self.argmax_path())
        ops = [spec.candidates[next(idx)] if spec.searchable else spec.candidates[0]
               for spec in self.specs]
        return Genotype(self.space, ops, self.num_classes, self.in_channels, input_shape)

    def path_params(self, indices: list[int]) -> int:
        """Parameters of the network that the path ``indices`` defines."""
        total = count_params(self.net.fc)
        it = iter(indices)
        for layer in self.net.layers:
            total += count_params(layer.candidates[next(it)] if isinstance(layer, ChoiceLayer) else layer)
        return total

    def path_state_dict(self, indices: list[int]) -> dict[str, Tensor]:
        """Weights of the path ``indices`` under the derived network's names (``Genotype.build``)."""
        out: dict[str, Tensor] = {}
        it = iter(indices)
        for i, layer in enumerate(self.net.layers):
            module = layer.candidates[next(it)] if isinstance(layer, ChoiceLayer) else layer
            for k, v in module.state_dict().items():
                out[f"layers.{i}.{k}"] = v
        for k, v in self.net.fc.state_dict().items():
            out[f"fc.{k}"] = v
        return out

    def candidate_params(self) -> list[Tensor]:
        """Per searchable layer, the parameter count of each candidate (for cost-aware search)."""
        return self._costs

    def fixed_params(self) -> int:
        total = count_params(self.net.fc)
        for layer in self.net.layers:
            if not isinstance(layer, ChoiceLayer):
                total += count_params(layer)
        return total

    def expected_params(self) -> Tensor:
        """Expected parameter count under the current distribution (differentiable in alpha)."""
        device = self.alpha.logits[0].device
        total = torch.tensor(float(self.fixed_params()), device=device)
        for a, cost in zip(self.alpha.logits, self._costs, strict=True):
            total = total + (torch.softmax(a.float(), -1) * cost.to(device)).sum()
        return total
