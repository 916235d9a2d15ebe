"""One-shot evolutionary search: a supernet trained on uniformly sampled paths, then an
NSGA-II evolution scored with the supernet's weights.

1. Supernet: every training step runs one path. Each searchable layer walks through
   shuffled cycles of its candidates, so over a cycle every candidate of a layer runs
   equally often (:class:`UniformPaths`); a path the cost filter refuses (stride budget,
   ``target_params``) is repaired by swapping choices with other paths of the same cycle,
   which keeps the counts equal.
2. Evolution: a population of architectures (drawn as the random strategy draws), each
   scored on the validation split with the supernet's weights and its own BatchNorm
   statistics re-estimated on ``bn_batches`` training batches (:mod:`volnas.search.ranking`).
   Each generation breeds as many children (binary tournament, uniform crossover, mutation,
   the same cost filter), and the population and children together are cut back to the
   population size by non-dominated sorting and crowding distance (:mod:`volnas.search.pareto`).
   Objectives: the validation score (``select_metric``) and ``costs`` (params, flops, latency:
   the latency table's prediction at the retrain input, :mod:`volnas.models.latency`).
3. The front of every architecture scored, the pick (``--pick``), the pick's retrain from
   scratch and its single test, as the other strategies end.

RUN_DIR layout::

    search_config.yaml     the resolved SearchConfig (strategy: evolution)
    search/supernet/       the supernet's training run (history.csv, checkpoint/)
    search/generations/    gen_NNN.json: the population after generation NNN and the
                           architectures first scored in it (a resumed run reads them back)
    search/budget.json     with --time-budget: the split between stages and the time taken
    pareto.csv, .json, .png  the front (score against each cost; baselines drawn in)
    genotype.json          the picked architecture
    final/                 its retrain from scratch, tested once
    front/rankNN/          with --front-topk: the next front members, retrained and tested
    result.json            picked genotype, front, test metrics, wall times, budget

Under torchrun every rank runs the same evolution: the random streams are functions of the
seed and the generation, and each candidate's validation scan is scored on one rank and
gathered (the Trainer's evaluation), so every rank sees the same scores and decides alike;
rank 0 writes the files.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from torch import Tensor, nn

from volnas.core.distributed import barrier, broadcast_object
from volnas.core.faults import crash_point
from volnas.core.files import atomic_write_text, load_tensors, sha256_file
from volnas.data.cache import StackCache
from volnas.data.dataset import ScanDataset, make_loader, open_source
from volnas.models.latency import LatencyTable
from volnas.models.profile import count_flops, count_params
from volnas.models.registry import create_model
from volnas.search.budget import Budget, budgeted_epochs
from volnas.search.config import SearchConfig
from volnas.search.evaluation import candidate_genotype, retrain_config
from volnas.search.pareto import (
    non_dominated_sort,
    parse_pick,
    pick,
    rank_and_crowding,
    select,
    tournament,
)
from volnas.search.random_search import PARAMS_TOLERANCE, draw_paths
from volnas.search.ranking import inherited_scores
from volnas.search.supernet import SuperNet
from volnas.training.checkpoint import read_checkpoint_record
from volnas.training.config import TrainConfig
from volnas.training.device import resolve_device, seed_everything
from volnas.training.run import run_training
from volnas.training.rundir import history_seconds, positive_of

EVO_STREAM = 5  # random streams: the search's 1-3, random search's 4
UNIFORM_STREAM = 6
REPAIR_TRIES = 500
CHILD_TRIES = 50


# ---- uniform path sampling ------------------------------------------------------------


class PathFilter:
    """The cost filter every strategy shares: the stride budget, and with ``target_params``
    (millions) at most ``target_params * (1 + tolerance)`` million parameters."""

    def __init__(self, supernet: SuperNet, target_params: float | None,
                 tolerance: float = PARAMS_TOLERANCE) -> None:
        self.supernet = supernet
        self.limit = None if target_params is None else target_params * 1e6 * (1 + tolerance)
        self.costs = [c.tolist() for c in supernet.candidate_params()]
        self.fixed = supernet.fixed_params()

    def params(self, path: list[int]) -> float:
        return self.fixed + sum(c[i] for c, i in zip(self.costs, path, strict=True))

    def violation(self, path: list[int]) -> float:
        """0 for a path the filter accepts, else how far over it is (relative)."""
        over = 0.0
        sn = self.supernet
        if not sn.feasible(path):
            over += sn.stride_cost(sn.path_strides(path)) / sn._max_cost - 1
        if self.limit is not None:
            over += max(0.0, self.params(path) / self.limit - 1)
        return over

    def ok(self, path: list[int]) -> bool:
        return self.violation(path) == 0.0


class UniformPaths:
    """The path of training step ``t``, a pure function of the seed and ``t``.

    Steps come in blocks of ``B`` = the least common multiple of the layers' candidate
    counts; in a block, each layer runs ``B / n`` shuffled cycles of its ``n`` candidates, so
    every candidate runs exactly ``B / n`` times. Paths the filter refuses are repaired by
    swapping a layer's choice with another path of the block, kept when the two paths'
    summed excess over the filter does not grow; a path no swap repairs is replaced by a
    uniform draw that passes (counted in ``redrawn``, per process).
    """

    def __init__(self, supernet: SuperNet, seed: int, target_params: float | None = None) -> None:
        self.sizes = [len(layer.candidates) for layer in supernet.choice_layers]
        self.block = math.lcm(*self.sizes) if self.sizes else 1
        self.filter = PathFilter(supernet, target_params)
        self.seed = seed
        self.redrawn = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def path(self, step: int) -> list[int]:
        b, i = divmod(int(step), self.block)
        if self._cache is None or self._cache[0] != b:
            self._cache = (b, self._make_block(b))
        return list(self._cache[1][i])

    def _make_block(self, b: int) -> list[list[int]]:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, UNIFORM_STREAM, b]))
        cols = [np.concatenate([rng.permutation(n) for _ in range(self.block // n)])
                for n in self.sizes]
        paths = [[int(c[t]) for c in cols] for t in range(self.block)]
        f = self.filter
        bad = [f.violation(p) for p in paths]
        # swap one layer's choices between a refused path and another path of the block
        # when that does not raise their summed violation: the block's counts stay equal
        for _ in range(REPAIR_TRIES * self.block):
            refused = [t for t, v in enumerate(bad) if v > 0.0]
            if not refused:
                break
            t = refused[int(rng.integers(len(refused)))]
            u, layer = int(rng.integers(self.block)), int(rng.integers(len(self.sizes)))
            if u == t or paths[t][layer] == paths[u][layer]:
                continue
            a, o = list(paths[t]), list(paths[u])
            a[layer], o[layer] = o[layer], a[layer]
            va, vo = f.violation(a), f.violation(o)
            if va + vo <= bad[t] + bad[u]:
                paths[t], paths[u], bad[t], bad[u] = a, o, va, vo
        for t, v in enumerate(bad):
            if v > 0.0:
                paths[t] = self._redraw(rng)
        return paths

    def _redraw(self, rng: np.random.Generator) -> list[int]:
        self.redrawn += 1
        for _ in range(100_000):
            p = [int(rng.integers(n)) for n in self.sizes]
            if self.filter.ok(p):
                return p
        raise ValueError("uniform sampling: no path passes the cost filter (raise target_params)")


class UniformSuperNet(nn.Module):
    """A supernet that, in training mode, runs the path of its step counter (a buffer, so
    a checkpoint resumes the sequence) and, in evaluation, ``eval_path`` (the smallest
    candidate of every layer: what the supernet run's history validates)."""

    find_unused_parameters = True  # one path per step: DDP must not wait for the others

    def __init__(self, supernet: SuperNet, paths: UniformPaths) -> None:
        super().__init__()
        self.supernet = supernet
        self.paths = paths
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.eval_path = paths.filter.supernet.best_feasible([0] * len(paths.sizes))

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self.supernet.fixed_path = self.paths.path(int(self.step))
            self.step += 1
        else:
            self.supernet.fixed_path = self.eval_path
        return self.supernet(x)

    def features(self, x: Tensor) -> Tensor:
        return self.supernet.features(x)


def supernet_config(cfg: SearchConfig) -> TrainConfig:
    """The supernet's training run: the search input and optimiser, ``search_epochs``, no
    per-path BatchNorm re-estimation (its history validates one fixed path)."""
    scfg = cfg.search_train_config()
    return scfg.model_copy(update={"bn_recalibration": 0, "memory_check": False,
                                   "tta": "none", "patience": None})


def load_uniform_supernet(run_dir: Path, supernet: SuperNet) -> None:
    """Load the last checkpoint of the supernet's run folder into ``supernet``."""
    folder = Path(run_dir) / "checkpoint"
    record = read_checkpoint_record(folder)
    weights = folder / record["file"]
    if not weights.is_file() or sha256_file(weights) != record["sha256"]:
        raise ValueError(f"{weights}: missing or does not match {folder / 'last.json'}")
    prefix = "model.supernet."
    state = {k[len(prefix):]: v for k, v in load_tensors(weights).items() if k.startswith(prefix)}
    try:
        supernet.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{weights}: not this supernet: {e}") from e


# ---- evolution --------------------------------------------------------------------------


def breed(
    population: list[list[int]], points: list[list[float]], n: int, rng: np.random.Generator,
    path_filter: PathFilter, seen: set[tuple[int, ...]],
) -> list[list[int]]:
    """``n`` new distinct paths: parents by binary tournament, uniform crossover, then each
    layer mutated with probability 1 / layers (at least one change); a child the filter
    refuses or already seen is bred again (after CHILD_TRIES, a uniform draw)."""
    rank, crowd = rank_and_crowding(points)
    sizes = [len(layer.candidates) for layer in path_filter.supernet.choice_layers]
    layers = len(sizes)
    out: list[list[int]] = []
    taken = set(seen)
    for _ in range(n):
        child: list[int] | None = None
        for _ in range(CHILD_TRIES):
            a = population[tournament(rank, crowd, rng)]
            b = population[tournament(rank, crowd, rng)]
            mask = rng.random(layers) < 0.5
            c = [x if m else y for x, y, m in zip(a, b, mask, strict=True)]
            flips = rng.random(layers) < 1.0 / layers
            if not flips.any():
                flips[int(rng.integers(layers))] = True
            for i in np.flatnonzero(flips):
                if sizes[i] > 1:
                    c[i] = int((c[i] + rng.integers(1, sizes[i])) % sizes[i])  # another choice
            if path_filter.ok(c) and tuple(c) not in taken:
                child = c
                break
        if child is None:
            for _ in range(100_000):
                c = [int(rng.integers(s)) for s in sizes]
                if path_filter.ok(c) and tuple(c) not in taken:
                    child = c
                    break
        if child is None:
            break  # the space is exhausted
        taken.add(tuple(child))
        out.append(child)
    return out


def objectives(rec: dict[str, Any], costs: list[str]) -> list[float]:
    """What NSGA-II minimises for a scored architecture: -score, then each cost."""
    key = {"params": "params", "flops": "flops", "latency": "latency_ms"}
    return [-float(rec["score"])] + [float(rec[key[c]]) for c in costs]


class Scorer:
    """Scores architectures: validation with inherited weights, parameters, FLOPs, latency."""

    def __init__(self, cfg: SearchConfig, supernet: SuperNet, run_dir: Path,
                 console: Console) -> None:
        self.cfg = cfg
        self.supernet = supernet
        self.scfg = supernet_config(cfg)
        source = open_source(cfg.data)
        self.class_names = source.class_names
        self.positive = positive_of(cfg, source)
        cache = StackCache(self.scfg.preprocess, Path(cfg.cache_dir) if cfg.cache_dir else None)

        def loader(split: str) -> Any:
            ds = ScanDataset(source.split(split), source.class_names, self.scfg.preprocess,
                             train=False, cache=cache, seed=cfg.seed)
            return make_loader(ds, self.scfg.batch_size, train=False, num_workers=cfg.num_workers)

        self.train_loader, self.val_loader = loader("train"), loader("val")
        self.device = resolve_device(cfg.device)
        self.run_dir = run_dir
        needs_latency = "latency" in cfg.costs or parse_pick(cfg.pick)[0] == "fastest-within"
        self.latency = LatencyTable(
            cfg.space, cfg.preprocess.input_shape, len(source.class_names), device=self.device,
            cache_dir=cfg.cache_dir and Path(cfg.cache_dir)) if needs_latency else None
        self.console = console

    def score(self, paths: list[list[int]]) -> list[dict[str, Any]]:
        if not paths:
            return []
        sn = self.supernet
        genos = [sn.genotype(p) for p in paths]
        scored = inherited_scores(sn, genos, self.train_loader, self.val_loader, cfg=self.scfg,
                                  class_names=self.class_names, positive_class=self.positive,
                                  device=self.device, run_dir=self.run_dir,
                                  bn_batches=self.cfg.bn_batches)
        out = []
        for p, g, s in zip(paths, genos, scored, strict=True):
            rec = {"path": p, **s, "params": sn.path_params(p)}
            if "flops" in self.cfg.costs:
                rec["flops"] = count_flops(g.build(), self.cfg.preprocess.input_shape)
            if self.latency is not None:
                rec["latency_ms"] = self.latency.predict(g.ops, calibrated=False)
            out.append(rec)
        if self.latency is not None:
            # each rank times on its own: rank 0's latencies decide, so all ranks agree
            lat = broadcast_object([r["latency_ms"] for r in out])
            for r, v in zip(out, lat, strict=True):
                r["latency_ms"] = v
            if main_rank():
                self.latency.save()
        return out


def _gen_file(folder: Path, g: int) -> Path:
    return folder / f"gen_{g:03d}.json"


def _read_gen(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable generation ({type(e).__name__}: {e})") from e


def evolve(
    cfg: SearchConfig, supernet: SuperNet, scorer: Any, folder: Path, *, console: Console,
    main: bool, deadline: float | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """Run (or continue, from ``folder``'s gen_NNN.json) the evolution. Returns the final
    population, every architecture scored, and the last generation done. With ``deadline``
    (``time.time()``) no generation is started that would end after it by the mean
    generation so far (generation 0 always runs)."""
    pf = PathFilter(supernet, cfg.target_params)
    archive: dict[tuple[int, ...], dict[str, Any]] = {}
    population: list[dict[str, Any]] = []
    g = 0
    while _gen_file(folder, g).exists():  # resume: read back what was done
        data = _read_gen(_gen_file(folder, g))
        for rec in data["new"]:
            archive[tuple(rec["path"])] = rec
        population = [archive[tuple(p)] for p in data["population"]]
        g += 1
    if g == 0:
        t0 = time.perf_counter()
        paths = draw_paths(supernet, cfg.population, cfg.seed + EVO_STREAM,
                           target_params=cfg.target_params)
        new = scorer.score(paths)
        for rec in new:
            archive[tuple(rec["path"])] = rec
        population = new
        _save_gen(folder, 0, population, new, time.perf_counter() - t0, main)
        _report(console, 0, population, cfg)
        g = 1
    gen_times: list[float] = []
    while g <= cfg.generations:
        mean = sum(gen_times) / len(gen_times) if gen_times else 0.0
        if deadline is not None and time.time() + mean > deadline:
            console.print(f"time budget: evolution stopped after generation {g - 1}")
            break
        crash_point("evolution.generation")
        t0 = time.perf_counter()
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, EVO_STREAM, g]))
        points = [objectives(r, cfg.costs) for r in population]
        children = breed([r["path"] for r in population], points, cfg.population, rng, pf,
                         set(archive))
        new = scorer.score(children)
        for rec in new:
            archive[tuple(rec["path"])] = rec
        pool = population + new
        keep = select([objectives(r, cfg.costs) for r in pool], cfg.population)
        population = [pool[i] for i in keep]
        gen_times.append(time.perf_counter() - t0)
        _save_gen(folder, g, population, new, gen_times[-1], main)
        _report(console, g, population, cfg)
        g += 1
    return population, list(archive.values()), g - 1


