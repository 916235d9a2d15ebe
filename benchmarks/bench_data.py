"""Data-loader throughput with and without the preprocessed-stack cache.

Writes a synthetic dataset in each on-disk format (PNG slices, DICOM series, NIfTI), then
times one pass over every scan (read + preprocess + slice sampling) in four ways, in one
run: no cache (decode every epoch), cache cold (first epoch: decode and store), cache warm
from disk (a new process's epoch 2+), cache warm in memory (same process, epoch 2+).
Also times the real JPEG-lossless DICOM series in ../shared/data when present.

    python benchmarks/bench_data.py [--scans 12] [--shape 64x192x192] [--size 128x128]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from volnas.data.cache import StackCache
from volnas.data.index import build_index
from volnas.data.preprocess import PreprocessConfig, prepare_stack, take_slices
from volnas.data.readers import read_scan
from volnas.data.synth import synthesize

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "covid-ct-md" / "normal001"


def one_pass(paths: list[tuple[str, str]], cfg: PreprocessConfig, cache: StackCache | None) -> float:
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    for path, fmt in paths:
        if cache is None:
            stack, _ = prepare_stack(read_scan(path, fmt), cfg)
        else:
            stack, _ = cache.get(path, fmt)
        take_slices(stack, cfg, "random", rng)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scans", type=int, default=12)
    ap.add_argument("--shape", default="64x192x192", help="nominal DxHxW of the synthetic scans")
    ap.add_argument("--size", default="128x128")
    ap.add_argument("--slices", type=int, default=32)
    args = ap.parse_args()
    shape = tuple(int(v) for v in args.shape.split("x"))
    size = tuple(int(v) for v in args.size.split("x"))
    cfg = PreprocessConfig(slices=args.slices, size=size)
    console = Console(width=160)
    table = Table(title=f"one pass over all scans, preprocessing to {args.slices}x{args.size}")
    for col in ("data", "scans", "no cache s/scan", "cold s/scan", "warm disk s/scan",
                "warm memory s/scan", "speed-up (disk)", "speed-up (memory)"):
        table.add_column(col, justify="left" if col == "data" else "right")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sets: list[tuple[str, list[tuple[str, str]]]] = []
        for fmt in ("png", "dicom", "nifti"):
            res = synthesize(root / fmt, scans=args.scans, fmt=fmt, classes=2, shape=shape, seed=0)
            rows = build_index(res.out).rows
            sets.append((f"synthetic {fmt}", [(r.path, r.format) for r in rows]))
        if SHARED.exists():
            sets.append(("real DICOM (JPEG-lossless, 154x512x512)", [(str(SHARED), "dicom")]))
        for name, paths in sets:
            n = len(paths)
            t_none = one_pass(paths, cfg, None)
            cache_dir = root / f"cache-{len(table.rows)}"
            t_cold = one_pass(paths, cfg, StackCache(cfg, cache_dir, memory_limit_mb=0))
            t_disk = one_pass(paths, cfg, StackCache(cfg, cache_dir, memory_limit_mb=0))
            mem = StackCache(cfg, cache_dir)
            one_pass(paths, cfg, mem)
            t_mem = one_pass(paths, cfg, mem)
            table.add_row(name, str(n), f"{t_none / n:.4f}", f"{t_cold / n:.4f}",
                          f"{t_disk / n:.4f}", f"{t_mem / n:.5f}", f"{t_none / t_disk:.1f}x",
                          f"{t_none / t_mem:.0f}x")
    console.print(table)


if __name__ == "__main__":
    main()
