"""Copy the finished cells of a `volnas benchmark` folder without their weights.

The copy keeps every cell's configuration, metrics, predictions, logs, genotypes and
plots (what the report and a reviewer need), and leaves out `*.safetensors` and
`checkpoint/` folders (hundreds of MB per cell). Unfinished cells are left out whole, so
running the benchmark command on the copy later runs them from scratch and reads the
copied cells as done.

    python benchmarks/publish_cells.py runs/adrenal28 docs/results/adrenal28
    volnas benchmark ... --out docs/results/adrenal28 --report-only   # the report over the copy
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from volnas.core.files import LOCK_NAME

DONE = ("metrics.json", "result.json")  # a training cell / a search cell is finished


def publish(src: Path, dst: Path) -> list[Path]:
    """Copy finished cells ``src/runs/<name>/seed<k>`` to ``dst``; returns the cells copied."""
    copied = []
    for cell in sorted(src.glob("runs/*/seed*")):
        if not any((cell / name).is_file() for name in DONE):
            continue
        target = dst / cell.relative_to(src)
        for f in sorted(cell.rglob("*")):
            rel = f.relative_to(cell)
            if (not f.is_file() or f.suffix == ".safetensors" or "checkpoint" in rel.parts
                    or f.name == LOCK_NAME):
                continue
            out = target / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, out)
        copied.append(target)
    return copied


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit(__doc__)
    for cell in publish(Path(argv[0]), Path(argv[1])):
        print(cell)


if __name__ == "__main__":
    main(sys.argv[1:])
