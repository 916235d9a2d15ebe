"""Training and inference throughput of the baseline models.

Usage::

    python benchmarks/bench_models.py [--models a,b] [--batch 2] [--repeats 3] [--all]
        [--threads N]

For each model and each input size, one train step is forward + backward + Adam step with
model and batch in ``channels_last_3d``; the first step (warm-up) is not timed and the
median of ``--repeats`` steps is reported as scans/s. Inference is the same batch under
``torch.inference_mode`` in eval mode. The last column is the speed-up of channels_last_3d
over contiguous tensors for the train step at the first input size, measured on two copies
of the model with their steps interleaved. Other processes on the machine skew the figures:
the 1-minute load average is printed with each row. With one of two cores busy elsewhere,
a 2-thread step ran 9x slower than a 1-thread one (ResNet3D-18: 4.3 s vs 0.46 s); use
``--threads 1`` on a shared machine. ResNet3D-101 is left out unless named or ``--all``
is given (it dominates the run time).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from collections.abc import Callable

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from volnas.models import count_flops, count_params, create_model, list_models

SHAPES: tuple[tuple[int, int, int], ...] = ((32, 64, 64), (28, 28, 28))
SLOW = {"resnet3d_101"}
NUM_CLASSES = 2


def _load() -> str:
    """1-minute load average: above the thread count, other work skewed the timings."""
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "n/a"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(
    fns: list[Callable[[], None]], repeats: int, device: torch.device
) -> list[float]:
    """Median seconds of each function; calls are interleaved so load from other processes
    hits all of them alike. Each function runs once untimed first (warm-up)."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times, strict=True):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            ts.append(time.perf_counter() - start)
    return [statistics.median(ts) for ts in times]


def train_step_fn(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, memory_format: torch.memory_format
) -> Callable[[], None]:
    """Forward + backward + Adam step on one batch, model and batch in ``memory_format``."""
    model.train().to(memory_format=memory_format)
    x = x.contiguous(memory_format=memory_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()

    return step


def inference_fn(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """One eval-mode forward pass in channels_last_3d."""
    model.eval().to(memory_format=torch.channels_last_3d)
    x = x.contiguous(memory_format=torch.channels_last_3d)

    def forward() -> None:
        with torch.inference_mode():
            model(x)

    return forward


def bench_model(name: str, batch: int, repeats: int, device: torch.device) -> dict[str, float]:
    """Params, GFLOPs per scan and throughputs (scans/s) of one registered model."""
    torch.manual_seed(0)
    model = create_model(name, in_channels=1, num_classes=NUM_CLASSES).to(device)
    y = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    row: dict[str, float] = {
        "params_m": count_params(model) / 1e6,
        "gflops": count_flops(model, (1, *SHAPES[0])) / 1e9,
    }
    for i, shape in enumerate(SHAPES):
        x = torch.randn(batch, 1, *shape, device=device)
        fns = [train_step_fn(model, x, y, torch.channels_last_3d)]
        if i == 0:  # a second copy, trained in contiguous format, for the ratio
            fns.append(train_step_fn(copy.deepcopy(model), x, y, torch.contiguous_format))
        times = median_seconds(fns, repeats, device)
        row[f"train_{i}"] = batch / times[0]
        if i == 0:
            row["cl_speedup"] = times[1] / times[0]
        (t_infer,) = median_seconds([inference_fn(model, x)], repeats, device)
        row[f"infer_{i}"] = batch / t_infer
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help="comma-separated names (default: baselines)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--all", action="store_true", help="include ResNet3D-101")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    if args.models:
        names = [n.strip() for n in args.models.split(",") if n.strip()]
    else:
        names = [n for n in list_models() if args.all or n not in SLOW]
    device = torch.device(args.device)
    console = Console(width=max(Console().width, 120))
    shape_labels = ["x".join(map(str, s)) for s in SHAPES]
    table = Table(
        title=(
            f"Baselines on {device.type} ({torch.get_num_threads()} threads), batch {args.batch}, "
            f"median of {args.repeats}, channels_last_3d; scans/s"
        )
    )
    table.add_column("model")
    table.add_column("params (M)", justify="right")
    table.add_column(f"GFLOPs/scan\n{shape_labels[0]}", justify="right")
    for label in shape_labels:
        table.add_column(f"train\n{label}", justify="right")
        table.add_column(f"infer\n{label}", justify="right")
    table.add_column(f"CL/contig\ntrain {shape_labels[0]}", justify="right")
    table.add_column("load\n(1 min)", justify="right")

    start = time.perf_counter()
    for name in names:
        with console.status(f"benchmarking {name}"):
            r = bench_model(name, args.batch, args.repeats, device)
        table.add_row(
            name,
            f"{r['params_m']:.2f}",
            f"{r['gflops']:.1f}",
            f"{r['train_0']:.2f}",
            f"{r['infer_0']:.2f}",
            f"{r['train_1']:.2f}",
            f"{r['infer_1']:.2f}",
            f"{r['cl_speedup']:.2f}x",
            _load(),
        )
    console.print(table)
    console.print(f"total {time.perf_counter() - start:.0f} s; load average now {_load()}")


if __name__ == "__main__":
    main()
