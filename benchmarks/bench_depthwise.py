"""Training-step time of searched networks on the CPU: PyTorch's own depthwise backward
against volnas' (``volnas.models.mbconv.DepthwiseConv3d``: the input gradient computed as a
forward convolution with the flipped kernel), measured in one process, with the largest
gradient difference between the two.

    python benchmarks/bench_depthwise.py [--input 1x28x28x28] [--batch 16] [--threads 1] \
        [--models genotype:A.json,...]

Without --models: the hand-picked members of covidnet3d-s and medpipe of
``benchmarks/space_ceiling.py`` (strides fitted to the input), written to a temporary folder.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from volnas.models.mbconv import DepthwiseConv3d
from volnas.models.registry import create_model


def step_seconds(name: str, shape: tuple[int, ...], batch: int, native: bool,
                 repeats: int) -> tuple[float, list[torch.Tensor]]:
    """Median seconds of a forward + backward pass (channels_last_3d), and the gradients."""
    torch.manual_seed(0)
    model = create_model(name, in_channels=shape[0], num_classes=2)
    model = model.to(memory_format=torch.channels_last_3d).train()
    original = DepthwiseConv3d.forward
    if native:
        DepthwiseConv3d.forward = nn.Conv3d.forward  # type: ignore[method-assign]
    try:
        x = torch.randn(batch, *shape).to(memory_format=torch.channels_last_3d)
        y = torch.arange(batch) % 2
        times = []
        for i in range(repeats + 1):
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            F.cross_entropy(model(x), y).backward()
            if i:  # the first is a warm-up
                times.append(time.perf_counter() - t0)
    finally:
        DepthwiseConv3d.forward = original  # type: ignore[method-assign]
    return statistics.median(times), [p.grad.clone() for p in model.parameters()
                                      if p.grad is not None]


def ceiling_models(shape: tuple[int, ...], folder: Path) -> list[str]:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from space_ceiling import hand_picked

    names = []
    for space in ("covidnet3d-s", "medpipe"):
        for rule in ("end", "cell1") if space == "covidnet3d-s" else ("end",):
            for label, g in hand_picked(space, 2, shape, rule).items():
                path = folder / f"{space}-{label}-{rule}.json"
                g.save(path)
                names.append(f"genotype:{path}")
    return names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", default="1x28x28x28", help="CxDxHxW [1x28x28x28]")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", default=None, help="comma-separated model names")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shape = tuple(int(v) for v in args.input.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        names = args.models.split(",") if args.models else ceiling_models(shape, Path(tmp))
        print(f"training step (forward + backward), batch {args.batch}, input {args.input}, "
              f"{args.threads} thread(s), median of {args.repeats}")
        print("| network | native (ms) | volnas (ms) | speed-up | max gradient difference |")
        print("|---|---|---|---|---|")
        for name in names:
            t_native, g_native = step_seconds(name, shape, args.batch, True, args.repeats)
            t_ours, g_ours = step_seconds(name, shape, args.batch, False, args.repeats)
            diff = max(((a - b).abs().max() / a.abs().max().clamp_min(1e-12)).item()
                       for a, b in zip(g_native, g_ours, strict=True))
            label = Path(name.removeprefix("genotype:")).stem
            print(f"| {label} | {t_native * 1e3:.0f} | {t_ours * 1e3:.0f} | "
                  f"{t_native / t_ours:.2f}x | {diff:.1e} (relative) |")


if __name__ == "__main__":
    main()