def _save_gen(folder: Path, g: int, population: list[dict[str, Any]], new: list[dict[str, Any]],
              seconds: float, main: bool) -> None:
    if main:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(_gen_file(folder, g), json.dumps({
            "generation": g, "seconds": seconds,
            "population": [r["path"] for r in population], "new": new}, indent=1))
    barrier()


def _report(console: Console, g: int, population: list[dict[str, Any]], cfg: SearchConfig) -> None:
    best = max(population, key=lambda r: r["score"])
    front = non_dominated_sort([objectives(r, cfg.costs) for r in population])[0]
    console.print(f"generation {g}: best {cfg.select_metric} {best['score']:.4f} "
                  f"({best['params'] / 1e6:.3g} M params), front of {len(front)}")


def pareto_front(records: list[dict[str, Any]], costs: list[str]) -> list[dict[str, Any]]:
    """The non-dominated records, by decreasing score."""
    front = non_dominated_sort([objectives(r, costs) for r in records])[0]
    return sorted((records[i] for i in front), key=lambda r: -r["score"])


# ---- baselines, outputs -------------------------------------------------------------------


def baseline_points(cfg: SearchConfig, num_classes: int,
                    latency: LatencyTable | None) -> list[dict[str, Any]]:
    """Each ``--baselines`` entry (``NAME`` or ``NAME=RUN_DIR``): parameters, FLOPs at the
    retrain input, measured latency (when latency is a cost) and, from RUN_DIR's
    best_val_metrics.json, its validation score (None without a run folder)."""
    out = []
    for entry in cfg.baselines:
        name, _, run = entry.partition("=")
        model = create_model(name.strip(), in_channels=1, num_classes=num_classes)
        rec: dict[str, Any] = {"name": name.strip(), "params": count_params(model),
                               "flops": count_flops(model, cfg.preprocess.input_shape),
                               "score": None, "run_dir": run or None}
        if latency is not None:
            rec["latency_ms"] = latency.measure_network(model)
        if run:
            path = Path(run) / "best_val_metrics.json"
            try:
                rec["score"] = float(json.loads(path.read_text())[cfg.select_metric])
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ValueError(f"--baselines {entry}: {path}: no validation "
                                 f"{cfg.select_metric} ({type(e).__name__}: {e})") from e
        out.append(rec)
    return out


