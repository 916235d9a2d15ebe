"""Faithfulness of CAM and Grad-CAM: pointing game and lesion energy against a uniform map.

Reads finished run folders trained on synthetic data with lesion masks (``volnas demo``
makes one: ``baseline/`` and ``search/final/``), explains every positive test scan for the
positive class with each method / target layer, and prints a table:

    hit rate       fraction of scans whose map maximum lies inside the lesion mask
                   (a plateau of equal maxima counts the fraction of it inside);
    energy         fraction of the map's sum inside lesions;
    uniform        both figures for a uniform map (= lesion volume fraction);
    map            the map's D x H x W at the target layer, before upsampling.

    python benchmarks/bench_explain.py volnas_demo/demo-001 [--layers baseline=layer1,layer2]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from volnas.data.manifest import read_manifest
from volnas.explain.api import explain_scans
from volnas.explain.faithfulness import summarize


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("demo", type=Path, help="a volnas demo folder (manifest.csv, data/, runs)")
    ap.add_argument("--layers", action="append", default=[],
                    help="RUN=LAYER[,LAYER]: extra Grad-CAM target layers of a run "
                         "(RUN: baseline or searched)")
    ap.add_argument("--class", dest="target", default="covid")
    args = ap.parse_args()
    root: Path = args.demo
    manifest, masks = root / "manifest.csv", root / "data"
    runs = {"baseline": root / "baseline", "searched": root / "search" / "final"}
    runs = {k: v for k, v in runs.items() if (v / "metrics.json").is_file()}
    extra: dict[str, list[str]] = {}
    for item in args.layers:
        name, _, layers = item.partition("=")
        extra.setdefault(name, []).extend(filter(None, layers.split(",")))
    rows = [r for r in read_manifest(manifest) if r.split == "test" and r.label == args.target]
    scans = [f"{manifest}#{r.scan_id}" for r in rows]

    table = Table(title=f"CAM / Grad-CAM faithfulness on {len(scans)} positive test scans of "
                        f"{root} (map for {args.target!r})")
    for col in ("run", "method", "layer", "map", "hit rate", "energy", "uniform", "energy / uniform"):
        table.add_column(col, justify="left" if col in ("run", "method", "layer") else "right")
    with tempfile.TemporaryDirectory() as tmp:
        for name, run in runs.items():
            configs = [("cam", None), ("gradcam", None)] + [("gradcam", la) for la in extra.get(name, [])]
            for k, (method, layer) in enumerate(configs):
                res = explain_scans(run, scans, Path(tmp) / f"{name}-{k}", method=method,
                                    target_class=args.target, masks=masks, target_layer=layer,
                                    montage_count=4, console=Console(quiet=True))
                s = summarize([r["faithfulness"] for r in res if r.get("faithfulness")])
                shape = "x".join(map(str, res[0]["map_resolution"]))
                table.add_row(name, method, res[0]["target_layer"], shape, f"{s['hit_rate']:.3f}",
                              f"{s['energy_in_lesion']:.4f}", f"{s['uniform_energy']:.4f}",
                              f"{s['energy_in_lesion'] / max(s['uniform_energy'], 1e-12):.2f}x")
    Console(width=150).print(table)
    accs = {n: np.nan for n in runs}
    for n, run in runs.items():
        import json

        accs[n] = json.loads((run / "metrics.json").read_text())["accuracy"]
    Console().print("test accuracy: " + ", ".join(f"{n} {a:.3f}" for n, a in accs.items()))


if __name__ == "__main__":
    main()
