"""How much of its ``--time-budget`` each run used: a table over finished run folders.

For a training run (``volnas train --time-budget``) the time used is ``run_seconds`` of its
metrics.json (the process's wall time from the start of the run to the end of the test
pass; Python's start-up before it is not counted); for a search, the stages' wall times in
``search/budget.json`` (set-up included). The final training's epochs are shown as run /
planned, with the batches of a cut last epoch, and the first plan's epoch estimate
against the measured epoch.

    python benchmarks/budget_use.py runs/resnet-s0 runs/evo-s0 ... [--within 0.10]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def budget_row(run: Path) -> dict[str, Any]:
    """Budget, seconds used and the final training's plan of one run folder."""
    final = run / "final" if (run / "final" / "run.json").is_file() else run
    info, metrics = _read(final / "run.json"), _read(final / "metrics.json")
    with (final / "history.csv").open(newline="") as f:
        history = list(csv.DictReader(f))
    stages = _read(run / "search" / "budget.json")
    if stages:
        budget, used = stages["total_seconds"], sum(stages.get("spent_seconds", {}).values())
        estimate = None
    else:
        record = info.get("time_budget") or {}
        budget, used = record.get("seconds"), metrics.get("run_seconds")
        estimate = record.get("epoch_seconds_estimate")
    plan = info.get("fill_plan") or {}
    epochs = [float(r["seconds"]) for r in history]
    first_cut = (info.get("time_budget") or {}).get("first_epoch_batches")
    last_cut = plan.get("last_epoch_batches")
    if last_cut is None and len(history) == 1:
        last_cut = first_cut  # a cut first epoch that stayed the only one
    return {"run": str(run), "budget": budget, "used": used,
            "share": used / budget if budget and used is not None else None,
            "epochs_run": len(history), "epochs_planned": plan.get("epochs"),
            "last_cut": last_cut, "batches": plan.get("batches_per_epoch"),
            "estimate": estimate, "epoch1": epochs[0] if epochs else None,
            "first_cut": first_cut}


def _batches(n: int, of: int | None) -> str:
    return f"{n} of {of} batches" if of else f"{n} batches"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--within", type=float, default=0.10,
                    help="the share of the budget a run may miss it by (default 0.10)")
    args = ap.parse_args(argv)
    rows = [budget_row(r) for r in args.runs]
    print("| run | budget (s) | used (s) | % of budget | final epochs run / planned | last epoch "
          "| epoch estimate / epoch 1 (s) |")
    print("|---|---|---|---|---|---|---|")
    ok = 0
    for r in rows:
        share = r["share"]
        inside = share is not None and abs(1 - share) <= args.within
        ok += inside
        cut = _batches(r["last_cut"], r["batches"]) if r["last_cut"] else "whole"
        est = (f"{r['estimate']:.0f} / {r['epoch1']:.0f}" if r["estimate"] is not None
               and r["epoch1"] is not None else "-")
        if r["first_cut"] and est != "-":  # the estimate is a whole epoch's
            est += f" ({_batches(r['first_cut'], r['batches'])})"
        print(f"| {r['run']} | {r['budget']:.0f} | "
              + (f"{r['used']:.0f} | {100 * share:.1f}{'' if inside else ' (out)'}"
                 if share is not None else "- | -")
              + f" | {r['epochs_run']} / {r['epochs_planned'] or '-'} | {cut} | {est} |")
    print(f"\n{ok} of {len(rows)} runs within {100 * args.within:.0f} % of their budget")
    return 0


if __name__ == "__main__":
    sys.exit(main())
