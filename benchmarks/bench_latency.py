"""How well the per-layer latency table predicts whole networks (volnas.models.latency).

For each space: a fresh table (unless --cache-dir is given), ``--calib`` random networks
to fit the linear correction, then ``--nets`` other random networks (same draw and cost
filter as the random strategy), each predicted from the table (sum of parts, and
calibrated) and measured whole. Prints Spearman and Pearson correlation and the median
absolute error in %, and writes a markdown report.

    python benchmarks/bench_latency.py [--spaces covidnet3d-s,medpipe] [--input 1x28x28x28]
        [--nets 20] [--calib 5] [--threads 1] [--device cpu] [--out docs/results/latency-table.md]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr

from volnas.models.latency import LatencyTable, device_name, time_forward
from volnas.search.random_search import draw_paths
from volnas.search.supernet import SuperNet


def bench_space(space: str, shape: tuple[int, ...], nets: int, calib: int, device: str,
                threads: int, cache: Path, repeats: int, seed: int) -> dict:
    supernet = SuperNet(space, shape[0], 2)
    table = LatencyTable(space, shape, 2, device=device, threads=threads, cache_dir=cache,
                         timer=lambda m, x: time_forward(m, x, repeats=repeats))
    paths = draw_paths(supernet, calib + nets, seed)
    genos = [supernet.genotype(p) for p in paths]
    t0 = time.perf_counter()
    for g in genos:
        table.predict(g.ops, calibrated=False)  # fills the table
    fill = time.perf_counter() - t0
    fit = table.calibrate([(g.ops, g.build()) for g in genos[:calib]])
    table.save()
    rows = []
    for g in genos[calib:]:
        raw = table.predict(g.ops, calibrated=False)
        rows.append((raw, table.predict(g.ops), table.measure_network(g.build())))
    raw, cal, meas = (np.array(c) for c in zip(*rows, strict=True))

    def err(pred: np.ndarray) -> float:
        return float(np.median(np.abs(pred - meas) / meas) * 100)

    return {"space": space, "n": len(rows), "entries": len(table.entries), "fill_s": fill,
            "spearman": float(spearmanr(raw, meas).statistic),
            "pearson": float(pearsonr(raw, meas).statistic),
            "err_raw": err(raw), "err_cal": err(cal), "a": fit["a"], "b": fit["b"],
            "measured_ms": (float(meas.min()), float(np.median(meas)), float(meas.max())),
            "path": str(table.path)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spaces", default="covidnet3d-s,medpipe")
    ap.add_argument("--input", default="1x28x28x28")
    ap.add_argument("--nets", type=int, default=20)
    ap.add_argument("--calib", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default=None, help="keep the table here [a fresh temp dir]")
    ap.add_argument("--out", default=None, help="write a markdown report here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shape = tuple(int(v) for v in args.input.split("x"))
    cache = Path(args.cache_dir) if args.cache_dir else Path(tempfile.mkdtemp(prefix="lat-"))
    results = [bench_space(s, shape, args.nets, args.calib, args.device, args.threads, cache,
                           args.repeats, args.seed) for s in args.spaces.split(",")]
    head = ("| space | nets | table entries | Spearman | Pearson | median abs err, sum of parts "
            "| median abs err, calibrated | fit a, b (ms) | measured min / median / max (ms) |")
    lines = [head, "|" + "---|" * 9]
    for r in results:
        lo, med, hi = r["measured_ms"]
        lines.append(f"| {r['space']} | {r['n']} | {r['entries']} | {r['spearman']:.3f} | "
                     f"{r['pearson']:.3f} | {r['err_raw']:.1f} % | {r['err_cal']:.1f} % | "
                     f"{r['a']:.2f}, {r['b']:.2f} | {lo:.1f} / {med:.1f} / {hi:.1f} |")
    print("\n".join(lines))
    if args.out:
        dev = device_name(torch.device(args.device))
        text = "\n".join([
            "# Latency table: predicted against measured whole-network latency",
            "",
            "Command (from the repository root):",
            "",
            "    " + " ".join(["python", *sys.argv]),
            "",
            f"Machine: {dev}, {args.device}, {args.threads} thread(s), torch {torch.__version__}, "
            f"Python {platform.python_version()}; input {args.input}, batch 1, eval mode, "
            f"median of {args.repeats} runs after 2 warm-up runs.",
            "",
            "The CPU was shared with other jobs while this ran (2 cores, other processes "
            "training): single timings jump by several milliseconds, so the errors below "
            "include that noise as well as the table's own error.",
            "",
            f"For each space: {args.calib} random networks fit the correction "
            "`measured = a * sum + b`; the other networks (random draws of the space under "
            "the random strategy's cost filter) are predicted from the table and measured "
            "whole. Spearman/Pearson compare the sum of parts with the measurement (the "
            "correction is linear, so it does not change them).",
            "",
            *lines,
            "",
            "On CUDA the timer synchronises the device before and after each run; that path "
            "is not measured here (no GPU on this machine).",
            ""])
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    print(f"tables under {cache}; median whole-network latency per space: "
          + ", ".join(f"{r['space']} {statistics.median(r['measured_ms']):.1f} ms" for r in results))


if __name__ == "__main__":
    main()
