"""Compare augmentation-search variants from their `volnas benchmark` folders (markdown).

Each folder is a finished benchmark with a search (e.g. ``--search medpipe``) run under
a different ``--config`` (``augment_search: "off"``, the paper objective, the unrolled
one); ``FOLDER#SPACE`` picks one search of a benchmark that ran several. Prints one table (test metrics mean ± std over seeds, search wall time, expected
augmentation strength of the found policies) and every seed's policy as MedPipe Fig. 5
triplets (type; magnitude; probability), probability 0 omitted.

    python benchmarks/report_augment_search.py off=runs/aug4/medpipe-off \\
        paper=runs/aug4/search#medpipe unrolled=runs/aug4/medpipe-unrolled
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def mean_std(values: list[float], digits: int = 3) -> str:
    v = [x for x in values if x is not None]
    if not v:
        return "n/a"
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{np.mean(v):.{digits}f} ± {float(np.std(v, ddof=1)):.{digits}f}"


def triplets(policy: list | None) -> str:
    if not policy:
        return "(no augmentation layers)"
    ops = [op for op in policy if float(op[2] if isinstance(op, list) else op["p"]) > 0]
    if not ops:
        return "(every type at probability 0: no augmentation)"
    out = []
    for op in ops:
        name, mag, p = (op if isinstance(op, list) else (op["type"], op["magnitude"], op["p"]))
        out.append(f"({name}; {mag}; {p})")
    return ", ".join(out)


def main(argv: list[str]) -> None:
    variants = [a.split("=", 1) for a in argv]
    if not variants or any(len(v) != 2 for v in variants):
        raise SystemExit(__doc__)
    lines = ["| variant | seeds | ACC | F1 | F1 (weighted) | AUC | mean p over the 13 types | search wall time (min) | total incl. probes + retrain (min) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    policies: list[str] = []
    for name, folder in variants:
        folder, _, space = folder.partition("#")
        report = json.loads((Path(folder) / "report.json").read_text())
        rows = [r for r in report["rows"] if r["kind"] == "search" and space in ("", r["name"])]
        if len(rows) != 1:
            found = [r["name"] for r in report["rows"] if r["kind"] == "search"]
            raise SystemExit(f"{folder}: expected one search{' ' + space if space else ''}, "
                             f"found {found or 'none'}; use FOLDER#SPACE")
        (row,) = rows
        runs = row["runs"]
        strengths = []
        for run in runs:
            result = json.loads((Path(run["dir"]) / "result.json").read_text())
            pol = result.get("policy")
            if pol:
                ps = [float(op[2] if isinstance(op, list) else op["p"]) for op in pol]
                strengths.append(float(np.mean(ps)))
            policies.append(f"- {name}, seed {run['seed']}: {triplets(pol)}")
        lines.append("| " + " | ".join([
            name, str(len(runs)),
            mean_std([r["accuracy"] for r in runs]), mean_std([r["f1"] for r in runs]),
            mean_std([r.get("f1_weighted") for r in runs]), mean_std([r["auc"] for r in runs]),
            mean_std(strengths, 2) if strengths else "-",
            mean_std([r["seconds"] / 60 for r in runs], 1),
            mean_std([r["total_seconds"] / 60 for r in runs], 1)]) + " |")
    print("\n".join(lines))
    print("\nPolicies found (argmax of each augmentation layer at the end of the search):\n")
    print("\n".join(policies))


if __name__ == "__main__":
    main(sys.argv[1:])
