"""Compare two settings of a random search on the same architectures: the probes of two
searches that drew the same networks (same seed, space and cost filter; they may differ in
anything the draws do not depend on, e.g. ``--stride-rule`` or ``--fit-strides``), paired
draw by draw. Validation side only: the probes are what a search chooses on.

    python benchmarks/paired_probes.py end=RUN_A0,RUN_A1,RUN_A2 cell1=RUN_B0,RUN_B1,RUN_B2

The i-th folder of the first setting is paired with the i-th of the second (one seed each).
Prints per seed and over all pairs: mean probe score of each setting, the mean difference
(second - first) with a 95 % bootstrap interval over the pairs, and how many pairs the
second setting wins.
"""

from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path

import numpy as np

from volnas.training.metrics import resample_weights

# The fixed (calibration) layers' strides are what such settings change; the searchable
# choices must be the same for a pair to be one architecture.
_FIXED_OP = re.compile(r"(conv|pw)_s[0-9x]+")


def choices(genotype: str) -> str:
    """The searchable choices of a genotype string, with the fixed layers' strides removed."""
    return _FIXED_OP.sub("", genotype)


def read_probes(run: Path) -> dict[int, tuple[float, str]]:
    """draw -> (probe score, genotype) of a random search folder's probes.csv."""
    path = run / "probes.csv"
    if not path.is_file():
        raise SystemExit(f"{path}: not found (is {run} a random search?)")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "draw" not in rows[0]:
        raise SystemExit(f"{path}: no 'draw' column (only a random search's probes pair up)")
    return {int(r["draw"]): (float(r["probe_score"]), r["genotype"]) for r in rows}


def pair(run_a: Path, run_b: Path) -> list[tuple[int, float, float]]:
    """(draw, score A, score B) for the draws both searches probed; refuses other networks."""
    a, b = read_probes(run_a), read_probes(run_b)
    out = []
    for draw in sorted(set(a) & set(b)):
        if choices(a[draw][1]) != choices(b[draw][1]):
            raise SystemExit(f"draw {draw}: {run_a} and {run_b} drew different networks "
                             f"({a[draw][1]} vs {b[draw][1]}); were seed and space the same?")
        out.append((draw, a[draw][0], b[draw][0]))
    if not out:
        raise SystemExit(f"{run_a} and {run_b}: no draw probed by both")
    return out


def summarise(diffs: np.ndarray, seed: int = 0, n_boot: int = 10000) -> tuple[float, float, float]:
    """Mean difference and its 95 % bootstrap interval over the pairs (pairs resampled)."""
    boots = resample_weights(None, len(diffs), n_boot, seed) @ diffs / len(diffs)
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return float(diffs.mean()), float(lo), float(hi)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("settings", nargs=2, metavar="NAME=RUN[,RUN...]")
    args = p.parse_args(argv)
    (name_a, runs_a), (name_b, runs_b) = (s.split("=", 1) for s in args.settings)
    dirs_a = [Path(r) for r in runs_a.split(",")]
    dirs_b = [Path(r) for r in runs_b.split(",")]
    if len(dirs_a) != len(dirs_b):
        raise SystemExit(f"{name_a} has {len(dirs_a)} folders, {name_b} {len(dirs_b)}")
    print(f"| seed pair | draws | {name_a} probe (mean) | {name_b} probe (mean) "
          f"| {name_b} - {name_a} (95 % CI) | {name_b} higher |")
    print("|---|---|---|---|---|---|")
    every, best = [], []
    for i, (ra, rb) in enumerate(zip(dirs_a, dirs_b, strict=True)):
        rows = pair(ra, rb)
        every += rows
        best.append(f"{max(r[1] for r in rows):.3f} -> {max(r[2] for r in rows):.3f}")
        sa, sb = np.array([r[1] for r in rows]), np.array([r[2] for r in rows])
        m, lo, hi = summarise(sb - sa)
        print(f"| {i} | {len(rows)} | {sa.mean():.3f} | {sb.mean():.3f} | "
              f"{m:+.3f} ({lo:+.3f} to {hi:+.3f}) | {int((sb > sa).sum())} of {len(rows)} |")
    sa, sb = np.array([r[1] for r in every]), np.array([r[2] for r in every])
    m, lo, hi = summarise(sb - sa)
    print(f"| all | {len(every)} | {sa.mean():.3f} | {sb.mean():.3f} | "
          f"{m:+.3f} ({lo:+.3f} to {hi:+.3f}) | {int((sb > sa).sum())} of {len(every)} |")
    print(f"best probe per seed pair ({name_a} -> {name_b}): " + ", ".join(best))


if __name__ == "__main__":
    main()
