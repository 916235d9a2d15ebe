"""CPU inference cost of the networks of finished runs, measured in one process: parameters,
GFLOPs and milliseconds per scan (batch 1, median of cold-cache repeats, channels_last_3d
as `volnas predict` runs them), with each network's time as a ratio of the first name's.

    python benchmarks/bench_run_latency.py resnet3d_18=RUN_A random=RUN_B1,RUN_B2 \
        [--threads 1] [--repeats 7] [--out latency.md]

A run is a training run folder or a search folder (its ``final/`` is used). Time it on an
otherwise idle machine: other jobs on the same cores inflate every row.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from volnas.models.latency import time_forward
from volnas.models.profile import count_flops, count_params
from volnas.training.config import load_saved_config
from volnas.training.rundir import build_model


def load_network(folder: Path) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """The (untrained) network of a run and its input shape (C, D, H, W); weights do not
    change the time."""
    if (folder / "final" / "config.yaml").is_file():
        folder = folder / "final"
    cfg = load_saved_config(folder / "config.yaml")
    return build_model(cfg.model, 2, folder), tuple(cfg.preprocess.input_shape)


def network_ms(folder: Path, repeats: int = 7) -> tuple[float, float, float]:
    """(ms per scan, params in M, GFLOPs per scan) of a run's network: batch 1,
    channels_last_3d, median of cold-cache repeats, on torch's current thread count."""
    net, shape = load_network(folder)
    net = net.eval().to(memory_format=torch.channels_last_3d)
    x = torch.randn(1, *shape).to(memory_format=torch.channels_last_3d)
    return (time_forward(net, x, repeats=repeats) * 1e3, count_params(net) / 1e6,
            count_flops(net, shape) / 1e9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="NAME=RUN[,RUN...]")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for item in args.runs:
        name, _, folders = item.partition("=")
        ms, params, flops = [], [], []
        for f in folders.split(","):
            t, p, fl = network_ms(Path(f), args.repeats)
            ms.append(t)
            params.append(p)
            flops.append(fl)
        rows.append((name, len(ms), statistics.mean(params), statistics.mean(flops),
                     statistics.mean(ms), statistics.stdev(ms) if len(ms) > 1 else 0.0))
    base = rows[0][4]
    lines = [f"CPU latency per scan, batch 1, {args.threads} thread(s), torch {torch.__version__}",
             "", "| network | runs | params (M) | GFLOPs / scan | ms / scan | x first |",
             "|---|---|---|---|---|---|"]
    for name, n, p, fl, m, sd in rows:
        lines.append(f"| {name} | {n} | {p:.2f} | {fl:.3f} | {m:.1f} +- {sd:.1f} | {m / base:.2f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
