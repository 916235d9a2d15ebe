"""Cost of the searchable augmentation layers inside a joint (MedPipe) search step.

For random augmentation samples (candidates drawn by the search's own sampler from uniform
logits, so on average half the types fire) measures in one run, on a fixed supernet path:
  aug          the 13 searchable augmentation layers on one batch, forward and backward
               of their logits' gradient;
  weight step  augmentation + forward + backward + Adam of the supernet's weights;
  clean step   the same weight step without augmentation;
  arch step    augmentation + forward + backward to architecture and augmentation logits
               (the paper's objective; the unrolled one adds a virtual weight step).
and prints the augmentation layers' share of each step, then each type's own cost.

    python benchmarks/bench_augment.py [--input 28x28x28] [--batch 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from volnas.data.augment import AUG_TYPES
from volnas.models.spaces import REFERENCE_STRIDES
from volnas.search.augment_search import AugmentSearch
from volnas.search.supernet import SuperNet


def median_time(step: Callable[[], None], repeats: int) -> float:
    step()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", default="28x28x28", help="DxHxW of the search input")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shape = tuple(int(s) for s in args.input.split("x"))
    torch.manual_seed(0)

    net = SuperNet("medpipe", 1, 2)
    # the paper's strides, k3e3 in every searchable layer: a typical mid-size path
    path = [0] * len(net.alpha)
    for r, s in zip(net._stride_rows, REFERENCE_STRIDES, strict=True):
        path[r] = 1 if s == 2 else 0
    net.fixed_path = path
    net = net.train().to(memory_format=torch.channels_last_3d)
    aug = AugmentSearch()
    opt = torch.optim.Adam(net.weight_parameters(), lr=3e-4)
    x = torch.rand(args.batch, 1, *shape).contiguous(memory_format=torch.channels_last_3d)
    y = torch.randint(0, 2, (args.batch,))
    gen = torch.Generator().manual_seed(0)

    def aug_only() -> None:
        out = aug(x, gen)
        grads = torch.autograd.grad(out.sum(), aug.arch_parameters(), allow_unused=True)
        del grads

    def weight_step(augment: bool) -> Callable[[], None]:
        def step() -> None:
            opt.zero_grad(set_to_none=True)
            xb = aug(x, gen) if augment else x
            F.cross_entropy(net(xb.contiguous(memory_format=torch.channels_last_3d)), y).backward()
            opt.step()
        return step

    def arch_step() -> None:
        xb = aug(x, gen)
        loss = F.cross_entropy(net(xb.contiguous(memory_format=torch.channels_last_3d)), y)
        torch.autograd.grad(loss, [*net.arch_parameters(), *aug.arch_parameters()],
                            allow_unused=True)

    aug.arch_parameters = lambda: list(aug.alpha.parameters())  # type: ignore[method-assign]
    t_aug = median_time(aug_only, args.repeats)
    t_weight = median_time(weight_step(True), args.repeats)
    t_clean = median_time(weight_step(False), args.repeats)
    t_arch = median_time(arch_step, args.repeats)

    console = Console()
    table = Table(title=f"augmentation layers in a medpipe search step: batch {args.batch} x "
                        f"{args.input}, {args.threads} threads, median of {args.repeats}")
    for col in ("step", "ms", "augmentation share"):
        table.add_column(col, justify="left" if col == "step" else "right")
    table.add_row("augmentation layers (fwd + logit grad)", f"{t_aug * 1e3:.1f}", "")
    table.add_row("weight step, clean", f"{t_clean * 1e3:.1f}", "")
    table.add_row("weight step, augmented", f"{t_weight * 1e3:.1f}",
                  f"{t_aug / t_weight:.1%} (measured difference {(t_weight - t_clean) / t_weight:.1%})")
    table.add_row("arch step (paper objective)", f"{t_arch * 1e3:.1f}", f"{t_aug / t_arch:.1%}")
    bilevel = t_weight + t_arch
    table.add_row("search step (weight + arch)", f"{bilevel * 1e3:.1f}", f"{2 * t_aug / bilevel:.1%}")
    console.print(table)

    per = Table(title="each type at its middle magnitude, p = 1 (forward only)")
    per.add_column("type")
    per.add_column("ms", justify="right")
    for name, t in AUG_TYPES.items():
        m = t.magnitudes[len(t.magnitudes) // 2]
        per.add_row(name, f"{median_time(lambda t=t, m=m: t.apply(x, m, 1.0, gen), args.repeats) * 1e3:.1f}")
    console.print(per)


if __name__ == "__main__":
    main()
