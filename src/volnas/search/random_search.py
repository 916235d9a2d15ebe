"""Random search: the baseline every architecture search must beat.

K architectures are drawn uniformly from the space (each searchable layer's candidate
uniformly, independently), under the same cost filter as the differentiable search: the
stride budget always, and ``target_params`` as a hard upper limit when set. Each draw is
probed with the differentiable search's probe recipe (``probe_epochs`` at the retrain
input, validation only), the best probe is retrained from scratch and tested once.

RUN_DIR layout (the differentiable search's contract)::

    search_config.yaml   the resolved SearchConfig (strategy: random)
    search/              draws.json (the drawn genotypes, their parameters), draws.csv (the
                         log: each draw and its probe score), genotypes/draw_NNN.json, done.json
    probes/rankNN/       the probe of draw NN (validation only); probes/rankNN/probe.json its result
    probes.csv           their validation scores
    genotype.json        the chosen architecture
    final/               the retrain from scratch
    result.json          as the differentiable search's, with "strategy": "random"

The draws are a function of the seed, so a resumed search (kill -9 at any point) draws the
same architectures; a finished probe is read back from its probe.json, an interrupted one
or the retrain resumes from its checkpoint.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape

from volnas.core.distributed import barrier
from volnas.core.faults import crash_point
from volnas.core.files import atomic_write_text
from volnas.data.dataset import open_source
from volnas.search.budget import Budget, probe_epoch_seconds
from volnas.search.config import SearchConfig
from volnas.search.evaluation import (
    best_probe,
    candidate_genotype,
    probe_candidates,
    retrain_config,
    retrain_ensemble,
)
from volnas.search.supernet import SuperNet
from volnas.training.budget import fit_epochs
from volnas.training.device import seed_everything
from volnas.training.run import run_training
from volnas.training.rundir import history_seconds

# A draw over target_params * (1 + PARAMS_TOLERANCE) is rejected (when target_params is set).
PARAMS_TOLERANCE = 0.10
RANDOM_STREAM = 4  # the draws' random stream (the search's streams are 1-3)
MAX_TRIES_PER_DRAW = 1000


def draw_paths(
    supernet: SuperNet,
    k: int,
    seed: int,
    *,
    target_params: float | None = None,
    tolerance: float = PARAMS_TOLERANCE,
) -> list[list[int]]:
    """``k`` distinct paths drawn uniformly from ``supernet``'s space, in draw order.

    A draw is rejected when it breaks the stride budget, when ``target_params`` (millions)
    is set and its network has more than ``target_params * (1 + tolerance)`` million
    parameters, or when it repeats an earlier draw. The draws depend only on the space, ``seed``
    and the filter. Raises ValueError when ``k`` acceptable distinct paths are not found.
    """
    sizes = [len(layer.candidates) for layer in supernet.choice_layers]
    rng = np.random.default_rng(np.random.SeedSequence([seed, RANDOM_STREAM]))
    limit = None if target_params is None else target_params * 1e6 * (1 + tolerance)
    out: list[list[int]] = []
    seen: set[tuple[int, ...]] = set()
    rejected = {"stride budget": 0, "parameters": 0, "repeats": 0}
    for _ in range(MAX_TRIES_PER_DRAW * k):
        if len(out) == k:
            break
        path = [int(rng.integers(n)) for n in sizes]
        if tuple(path) in seen:
            rejected["repeats"] += 1
        elif not supernet.feasible(path):
            rejected["stride budget"] += 1
        elif limit is not None and supernet.path_params(path) > limit:
            rejected["parameters"] += 1
        else:
            seen.add(tuple(path))
            out.append(path)
    if len(out) < k:
        target = "" if target_params is None else (
            f" with at most {target_params * (1 + tolerance):.3g} M parameters "
            f"(target_params {target_params:g} + {tolerance:.0%})")
        raise ValueError(
            f"random search: found {len(out)} of {k} distinct architectures of space "
            f"{supernet.space!r}{target} (rejected: "
            + ", ".join(f"{n} {why}" for why, n in rejected.items()) + "); lower "
            "random_samples or raise target_params")
    return out


def draw_genotypes(cfg: SearchConfig, num_classes: int) -> list[dict[str, Any]]:
    """The architectures a random search with ``cfg`` probes: genotype string and parameters."""
    supernet = SuperNet(cfg.space, in_channels=1, num_classes=num_classes,
                        stride_budget=cfg.stride_budget,
                        spatial=cfg.fit_input, stride_rule=cfg.stride_rule)
    paths = draw_paths(supernet, cfg.samples, cfg.seed, target_params=cfg.target_params)
    return [{"draw": i, "genotype": supernet.genotype(p).to_string(),
             "params": supernet.path_params(p)} for i, p in enumerate(paths, start=1)]


def _check_random(cfg: SearchConfig) -> None:
    if cfg.augment_search not in (None, "off"):
        raise ValueError(f"--augment-search {cfg.augment_search}: the random strategy searches "
                         "architectures only (use --strategy differentiable, or "
                         "--augment-search off)")


def _read_draws(path: Path, expected: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The draws a search recorded; they must be the draws its configuration gives."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable ({type(e).__name__}: {e})") from e
    if saved != expected:
        raise ValueError(f"{path}: the recorded draws differ from those of search_config.yaml's "
                         "seed and space (was the file or the code changed since the search "
                         "started?)")
    return saved


def run_random_search(
    cfg: SearchConfig, run_dir: Path, *, resume: bool, console: Console, main: bool
) -> dict[str, Any]:
    """Draw, probe and retrain (see the module docstring); returns result.json's content."""
    _check_random(cfg)
    seed_everything(cfg.seed)
    source = open_source(cfg.data)
    k = len(source.class_names)
    search_dir = run_dir / "search"
    draws_file = search_dir / "draws.json"
    done = search_dir / "done.json"
    t0 = time.perf_counter()
    draws = draw_genotypes(cfg, k)
    seconds = time.perf_counter() - t0
    if draws_file.exists():
        draws = _read_draws(draws_file, draws)
    elif main:
        gdir = search_dir / "genotypes"
        gdir.mkdir(parents=True, exist_ok=True)
        for d in draws:
            candidate_genotype(d, k, cfg).save(gdir / f"draw_{d['draw']:03d}.json")
        atomic_write_text(draws_file, json.dumps(draws, indent=2) + "\n")
    if not done.exists() and main:
        atomic_write_text(done, json.dumps({"seconds": seconds}))
    barrier()
    console.print(f"[bold]random search[/] space {escape(cfg.space)}: {len(draws)} architectures "
                  f"drawn (seed {cfg.seed}"
                  + (f", at most {cfg.target_params * (1 + PARAMS_TOLERANCE):.3g} M parameters"
                     if cfg.target_params else "") + ")")
    crash_point("search.done")

    budget = (Budget(search_dir / "budget.json", cfg.time_budget, "random", write=main)
              if cfg.time_budget else None)
    deadline = budget.start("probes") if budget else None
    probes = probe_candidates(cfg, [d | {"record": {"draw": d["draw"]}} for d in draws],
                              run_dir, k, console, deadline=deadline)
    if budget:
        budget.finish("probes")
    if main:
        _write_log(search_dir / "draws.csv", probes)
    best = best_probe(probes)  # the first draw wins ties
    chosen = candidate_genotype(best, k, cfg)
    if main:
        chosen.save(run_dir / "genotype.json")
    barrier()
    console.print(f"[bold]chosen[/] {escape(str(chosen))} (draw {best['draw']}, probe "
                  f"{cfg.select_metric} {best['probe_score']:.4f})")
    final_cfg = retrain_config(cfg, "genotype:" + str(run_dir / "genotype.json"), cfg.retrain_epochs)
    final_dir = run_dir / "final"
    final_resume = resume and (final_dir / "config.yaml").exists()
    deadline = None
    if budget:
        deadline = budget.start("retrain")
        if not final_resume:  # the retrain's cosine schedule ends with the budget
            final_cfg = final_cfg.model_copy(update={"epochs": fit_epochs(
                probe_epoch_seconds(run_dir, probes, cfg.probe_epochs),
                budget.left("retrain"), cfg.retrain_epochs)})
    metrics = run_training(final_cfg, final_dir, resume=final_resume, console=console,
                           deadline=deadline, fill=cfg.retrain_epochs)
    if budget:
        budget.finish("retrain")
    members = retrain_ensemble(cfg, probes, run_dir, k, console, resume=resume)
    times = _run_seconds(run_dir, float(json.loads(done.read_text())["seconds"]))
    result = {
        "strategy": "random",
        "space": cfg.space,
        "genotype": chosen.to_string(),
        "augment_search": "off",
        "samples": len(draws),
        "target_params": cfg.target_params,
        **times,
        "budget": budget.summary() if budget else None,
        "probes": probes,
        "test": metrics,
        "ensemble_members": members,
    }
    if main:
        atomic_write_text(run_dir / "result.json", json.dumps(result, indent=2))
    return result




def _run_seconds(run_dir: Path, draw_seconds: float) -> dict[str, float | None]:
    """Wall times as result.json reports them: the draws, the probes' and the retrain's epochs."""
    probe_times = [history_seconds(p) for p in sorted((run_dir / "probes").glob("rank*"))
                   if p.is_dir()]
    probes = (None if not probe_times or None in probe_times
              else float(sum(t for t in probe_times if t is not None)))
    retrain = history_seconds(run_dir / "final")
    total = None if probes is None or retrain is None else draw_seconds + probes + retrain
    return {"search_seconds": draw_seconds, "probe_seconds": probes, "retrain_seconds": retrain,
            "total_seconds": total}








def _write_log(path: Path, probes: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["draw", "params", "probe_score", "probe_seconds", "genotype"])
    for p in probes:
        seconds = history_seconds(path.parent.parent / "probes" / f"rank{p['draw']:02d}")
        w.writerow([p["draw"], p["params"], f"{p['probe_score']:.4f}",
                    "" if seconds is None else f"{seconds:.2f}", p["genotype"]])
    atomic_write_text(path, buf.getvalue())
