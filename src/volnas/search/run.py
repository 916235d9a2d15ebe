"""``volnas search``: search, then the evaluation stage (probe top-k, retrain the best, test once).

RUN_DIR layout::

    search_config.yaml   the resolved SearchConfig
    search/              halves.json (patients of the weight / architecture halves),
                         search_log.csv, genotypes/epoch_NNN.json, search_probs.png, checkpoint/
    probes/rankNN/       a short training of each top-k architecture (validation only)
    probes.csv           their validation scores
    genotype.json        the chosen architecture
    final/               the retrain from scratch: a normal run folder with metrics.json
    result.json          chosen genotype, probe table, final test metrics, wall times
"""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from volnas.core.distributed import barrier, init_distributed
from volnas.core.faults import crash_point
from volnas.core.files import atomic_write_text, remove_stale_temporaries
from volnas.core.markup import make_console
from volnas.data.cache import StackCache
from volnas.data.dataset import ScanDataset, make_loader, open_source
from volnas.models.genotype import Genotype
from volnas.models.spaces import (
    acts_as,
    degenerate_layers_warning,
    fitted_strides_note,
    layer_specs,
)
from volnas.search.augment_search import AugmentSearch
from volnas.search.budget import Budget, probe_epoch_seconds
from volnas.search.config import SearchConfig
from volnas.search.evaluation import (
    best_probe,
    candidate_genotype,
    probe_candidates,
    retrain_config,
    retrain_ensemble,
)
from volnas.search.sampler import mean_uniform_entropy
from volnas.search.search import PairedLoader, SearchTrainer, search_halves
from volnas.search.supernet import SuperNet
from volnas.training.budget import estimate_epoch_seconds, fit_epochs
from volnas.training.config import load_config, load_saved_config, resume_config
from volnas.training.device import resolve_device, seed_everything
from volnas.training.memory import MEMORY_HINT, SEARCH_FLAGS, check_run_memory
from volnas.training.run import run_training
from volnas.training.rundir import (
    RunDirError,
    check_augment,
    epochs_seconds,
    history_seconds,
    positive_of,
    prepare_run_dir,
    remove_failed_start,
    run_dir_held,
)

# A search whose distributions still hold this fraction of the uniform entropy has not
# chosen: its argmax architecture or policy is close to a random draw from the space.
UNDECIDED_RATIO = 0.95


def load_search_config(path: Path | None, overrides: dict[str, Any]) -> SearchConfig:
    """Defaults <- YAML <- overrides, as for training."""
    return load_config(path, overrides, SearchConfig)


def load_saved_search_config(path: Path) -> SearchConfig:
    """The search_config.yaml of a run folder (settings it predates: see SAVED_BEFORE_FIELD)."""
    return load_saved_config(path, SearchConfig)


def check_search_start(cfg: SearchConfig) -> None:
    """Everything about a new search that can be checked before its folder is made."""
    if not cfg.data:
        raise ValueError("no data: pass --data (or set `data:` in --config)")
    try:
        layer_specs(cfg.space)
    except KeyError as e:
        raise ValueError(e.args[0]) from None
    if cfg.fixed_genotype:
        Genotype.load(cfg.fixed_genotype)  # its errors name the file
    check_augment(cfg.augment)
    if cfg.time_budget is not None and cfg.ensemble > 1:
        raise ValueError("--time-budget with --ensemble > 1: not supported (the budget plans "
                         "one retrain)")
    if cfg.strategy == "evolution":
        from volnas.search.evolution import _check_evolution

        _check_evolution(cfg)


