"""The single-path supernet: every searchable layer holds all candidates, runs only the sampled one."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from volnas.models.genotype import Genotype, StackNet, build_layer
from volnas.models.profile import count_params
from volnas.models.spaces import layer_specs
from volnas.search.sampler import ChoiceLogits


class ChoiceLayer(nn.Module):
    """All candidates of one layer; forward runs ``candidates[index]`` times its one-hot weight."""

    def __init__(self, candidates: list[nn.Module], names: tuple[str, ...]) -> None:
        super().__init__()
        self.candidates = nn.ModuleList(candidates)
        self.names = names
        self.index = 0
        self.weight: Tensor | None = None  # one-hot with straight-through gradient

    def forward(self, x: Tensor) -> Tensor:
        y = self.candidates[self.index](x)
        if self.weight is None:
            return y
        # The weight is exactly 1.0 in value: the output is unchanged, the logits get a gradient.
        return y * self.weight[self.index].to(y.dtype)


class SuperNet(nn.Module):
    """Supernet of a search space; ``alpha`` holds one row of logits per searchable layer.

    In training mode each forward samples one path (straight-through Gumbel-softmax);
    in eval mode it runs the argmax path (the architecture the search would export now).
    """

    def __init__(self, space: str, in_channels: int = 1, num_classes: int = 2) -> None:
        super().__init__()
        self.space = space
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.specs = layer_specs(space)
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

    def sample_path(self) -> list[int]:
        """Draw a path (with straight-through weights) and install it; returns the indices."""
        sample = self.alpha.sample(self.generator)
        self.set_path([i for _, i in sample], [w for w, _ in sample])
        return [i for _, i in sample]

    def forward(self, x: Tensor) -> Tensor:
        if self.fixed_path is not None:
            self.set_path(self.fixed_path)
        elif self.training:
            self.sample_path()
        else:
            self.set_path(self.alpha.argmax())
        return self.net(x)

    def features(self, x: Tensor) -> Tensor:
        return self.net.features(x)

    def genotype(self, indices: list[int] | None = None, input_shape: tuple[int, ...] | None = None) -> Genotype:
        """The genotype of a path (default: the argmax path)."""
        idx = iter(indices if indices is not None else self.alpha.argmax())
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