COLUMNS = ("genotype", "score", "auc", "accuracy", "params", "flops", "latency_ms")


def write_pareto(run_dir: Path, front: list[dict[str, Any]], records: list[dict[str, Any]],
                 picked: dict[str, Any], baselines: list[dict[str, Any]],
                 cfg: SearchConfig) -> None:
    """pareto.csv (the front), pareto.json (front, pick, baselines) and pareto.png."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(COLUMNS)
    for r in front:
        w.writerow([r.get(c, "") if not isinstance(r.get(c), float) else f"{r[c]:.6g}"
                    for c in COLUMNS])
    atomic_write_text(run_dir / "pareto.csv", buf.getvalue())
    atomic_write_text(run_dir / "pareto.json", json.dumps({
        "score": cfg.select_metric, "costs": cfg.costs, "pick": cfg.pick,
        "picked": picked["genotype"], "front": front, "evaluated": len(records),
        "baselines": baselines, "latency": "predicted by the latency table (sum of "
        "layers) at the retrain input for searched networks, measured for baselines"},
        indent=1))
    plot_pareto(run_dir / "pareto.png", front, records, picked, baselines, cfg)


def plot_pareto(path: Path, front: list[dict[str, Any]], records: list[dict[str, Any]],
                picked: dict[str, Any], baselines: list[dict[str, Any]], cfg: SearchConfig) -> None:
    """Score against each cost: every architecture scored, the front, the pick, the baselines
    (a point with a validation score, else a vertical line at its cost)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    key = {"params": "params", "flops": "flops", "latency": "latency_ms"}
    label = {"params": "parameters (M)", "flops": "GFLOPs per scan", "latency": "latency (ms)"}
    scale = {"params": 1e-6, "flops": 1e-9, "latency": 1.0}
    fig, axes = plt.subplots(1, len(cfg.costs), figsize=(5 * len(cfg.costs), 4), squeeze=False)
    for ax, cost in zip(axes[0], cfg.costs, strict=True):
        k, s = key[cost], scale[cost]
        ax.scatter([r[k] * s for r in records], [r["score"] for r in records], s=10,
                   c="0.75", label="scored")
        # the front is non-dominated in all objectives at once: points, not a line
        ax.scatter([r[k] * s for r in front], [r["score"] for r in front], s=18, c="C0",
                   label="front")
        ax.scatter([picked[k] * s], [picked["score"]], marker="*", s=160, c="C3", zorder=5,
                   label="picked")
        for i, b in enumerate(baselines):
            if b.get(k) is None:
                continue
            if b["score"] is None:
                ax.axvline(b[k] * s, ls="--", c=f"C{i + 4}", label=f"{b['name']} (cost only)")
            else:
                ax.scatter([b[k] * s], [b["score"]], marker="s", c=f"C{i + 4}", label=b["name"])
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(label[cost])
        ax.set_ylabel(f"validation {cfg.select_metric} (inherited weights)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    from volnas.core.files import atomic_write_bytes

    atomic_write_bytes(path, buf.getvalue())


# ---- the run ------------------------------------------------------------------------------


def _check_evolution(cfg: SearchConfig) -> None:
    if cfg.augment_search not in (None, "off"):
        raise ValueError(f"--augment-search {cfg.augment_search}: the evolution strategy "
                         "searches architectures only (use --augment-search off)")
    parse_pick(cfg.pick)
    if not cfg.costs or len(set(cfg.costs)) != len(cfg.costs):
        raise ValueError(f"--costs {','.join(cfg.costs)!r}: give one or more of params, flops, "
                         "latency, each once")
    if cfg.ensemble > 1:
        raise ValueError("--ensemble: not available with --strategy evolution (use "
                         "--front-topk to retrain more members of the front)")


def run_evolution_search(
    cfg: SearchConfig, run_dir: Path, *, resume: bool, console: Console, main: bool
) -> dict[str, Any]:
    """Supernet, evolution, pick, retrain (see the module docstring); returns result.json."""
    _check_evolution(cfg)
    seed_everything(cfg.seed)
    source = open_source(cfg.data)
    k = len(source.class_names)
    search_dir = run_dir / "search"
    budget = (Budget(search_dir / "budget.json", cfg.time_budget, "evolution", write=main)
              if cfg.time_budget else None)
    supernet = SuperNet(cfg.space, in_channels=1, num_classes=k, stride_budget=cfg.stride_budget,
                        spatial=cfg.fit_input, stride_rule=cfg.stride_rule)
    paths = UniformPaths(supernet, cfg.seed, cfg.target_params)

    # ---- 1. supernet ---------------------------------------------------------------------
    sdir = search_dir / "supernet"
    done = search_dir / "supernet_done.json"
    if not done.exists():
        deadline = budget.start("supernet") if budget else None
        console.print(f"[bold]evolution[/] space {escape(cfg.space)}: supernet trained on "
                      f"uniformly sampled paths (blocks of {paths.block} steps cover every "
                      "candidate equally)")
        run_training(supernet_config(cfg), sdir, resume=resume and (sdir / "config.yaml").exists(),
                     console=console, test=False, model=UniformSuperNet(supernet, paths),
                     deadline=deadline)
        if budget:
            budget.finish("supernet")
        if main:
            atomic_write_text(done, json.dumps({"seconds": history_seconds(sdir),
                                                "redrawn_paths": paths.redrawn}))
        barrier()
    load_uniform_supernet(sdir, supernet)
    crash_point("search.done")

    # ---- 2. evolution --------------------------------------------------------------------
    scorer = Scorer(cfg, supernet, search_dir / "scoring", console)
    deadline = budget.start("evolution") if budget else None
    population, records, last_gen = evolve(cfg, supernet, scorer, search_dir / "generations",
                                           console=console, main=main, deadline=deadline)
    if budget:
        budget.finish("evolution")
    front = pareto_front(records, cfg.costs)
    picked = pick(front, cfg.pick)
    baselines = baseline_points(cfg, k, scorer.latency) if cfg.baselines else []
    chosen = candidate_genotype(picked, k, cfg)
    if main:
        write_pareto(run_dir, front, records, picked, baselines, cfg)
        chosen.save(run_dir / "genotype.json")
    barrier()
    console.print(f"[bold]picked[/] ({escape(cfg.pick)}) {escape(str(chosen))}: validation "
                  f"{cfg.select_metric} {picked['score']:.4f} with inherited weights, "
                  f"{picked['params'] / 1e6:.3g} M params; front of {len(front)} from "
                  f"{len(records)} architectures scored")

    # ---- 3. retrain ----------------------------------------------------------------------
    final_cfg = retrain_config(cfg, "genotype:" + str(run_dir / "genotype.json"), cfg.retrain_epochs)
    final_dir = run_dir / "final"
    deadline = None
    if budget:
        deadline = budget.start("retrain")
        splits = (len(source.split("train")), len(source.split("val")))
        final_cfg = final_cfg.model_copy(update={"epochs": budgeted_epochs(
            final_cfg, chosen.build(), splits, budget.left("retrain"), final_dir)})
    metrics = run_training(final_cfg, final_dir, resume=resume and (final_dir / "config.yaml").exists(),
                           console=console, deadline=deadline,
                           fill=None if cfg.front_topk else cfg.retrain_epochs)  # else: front's time
    front_runs = retrain_front(cfg, front, picked, run_dir, k, console, resume=resume,
                               deadline=deadline)
    if budget:
        budget.finish("retrain")
    latency_ms = None
    if scorer.latency is not None:
        latency_ms = scorer.latency.measure_network(chosen.build())
    result = {
        "strategy": "evolution",
        "space": cfg.space,
        "genotype": chosen.to_string(),
        "augment_search": "off",
        "pick": cfg.pick,
        "picked": {k_: v for k_, v in picked.items() if k_ != "path"},
        "picked_latency_ms_measured": latency_ms,
        "generations": last_gen,
        "evaluated": len(records),
        "front": [{k_: v for k_, v in r.items() if k_ != "path"} for r in front],
        "target_params": cfg.target_params,
        **evolution_seconds(run_dir),
        "budget": budget.summary() if budget else None,
        "test": metrics,
        "front_runs": front_runs,
        "ensemble_members": ["final"],
    }
    if main:
        atomic_write_text(run_dir / "result.json", json.dumps(result, indent=2))
    return result


def retrain_front(cfg: SearchConfig, front: list[dict[str, Any]], picked: dict[str, Any],
                  run_dir: Path, k: int, console: Console, *, resume: bool,
                  deadline: float | None) -> list[str]:
    """Retrain the ``front_topk`` best-scored front members besides the pick into
    ``front/rankNN`` (tested once each); returns their folders relative to ``run_dir``."""
    others = [r for r in front if r["genotype"] != picked["genotype"]][: cfg.front_topk]
    out = []
    for rank, rec in enumerate(others, start=1):
        if deadline is not None and time.time() >= deadline:
            console.print("time budget: no time left for more front members")
            break
        folder = run_dir / "front"
        geno_file = folder / f"rank{rank:02d}.json"
        if main_rank():
            folder.mkdir(parents=True, exist_ok=True)
            candidate_genotype(rec, k, cfg).save(geno_file)
        barrier()
        rdir = folder / f"rank{rank:02d}"
        rcfg = retrain_config(cfg, "genotype:" + str(geno_file), cfg.retrain_epochs)
        run_training(rcfg, rdir, resume=resume and (rdir / "config.yaml").exists(),
                     console=console, deadline=deadline)
        out.append(str(rdir.relative_to(run_dir)))
    return out


def main_rank() -> bool:
    from volnas.core.distributed import info

    return info().is_main


def evolution_seconds(run_dir: Path) -> dict[str, float | None]:
    """Wall times: supernet epochs, the generations, the retrain's epochs, their sum."""
    search = history_seconds(run_dir / "search" / "supernet")
    gens = sorted((run_dir / "search" / "generations").glob("gen_*.json"))
    evo = float(sum(_read_gen(p)["seconds"] for p in gens)) if gens else None
    retrain = history_seconds(run_dir / "final")
    parts = (search, evo, retrain)
    total = None if None in parts else float(sum(p for p in parts if p is not None))
    return {"search_seconds": search, "evolution_seconds": evo, "retrain_seconds": retrain,
            "total_seconds": total}