def run_search(
    cfg: SearchConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    given: dict[str, Any] | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Search, probe the top-k, retrain the best from scratch, test once.

    With ``resume`` the search continues its saved configuration (``cfg`` is not used);
    ``given`` holds the settings set at resume, and those that would change the result are
    refused before anything is written. A new search that fails before its first checkpoint
    removes what it made, so the same ``run_dir`` can be retried.
    """
    console = console or make_console()
    run_dir = Path(run_dir)
    main = init_distributed(cfg.device).is_main
    if not main:
        console = make_console(quiet=True)
    existed = run_dir.exists()
    if resume:
        path = run_dir / "search_config.yaml"
        if not path.exists():
            raise RunDirError(f"{run_dir}: nothing to resume (no search_config.yaml)")
        cfg = resume_config(load_saved_search_config(path), given or {}, path)
        with run_dir_held(run_dir):
            if main:
                remove_stale_temporaries(run_dir)
            return _run_search(cfg, run_dir, resume=True, console=console, main=main)
    check_search_start(cfg)
    pre = cfg.search_preprocess()
    if cfg.fit_input and (note := fitted_strides_note(cfg.space, cfg.fit_input, cfg.stride_rule)):
        console.print(escape(note))
    geometry = degenerate_layers_warning(cfg.space, (pre.slices, *pre.size), cfg.fit_strides,
                                         cfg.stride_rule)
    if geometry:
        console.print(f"[bold yellow]warning:[/] {escape(geometry)}")
    prepare_run_dir(run_dir, resume=False)
    with run_dir_held(run_dir):
        prepare_run_dir(run_dir, resume=False)  # still empty now that it is ours
        try:
            if main:
                atomic_write_text(run_dir / "search_config.yaml",
                                  yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
            return _run_search(cfg, run_dir, resume=False, console=console, main=main)
        except Exception:
            started = [run_dir / "search" / "checkpoint" / "last.json",
                       run_dir / "search" / "done.json",  # done.json: a random search's draws
                       run_dir / "search" / "supernet" / "checkpoint" / "last.json"]  # evolution
            if main and not any(p.exists() for p in started):
                remove_failed_start(run_dir, existed)
            raise


def _run_search(
    cfg: SearchConfig, run_dir: Path, *, resume: bool, console: Console, main: bool
) -> dict[str, Any]:
    if cfg.strategy == "random":
        from volnas.search.random_search import run_random_search

        return run_random_search(cfg, run_dir, resume=resume, console=console, main=main)
    if cfg.strategy == "evolution":
        from volnas.search.evolution import run_evolution_search

        return run_evolution_search(cfg, run_dir, resume=resume, console=console, main=main)
    seed_everything(cfg.seed)
    source = open_source(cfg.data)
    positive = positive_of(cfg, source)
    k = len(source.class_names)

    # ---- search ------------------------------------------------------------------------
    scfg = cfg.search_train_config()
    search_dir = run_dir / "search"
    search_dir.mkdir(parents=True, exist_ok=True)
    w_rows, a_rows = search_halves(search_dir, source.split("train"), cfg.seed, write=main)
    cache = StackCache(scfg.preprocess, Path(cfg.cache_dir) if cfg.cache_dir else None)

    def ds(rows: list, train: bool) -> ScanDataset:
        return ScanDataset(rows, source.class_names, scfg.preprocess, train=train, cache=cache,
                           seed=cfg.seed)

    bs = scfg.batch_size
    paired = PairedLoader(
        make_loader(ds(w_rows, True), bs, train=True, num_workers=cfg.num_workers, seed=cfg.seed),
        make_loader(ds(a_rows, True), bs, train=True, num_workers=cfg.num_workers,
                    seed=cfg.seed + 1),
        seed=cfg.seed + 1,
    )
    val_loader = make_loader(ds(source.split("val"), False), bs, train=False,
                             num_workers=cfg.num_workers)
    supernet = SuperNet(cfg.space, in_channels=1, num_classes=k, stride_budget=cfg.stride_budget,
                        spatial=cfg.fit_input, stride_rule=cfg.stride_rule)
    if cfg.memory_check:
        check_run_memory(supernet, scfg.preprocess.input_shape, scfg.batch_size,
                         unrolled=cfg.objective == "unrolled" and cfg.aug_mode != "off",
                         augment=cfg.aug_mode != "off", device=resolve_device(cfg.device),
                         optimizer=cfg.weight_optimizer, channels_last=cfg.channels_last,
                         flags=SEARCH_FLAGS, what="this search (its largest allowed path)",
                         hint="A stride_budget below 2.0 in a --config YAML also lowers it "
                         "(medpipe). " + MEMORY_HINT)
    budget = (Budget(search_dir / "budget.json", cfg.time_budget, "differentiable", write=main)
              if cfg.time_budget else None)
    if budget:
        cfg = budgeted_search(cfg, budget, supernet, len(w_rows) + len(a_rows),
                              len(val_loader.dataset))
        scfg = cfg.search_train_config()
        console.print(f"time budget: {cfg.search_epochs} search epochs "
                      f"({cfg.warmup} weight-only) fit its share")
    console.print(
        f"[bold]search[/] space {cfg.space}: {len(supernet.alpha)} choices, "
        f"{len(w_rows)} weight-half / {len(a_rows)} arch-half / {len(val_loader.dataset)} val "
        f"scans, search input {scfg.preprocess.input_shape}, retrain input "
        f"{cfg.preprocess.input_shape}")
    trainer = SearchTrainer(
        supernet, scfg, cfg, cfg.preprocess.input_shape, class_names=source.class_names,
        positive_class=positive, device=resolve_device(cfg.device), run_dir=search_dir,
        console=console, class_counts=[sum(r.label == c for r in w_rows + a_rows)
                                       for c in source.class_names])
    done = search_dir / "done.json"
    if not done.exists():
        trainer.deadline = budget.start("search") if budget else None
        trainer.fit(paired, val_loader, resume=resume)
        if budget:
            budget.finish("search")
        if main:
            atomic_write_text(done, json.dumps({"seconds": epochs_seconds(trainer.history)}))
        barrier()
    else:
        trainer._resume(search_dir / "checkpoint")
    decision = search_decision(trainer)
    warning = undecided_warning(decision)
    if warning:
        console.print(f"[bold yellow]warning:[/] {escape(warning)}")
    crash_point("search.done")  # the search is over, no probe has started

    # ---- evaluation stage ----------------------------------------------------------------
    candidates = top_k(trainer.log, cfg.topk, cfg.warmup)
    deadline = budget.start("probes") if budget else None
    probes = probe_candidates(cfg, candidates, run_dir, k, console, deadline=deadline)
    if budget:
        budget.finish("probes")
    best = best_probe(probes)
    chosen = candidate_genotype(best, k, cfg)
    if main:
        chosen.save(run_dir / "genotype.json")
    barrier()
    console.print(f"[bold]chosen[/] {escape(str(chosen))} (probe {cfg.select_metric} {best['probe_score']:.4f})")
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
    result = {
        "space": cfg.space,
        "genotype": chosen.to_string(),
        "augment_search": cfg.aug_mode,
        "objective": cfg.objective,
        "policy": chosen.extra.get("augment_policy"),
        "decision": decision,
        **search_run_seconds(run_dir),
        "budget": budget.summary() if budget else None,
        "probes": probes,
        "test": metrics,
        "ensemble_members": members,
    }
    if main:
        atomic_write_text(run_dir / "result.json", json.dumps(result, indent=2))
    return result


def budgeted_search(cfg: SearchConfig, budget: Budget, supernet: SuperNet, n_train: int,
                    n_val: int) -> SearchConfig:
    """``cfg`` with the search epochs that fit the budget's search stage (at most
    ``search_epochs``; planned once and kept in budget.json), so the warm-up, the temperature
    schedule and the logits' step size follow the epochs that will run. The estimate counts
    a weight and an architecture step per pair of training batches (on a copy of the
    supernet, so its weights stay as seeded). A warm-up set in the config that would fill
    the fitted epochs drops to a third of them."""
    epochs = budget.planned("search_epochs", lambda: fit_epochs(
        estimate_epoch_seconds(copy.deepcopy(supernet), cfg.search_train_config(), n_train,
                               n_val),
        budget.left("search"), cfg.search_epochs))
    update: dict[str, Any] = {"search_epochs": epochs}
    if cfg.warmup_epochs is not None and cfg.warmup_epochs >= epochs:
        update["warmup_epochs"] = epochs // 3
    return cfg.model_copy(update=update)


def search_run_seconds(run_dir: Path) -> dict[str, float | None]:
    """Wall times of a search run's stages from the histories it wrote, summed over resumes.

    ``search_seconds`` (the search epochs), ``probe_seconds`` (all probes), ``retrain_seconds``
    and ``total_seconds`` (their sum; None until every stage has a history). Epoch times only:
    data setup and the test pass are not counted, nor an epoch cut off by a stop.
    """
    run_dir = Path(run_dir)
    search = history_seconds(run_dir / "search")
    probe_dirs = sorted(p for p in (run_dir / "probes").glob("rank*") if p.is_dir())
    probe_times = [history_seconds(p) for p in probe_dirs]
    probes = (None if not probe_times or None in probe_times
              else float(sum(t for t in probe_times if t is not None)))
    retrain = history_seconds(run_dir / "final")
    parts = (search, probes, retrain)
    total = None if None in parts else float(sum(t for t in parts if t is not None))
    return {"search_seconds": search, "probe_seconds": probes, "retrain_seconds": retrain,
            "total_seconds": total}


def search_decision(trainer: SearchTrainer) -> dict[str, dict[str, float]]:
    """How decided the architecture and augmentation distributions are at the end."""
    out = {}
    if trainer.mode != "only":
        out["architecture"] = trainer.supernet.alpha.decision()
        # collapsing onto skip is the known failure of differentiable searches: count them
        ops = trainer.supernet.genotype().ops
        out["architecture"]["skip_layers"] = sum(op == "skip" for op in ops)
        out["architecture"]["skippable_layers"] = sum(
            "skip" in spec.candidates for spec in trainer.supernet.specs)
    if trainer.aug is not None:
        out["augmentation"] = trainer.aug.alpha.decision()
    return out


def undecided_warning(decision: dict[str, dict[str, float]]) -> str | None:
    """A warning naming each distribution still within :data:`UNDECIDED_RATIO` of its start."""
    parts = [f"{name} entropy {d['entropy_ratio']:.1%} of its start (mean argmax probability "
             f"{d['argmax_prob']:.3f}, at the start {d['start_prob']:.3f})"
             for name, d in decision.items() if d["entropy_ratio"] > UNDECIDED_RATIO]
    if not parts:
        return None
    return ("the search has not decided: " + "; ".join(parts) + ". The exported choice is "
            "close to the start's argmax: a random draw from a uniform start, mostly no "
            "augmentation from aug_prior 'probability'; search "
            "longer (--search-epochs) or with a larger logit travel (arch_travel in a --config YAML).")


def decision_from_log(run_dir: Path, space: str, aug_mode: str | None) -> dict[str, dict[str, float]]:
    """Entropy ratios of a finished search from its search_log.csv (runs older than the
    ``decision`` field of result.json, which all started uniform); empty if the log is
    missing."""
    log = Path(run_dir) / "search" / "search_log.csv"
    if not log.is_file():
        return {}
    with log.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    last = rows[-1]
    sizes = {"architecture": [len(sp.candidates) for sp in layer_specs(space) if sp.searchable],
             "augmentation": [len(c) for c in AugmentSearch(prior="candidates").choices]}
    logged = {"architecture": last.get("mean_entropy") if aug_mode != "only" else None,
              "augmentation": last.get("aug_entropy")}
    out = {}
    for name, h in logged.items():
        if h and sizes[name]:
            u = mean_uniform_entropy(sizes[name])
            out[name] = {"entropy": float(h), "start_entropy": u, "entropy_ratio": float(h) / u}
    return out


def top_k(log: list[dict[str, Any]], k: int, warmup: int = 0) -> list[dict[str, Any]]:
    """The k best distinct argmax architectures by validation score (later epoch wins ties).

    Epochs 1..``warmup`` are left out when later ones exist: their logits are still at their
    start, so their "argmax" is the tie-break (the first candidate of every layer), not a
    choice of the search.
    """
    searched = [r for r in log if int(r["epoch"]) > warmup] or log
    ranked = sorted(searched, key=lambda r: (float(r["score"]), int(r["epoch"])), reverse=True)
    seen: set[str] = set()
    out = []
    for r in ranked:
        if r["genotype"] not in seen:
            seen.add(r["genotype"])
            out.append(r | {"record": {"search_epoch": int(r["epoch"]),
                                       "search_score": float(r["score"])}})
        if len(out) == k:
            break
    return out


def genotype_table(geno: Genotype, input_shape: tuple[int, ...] | None = None) -> Table:
    """Rich table of a genotype's layers with parameters and FLOPs."""
    rows = geno.layer_table(input_shape)
    t = Table(title=escape(str(geno)))
    for col in ("layer", "op", "cin", "cout", "output DxHxW", "params", "MFLOPs"):
        t.add_column(col, justify="left" if col in ("layer", "op") else "right")
    for r in rows:
        acts = acts_as(r["op"], r["out"])
        op = f"{r['op']} (acts as {acts})" if acts else r["op"]
        t.add_row(r["layer"], op, str(r["cin"]), str(r["cout"]),
                  "x".join(map(str, r["out"])), f"{r['params']:,}", f"{r['flops'] / 1e6:.1f}")
    t.add_row("head", "gap+linear", "", str(geno.num_classes), "", "", "")
    total_p = sum(r["params"] for r in rows)
    total_f = sum(r["flops"] for r in rows)
    t.caption = f"{total_p:,} params in layers; {total_f / 1e9:.3f} GFLOPs per scan"
    if any(acts_as(r["op"], r["out"]) for r in rows):
        t.caption += ("\n(acts as: the kernel is larger than its map, so it computes what the "
                      "smaller one would, with more parameters)")
    return t
