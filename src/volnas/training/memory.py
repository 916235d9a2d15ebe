"""Memory of one training or search step: an estimate, and a check before a run starts.

A step holds the parameters, their gradients and optimiser state, and the tensors the
forward pass saves for backward (activations), plus short-lived buffers of the backward
pass. Activations dominate for volumes and grow linearly with the batch and the voxels,
so they are measured on a forward of a small probe input (batch 2, every spatial side
halved until the volume is small) and scaled up. For a :class:`SuperNet` the probe runs
the path that keeps the most activations within the stride budget (widest expansion,
least striding), the worst path a search can sample.

Typical use at the start of a run::

    check_run_memory(model, (1, 32, 128, 128), batch_size=8, unrolled=False,
                     augment=True, device=torch.device("cpu"))

which raises a ``ValueError`` naming settings that fit when the step would not fit.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from torch.autograd.graph import saved_tensors_hooks

GB = 1024**3

# Short-lived buffers of the backward pass (the gradient flowing back, the gradient of the
# layer's input, kernel scratch space) and the allocator's slack: a share of the saved
# activations, and at least a few times the largest of them. Fitted to the peak RSS of CPU
# steps (benchmarks/bench_memory.py: without it the medpipe search peaks were 1.2-1.3x the
# parameters + state + activations at 16x64x64).
WORKSPACE_SHARE = 0.5
WORKSPACE_LARGEST = 4.0
# Optimiser state per parameter byte (Adam: two moments; SGD: momentum).
OPTIMIZER_STATE = {"adam": 2, "adamw": 2, "sgd": 1}
# Held apart from the step: the decoded-scan cache (StackCache keeps up to 1 GiB in
# memory), the loader's batches, the interpreter and libraries.
DEFAULT_RESERVE = int(1.5 * GB)
# Only this share of the free memory is planned for; the rest absorbs allocator slack.
HEADROOM = 0.9
# how to run anyway, appended to every refusal
MEMORY_HINT = "To run anyway, set `memory_check: false` in a --config YAML."
PROBE_VOXELS = 8 * 32 * 32


class SizeFlags(NamedTuple):
    """The command-line flags that set the batch and the input size of a run."""

    batch: str = "--batch-size"
    slices: str = "--slices"
    size: str = "--size"


TRAIN_FLAGS = SizeFlags()
SEARCH_FLAGS = SizeFlags("--batch-size", "--search-slices", "--search-size")


@dataclass(frozen=True)
class StepEstimate:
    """Bytes one step needs, split by what holds them.

    ``activations`` and ``workspace`` scale with batch x voxels; the rest does not.
    """

    params: int  # the parameters
    state: int  # gradients, optimiser state, extra weight copies (unrolled objective)
    activations: int  # saved for backward at this batch and input
    workspace: int  # short-lived buffers of the backward pass
    batch_size: int
    input_shape: tuple[int, ...]  # (C, D, H, W)

    @property
    def fixed(self) -> int:
        return self.params + self.state

    @property
    def per_sample(self) -> float:
        """Activation + workspace bytes of one scan."""
        return (self.activations + self.workspace) / self.batch_size

    @property
    def total(self) -> int:
        return self.fixed + self.activations + self.workspace

    def at(self, batch_size: int, input_shape: tuple[int, ...] | None = None) -> StepEstimate:
        """The same step at another batch size or input size (activations scale by voxels)."""
        shape = tuple(input_shape or self.input_shape)
        scale = batch_size / self.batch_size * math.prod(shape) / math.prod(self.input_shape)
        return StepEstimate(self.params, self.state, int(self.activations * scale),
                            int(self.workspace * scale), batch_size, shape)

    def largest_batch(self, budget: int) -> int:
        """The largest batch size whose step fits in ``budget`` bytes (0: none does)."""
        if self.per_sample <= 0:
            return self.batch_size
        return max(0, int((budget - self.fixed) // self.per_sample))

    def largest_input(self, budget: int, batch_size: int | None = None) -> tuple[int, ...] | None:
        """The input (C, D, H, W) that fits ``budget`` at ``batch_size``, found by halving the
        in-plane size (down to 32) and then the slices (down to 8); None when none fits."""
        b = batch_size or self.batch_size
        c, d, h, w = self.input_shape
        while self.at(b, (c, d, h, w)).total > budget:
            if max(h, w) > 32:
                h, w = max(1, (h + 1) // 2), max(1, (w + 1) // 2)
            elif d > 8:
                d = (d + 1) // 2
            else:
                return None
        return (c, d, h, w)

    def describe(self) -> str:
        """Where the bytes go, in GB."""
        return (f"parameters {self.params / GB:.2f}, gradients and optimiser state "
                f"{self.state / GB:.2f}, activations {self.activations / GB:.2f}, backward "
                f"buffers {self.workspace / GB:.2f}")


# ---- measuring the saved tensors ---------------------------------------------------------


@contextlib.contextmanager
def count_saved_tensors(exclude: set[int] | None = None) -> Iterator[dict[int, int]]:
    """Record the storages autograd saves for backward inside the block: data pointer ->
    bytes (each storage once; storages whose pointer is in ``exclude``, e.g. parameters,
    are left out)."""
    seen: dict[int, int] = {}
    skip = exclude or set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in skip:
            seen.setdefault(ptr, storage.nbytes())
        return t

    with saved_tensors_hooks(pack, lambda t: t):
        yield seen


def worst_augmentation(x: torch.Tensor) -> torch.Tensor:
    """Every searchable augmentation applied to every scan, each output multiplied by a
    weight that needs a gradient, as a sampled augmentation policy does in a search step."""
    from volnas.data.augment import AUG_TYPES

    weight = torch.ones((), device=x.device, requires_grad=True)
    gen = torch.Generator().manual_seed(0)
    for t in AUG_TYPES.values():
        x = t.apply(x, t.magnitudes[-1], 1.0, gen) * weight
    return x


def largest_path(supernet: nn.Module) -> list[int]:
    """The path of a SuperNet that keeps the most activations: the widest expansion in
    every normal layer and the least striding its stride budget allows."""
    from volnas.models.mbconv import STRIDE_CANDIDATES

    rows = [s for s in supernet.specs if s.searchable]

    def width(op: str) -> tuple[int, int]:
        m = re.fullmatch(r"k(\d+)e(\d+)", op)
        return (int(m.group(2)), int(m.group(1))) if m else (0, 0)

    base = [max(range(len(s.candidates)), key=lambda i, s=s: width(s.candidates[i])) for s in rows]
    stride_rows = [i for i, s in enumerate(rows) if s.candidates == STRIDE_CANDIDATES]
    best, best_cost = base, -math.inf
    for pattern in itertools.product(range(len(STRIDE_CANDIDATES)), repeat=len(stride_rows)):
        path = list(base)
        for r, i in zip(stride_rows, pattern, strict=True):
            path[r] = i
        if not supernet.feasible(path):
            continue
        cost = supernet.stride_cost(supernet.path_strides(path))
        if cost > best_cost:
            best, best_cost = path, cost
    return best


def probe_shape(input_shape: tuple[int, ...], voxels: int = PROBE_VOXELS) -> tuple[int, ...]:
    """A small (C, D, H, W) of the same proportions: the largest spatial side halved until
    the volume is at most ``voxels`` (sides stay >= 8 where they were)."""
    c, *spatial = input_shape
    while math.prod(spatial) > voxels:
        k = max(range(len(spatial)), key=lambda i: spatial[i])
        if spatial[k] <= 8:
            break
        spatial[k] = (spatial[k] + 1) // 2
    return (c, *spatial)


def measure_activations(model: nn.Module, input_shape: tuple[int, ...], *,
                        augment: bool = False, channels_last: bool = True,
                        batch_size: int = 2, path: list[int] | None = None) -> tuple[int, int]:
    """Bytes saved for backward by one forward of ``model`` in train mode on a random
    ``(batch_size, *input_shape)`` batch, and the largest single saved storage.

    A SuperNet runs ``path`` (default: :func:`largest_path`).

    The model is left as it was (mode, BatchNorm statistics, a SuperNet's path).
    """
    device = next(model.parameters()).device
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    params = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    was_training = model.training
    saved_path = getattr(model, "fixed_path", None)
    if hasattr(model, "alpha") and hasattr(model, "feasible"):
        model.fixed_path = path if path is not None else largest_path(model)
    # its own generator: probing must not move the run's random stream
    x = torch.rand((batch_size, *input_shape), generator=torch.Generator().manual_seed(0)).to(device)
    if channels_last and x.dim() == 5:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    model.train()
    try:
        with torch.enable_grad(), count_saved_tensors(params) as seen:  # weights are counted apart
            out = model(worst_augmentation(x) if augment else x)
            del out
    finally:
        model.train(was_training)
        if hasattr(model, "fixed_path"):
            model.fixed_path = saved_path
        with torch.no_grad():
            for b, copy in buffers:
                b.copy_(copy)
    return sum(seen.values()), max(seen.values(), default=0)


def estimate_step_bytes(model: nn.Module, input_shape: tuple[int, ...], batch_size: int, *,
                        optimizer: str = "adam", unrolled: bool = False, augment: bool = False,
                        channels_last: bool = True, probe_voxels: int = PROBE_VOXELS) -> StepEstimate:
    """Bytes of one step of ``model`` at ``batch_size`` on ``(C, D, H, W)`` inputs.

    Args:
        optimizer: the weight optimiser (adam, adamw or sgd), for its state.
        unrolled: the search's unrolled objective (a backup of the weights and two more
            weight-sized gradient lists).
        augment: a searched augmentation policy is part of the graph (its intermediates
            are saved for the augmentation logits' gradient).
        probe_voxels: size of the measured forward; activations scale by voxels from it.
    """
    if optimizer not in OPTIMIZER_STATE:
        raise ValueError(f"unknown optimizer {optimizer!r}; known: {', '.join(OPTIMIZER_STATE)}")
    if len(input_shape) != 4 or batch_size < 1:
        raise ValueError(f"expected an input (C, D, H, W) and batch >= 1, got {input_shape}, "
                         f"batch {batch_size}")
    weights = [p for p in model.parameters() if p.requires_grad]
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = sum(p.numel() * p.element_size() for p in weights)
    copies = 1 + OPTIMIZER_STATE[optimizer] + (3 if unrolled else 0)
    probe = probe_shape(tuple(input_shape), probe_voxels)
    probe_batch = 2  # BatchNorm in train mode needs two values per channel at 1x1x1
    saved, largest = measure_activations(model, probe, augment=augment,
                                         channels_last=channels_last, batch_size=probe_batch)
    scale = batch_size / probe_batch * math.prod(input_shape) / math.prod(probe)
    workspace = max(WORKSPACE_SHARE * saved, WORKSPACE_LARGEST * largest)
    return StepEstimate(params, copies * trainable, int(saved * scale), int(workspace * scale),
                        batch_size, tuple(input_shape))


# ---- what the machine has --------------------------------------------------------------


def available_bytes(meminfo: Path = Path("/proc/meminfo")) -> int:
    """Memory a new allocation can get without swapping: MemAvailable, else free pages."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def device_available_bytes(device: torch.device) -> int:
    """Free memory of ``device``: the GPU's free memory on CUDA, else the host's."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return available_bytes()


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape[1:])


def check_fits(estimate: StepEstimate, available: int, what: str, hint: str = "", *,
               flags: SizeFlags = TRAIN_FLAGS, reserve: int = DEFAULT_RESERVE) -> None:
    """Raise ``ValueError`` when ``estimate`` plus ``reserve`` exceeds ``HEADROOM`` of
    ``available`` bytes; the message names a batch size and an input size that fit, then
    ``hint`` (a sentence, e.g. another setting that lowers the need)."""
    budget = int(available * HEADROOM) - reserve
    if estimate.total <= budget:
        return
    def resize(shape: tuple[int, ...]) -> list[str]:
        _, d, h, w = shape
        return ([f"{flags.slices} {d}"] if d != estimate.input_shape[1] else []) + (
            [f"{flags.size} {h}x{w}"] if (h, w) != tuple(estimate.input_shape[2:]) else [])

    fits = []
    b = estimate.largest_batch(budget)
    if b >= 1:
        fits.append(f"{flags.batch} {b}")
    shape = estimate.largest_input(budget)
    if shape is not None:
        fits.append(" ".join(resize(shape)))
    small = estimate.largest_input(budget, 1)
    if b < 1 and shape is None and small is not None:
        fits.append(" ".join([f"{flags.batch} 1", *resize(small)]))
    settings = " or ".join(f for f in fits if f) or "none (even batch 1 at 8x32x32 does not fit)"
    raise ValueError(
        f"{what} needs about {estimate.total / GB:.1f} GB per step at batch "
        f"{estimate.batch_size}, input {_shape(estimate.input_shape)} "
        f"({estimate.describe()}), plus {reserve / GB:.1f} GB for data and the process; "
        f"this machine has {available / GB:.1f} GB available. Settings that fit: {settings}."
        + (f" {hint}" if hint else ""))


def check_run_memory(model: nn.Module, input_shape: tuple[int, ...], batch_size: int, *,
                     unrolled: bool, augment: bool, device: torch.device,
                     optimizer: str = "adam", channels_last: bool = True,
                     flags: SizeFlags = TRAIN_FLAGS, what: str = "this run", hint: str = "",
                     available: Callable[[torch.device], int] = device_available_bytes,
                     ) -> StepEstimate:
    """Refuse a run whose step would not fit in the memory of ``device``; returns the estimate.

    The probe runs where ``model`` is (normally the CPU, before the trainer moves it); on
    CUDA this is an upper bound of a bf16-autocast step.
    """
    est = estimate_step_bytes(model, input_shape, batch_size, optimizer=optimizer,
                              unrolled=unrolled, augment=augment, channels_last=channels_last)
    check_fits(est, available(device), what, hint, flags=flags)
    return est
