"""The evaluation stage every search strategy ends with: probe candidate architectures
briefly at the retrain input (validation only), then retrain the best from scratch and test
it once. ``probes/rankNN`` holds each probe's run folder and ``probe.json`` (read back on
resume, never rerun); ``probes.csv`` the table."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from volnas.core.distributed import barrier
from volnas.core.distributed import info as dist_info
from volnas.core.files import atomic_write_text
from volnas.core.markup import esc
from volnas.models.genotype import Genotype
from volnas.search.config import SearchConfig
from volnas.training.config import TrainConfig
from volnas.training.metrics import select_metric
from volnas.training.run import run_training


def retrain_config(cfg: SearchConfig, model: str, epochs: int) -> TrainConfig:
    """The TrainConfig of a probe or of the final retrain (full resolution)."""
    base = {k: getattr(cfg, k) for k in TrainConfig.model_fields}
    base.update({"model": model, "epochs": epochs, "time_budget": None,  # stages: search.budget
                 "last_epoch_batches": None})
    return TrainConfig.model_validate(base)


def candidate_genotype(cand: dict[str, Any], k: int, cfg: SearchConfig) -> Genotype:
    """A recorded architecture with the augmentation policy found beside it, if any."""
    geno = Genotype.from_string(cand["genotype"], num_classes=k,
                                input_shape=cfg.preprocess.input_shape)
    if cand.get("policy_json"):
        geno.extra["augment_policy"] = json.loads(cand["policy_json"])
    return geno


def probe_candidates(
    cfg: SearchConfig, candidates: list[dict[str, Any]], run_dir: Path, k: int, console: Console,
    *, deadline: float | None = None,
) -> list[dict[str, Any]]:
    """Train each candidate for ``probe_epochs`` at the retrain input; score it on validation.

    A candidate holds ``genotype``, ``params``, optionally ``policy_json``, and in ``record``
    what its strategy reports beside the probe (search epoch and score, or draw number).
    With ``deadline`` (``time.time()``), no probe is started that would end after it by the
    mean time of the probes this process ran (the first always runs).
    """
    probes = []
    times: list[float] = []
    for rank, cand in enumerate(candidates, start=1):
        pdir = run_dir / "probes" / f"rank{rank:02d}"
        result_file = pdir / "probe.json"
        if result_file.exists():
            probes.append(json.loads(result_file.read_text()))
            continue
        mean = sum(times) / len(times) if times else 0.0
        if deadline is not None and probes and time.time() + mean > deadline:
            console.print(f"time budget: probed {len(probes)} of {len(candidates)} architectures")
            break
        t0 = time.time()
        geno = candidate_genotype(cand, k, cfg)
        geno_file = run_dir / "probes" / f"rank{rank:02d}_candidate.json"
        if dist_info().is_main:
            geno.save(geno_file)
        barrier()
        pcfg = retrain_config(cfg, "genotype:" + str(geno_file), cfg.probe_epochs)
        record = dict(cand.get("record", {}))
        where = ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in record.items()
                          if not isinstance(value, float))
        console.print(f"[bold]probe {rank}/{len(candidates)}[/] {esc(geno)}"
                      + (f" ({esc(where)})" if where else ""))
        best = run_training(pcfg, pdir, resume=(pdir / "config.yaml").exists(), console=console,
                            test=False)
        rec = {"rank": rank, **record, "genotype": geno.to_string(),
               "policy_json": cand.get("policy_json") or "",
               "probe_score": select_metric(best, cfg.select_metric),
               "probe_val": {m: best.get(m) for m in ("accuracy", "f1", "auc", "loss")},
               "params": int(cand["params"])}
        if dist_info().is_main:
            atomic_write_text(result_file, json.dumps(rec, indent=2))
        probes.append(rec)
        times.append(time.time() - t0)
    if dist_info().is_main:
        write_probe_table(run_dir / "probes.csv", probes)
    return probes


def best_probe(probes: list[dict[str, Any]]) -> dict[str, Any]:
    """The probe with the best validation score (the first of equals)."""
    return max(probes, key=lambda p: p["probe_score"])


ENSEMBLE_DIR = "ensemble"


def retrain_ensemble(
    cfg: SearchConfig, probes: list[dict[str, Any]], run_dir: Path, k: int, console: Console,
    *, resume: bool,
) -> list[str]:
    """Retrain the 2nd to ``cfg.ensemble``-th best probes from scratch (the best is
    ``final/``) into ``ensemble/memberNN`` (NN = its place, 02...), each tested once like
    the final retrain. Returns the members' folders relative to ``run_dir``, ``final``
    first; just ``["final"]`` when ``cfg.ensemble`` is 1 or only one architecture was
    probed. The order is the probes' validation score (the first of equals first, as
    :func:`best_probe`)."""
    ranked = sorted(probes, key=lambda p: -p["probe_score"])  # stable: the first of equals
    members = ["final"]
    if cfg.ensemble > 1 and len(ranked) < cfg.ensemble:
        console.print(f"[bold yellow]note:[/] --ensemble {cfg.ensemble} but {len(ranked)} "
                      "distinct architecture(s) were probed; the ensemble has "
                      f"{len(ranked)} member(s)")
    for place, probe in enumerate(ranked[1:cfg.ensemble], start=2):
        folder = run_dir / ENSEMBLE_DIR
        geno_file = folder / f"member{place:02d}.json"
        if dist_info().is_main:
            folder.mkdir(parents=True, exist_ok=True)
            candidate_genotype(probe, k, cfg).save(geno_file)
        barrier()
        mdir = folder / f"member{place:02d}"
        console.print(f"[bold]ensemble member {place}/{cfg.ensemble}[/] (probe {probe['rank']}, "
                      f"{cfg.select_metric} {probe['probe_score']:.4f})")
        mcfg = retrain_config(cfg, "genotype:" + str(geno_file), cfg.retrain_epochs)
        run_training(mcfg, mdir, resume=resume and (mdir / "config.yaml").exists(),
                     console=console)
        members.append(str(mdir.relative_to(run_dir)))
    return members


def write_probe_table(path: Path, probes: list[dict[str, Any]]) -> None:
    """probes.csv: rank, the strategy's own columns, probe score, parameters, genotype."""
    own = [k for k in probes[0] if k not in ("rank", "genotype", "policy_json", "probe_score",
                                             "probe_val", "params")] if probes else []
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["rank", *own, "probe_score", "params", "genotype"])
    for p in probes:
        w.writerow([p["rank"], *[f"{p[k]:.4f}" if isinstance(p[k], float) else p[k] for k in own],
                    f"{p['probe_score']:.4f}", p["params"], p["genotype"]])
    atomic_write_text(path, buf.getvalue())
