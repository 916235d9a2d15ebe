"""The evolution strategy: uniform path sampling, NSGA-II's parts, the --pick rules, the
latency table, --time-budget and resuming mid-evolution."""

from __future__ import annotations

import json
import math
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_search import write_tiny_npz
from torch import nn
from typer.testing import CliRunner

from volnas.cli.main import app
from volnas.core.durations import parse_duration
from volnas.models.genotype import Genotype, StackNet
from volnas.models.latency import LatencyTable
from volnas.models.profile import count_params
from volnas.search.budget import Budget
from volnas.search.config import SearchConfig
from volnas.search.evolution import PathFilter, UniformPaths, evolve
from volnas.search.pareto import (
    crowding_distance,
    non_dominated_sort,
    parse_pick,
    pick,
    select,
)
from volnas.search.run import load_saved_search_config, load_search_config, run_search
from volnas.search.supernet import SuperNet
from volnas.training.budget import fit_epochs

# ------------------------------------------------------------------ uniform sampling


def test_uniform_paths_run_every_candidate_equally_often(tiny_space: str) -> None:
    """Without a filter, each block of lcm(2, 8) = 8 steps runs every candidate of every
    layer exactly 8 / n times; the paths are a function of the seed and the step."""
    net = SuperNet(tiny_space, 1, 2, stride_budget=None)
    paths = UniformPaths(net, seed=3)
    assert paths.block == 8
    steps = [paths.path(t) for t in range(3 * paths.block)]
    for layer, n in enumerate(paths.sizes):
        counts = Counter(p[layer] for p in steps)
        assert sorted(counts) == list(range(n))
        assert set(counts.values()) == {3 * 8 // n}
    assert [UniformPaths(net, seed=3).path(t) for t in (5, 17, 0)] == [steps[5], steps[17], steps[0]]
    assert steps != [UniformPaths(net, seed=4).path(t) for t in range(len(steps))]


def test_uniform_paths_respect_the_cost_filter_and_keep_counts(tiny_space: str) -> None:
    """Under the stride budget and a parameter limit, every path passes the filter and the
    repair by swaps keeps each candidate's count (no path had to be redrawn)."""
    net = SuperNet(tiny_space, 1, 2, stride_budget=2.0)
    all_params = [net.path_params(p) for p in (UniformPaths(net, 0).path(t) for t in range(8))]
    target = float(np.percentile(all_params, 60)) / 1e6  # some unfiltered paths are too big
    paths = UniformPaths(net, seed=1, target_params=target)
    steps = [paths.path(t) for t in range(4 * paths.block)]
    f = PathFilter(net, target)
    assert all(f.ok(p) for p in steps)
    assert all(net.feasible(p) for p in steps)
    assert max(net.path_params(p) for p in steps) <= target * 1e6 * 1.1
    assert paths.redrawn == 0
    for layer, n in enumerate(paths.sizes):
        assert set(Counter(p[layer] for p in steps).values()) == {4 * 8 // n}


# ------------------------------------------------------------------ NSGA-II parts


POINTS = [(1, 5), (2, 3), (4, 1), (2, 5), (3, 4), (5, 5), (4, 1)]  # minimise both


def test_non_dominated_sort_known_fronts() -> None:
    # (4, 1) twice: equal points do not dominate each other, both on front 0
    assert non_dominated_sort(POINTS) == [[0, 1, 2, 6], [3, 4], [5]]
    assert non_dominated_sort([]) == []


def test_crowding_distance_known_values() -> None:
    pts = [(0.0, 4.0), (1.0, 2.0), (2.0, 1.0), (4.0, 0.0)]
    d = crowding_distance(pts, [0, 1, 2, 3])
    assert d[0] == d[3] == math.inf
    # point 1: (2 - 0) / 4 + (4 - 1) / 4; point 2: (4 - 1) / 4 + (2 - 0) / 4
    assert d[1] == pytest.approx(1.25) and d[2] == pytest.approx(1.25)
    pts2 = [(0.0, 4.0), (0.5, 3.5), (1.0, 2.0), (4.0, 0.0)]
    d2 = crowding_distance(pts2, [0, 1, 2, 3])
    assert d2[1] == pytest.approx(1 / 4 + 2 / 4) and d2[2] == pytest.approx(3.5 / 4 + 3.5 / 4)


def test_select_fills_by_front_then_by_crowding() -> None:
    pts = [(0.0, 4.0), (0.5, 3.5), (1.0, 2.0), (4.0, 0.0), (5.0, 5.0)]
    assert select(pts, 4) == [0, 1, 2, 3]
    # 3 of front 0's four: both ends, then the less crowded middle point (2)
    assert select(pts, 3) == [0, 3, 2]
    assert select(pts, 5)[-1] == 4


# ------------------------------------------------------------------ --pick rules

FRONT = [
    {"genotype": "a", "score": 0.95, "params": 900, "latency_ms": 9.0},
    {"genotype": "b", "score": 0.945, "params": 400, "latency_ms": 7.0},
    {"genotype": "c", "score": 0.941, "params": 300, "latency_ms": 8.0},
    {"genotype": "d", "score": 0.90, "params": 100, "latency_ms": 2.0},
]


def test_pick_rules_on_a_known_front() -> None:
    assert pick(FRONT, "best")["genotype"] == "a"
    assert pick(FRONT, "smallest-within 0.01")["genotype"] == "c"
    assert pick(FRONT, "fastest-within 0.01")["genotype"] == "b"
    assert pick(FRONT, "smallest-within=0.005")["genotype"] == "b"
    assert pick(FRONT, "fastest-within 0.1")["genotype"] == "d"
    assert pick(FRONT, "smallest-within 0")["genotype"] == "a"
    assert parse_pick("fastest-within") == ("fastest-within", 0.01)
    for bad in ("worst", "best 0.1", "smallest-within x", ""):
        with pytest.raises(ValueError, match="--pick"):
            parse_pick(bad)
    with pytest.raises(ValueError, match="latency"):
        pick([{"genotype": "a", "score": 1.0, "params": 1}], "fastest-within 0.01")


# ------------------------------------------------------------------ latency table


def _layer_timer(calls: list[str]) -> object:
    """A mocked timer: a layer costs (parameters + 10) microseconds; a whole network costs
    2 x the sum of its non-skip layers and head + 1 ms (a known linear relation)."""

    def part(m: nn.Module) -> float:
        return (count_params(m) + 10) * 1e-6

    def timer(module: nn.Module, x: torch.Tensor) -> float:
        calls.append(type(module).__name__)
        if isinstance(module, StackNet):
            layers = [m for m in module.layers if count_params(m) > 0]
            head = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(), module.fc)
            return 2 * (sum(part(m) for m in layers) + part(head)) + 1e-3
        return part(module)

    return timer


def test_latency_table_sums_its_parts_and_caches(tmp_path: Path, tiny_space: str) -> None:
    calls: list[str] = []
    table = LatencyTable(tiny_space, (1, 8, 16, 16), 2, cache_dir=tmp_path, threads=1,
                         timer=_layer_timer(calls))  # type: ignore[arg-type]
    net = SuperNet(tiny_space, 1, 2, stride_budget=None)
    path = [1, 1, 7, 1, 2, 1, 3, 1, 7, 0, 4, 0, 5]  # strides, and a skip (7) in two layers
    geno = Genotype(tiny_space, net.genotype(path).ops, 2)
    built = geno.build()
    parts = table.layer_latencies(geno.ops)
    expected = [(count_params(m) + 10) * 1e-3 if count_params(m) else 0.0 for m in built.layers]
    expected.append((count_params(built.fc) + 10) * 1e-3)
    assert parts == pytest.approx(expected)
    assert table.predict(geno.ops) == pytest.approx(sum(expected))
    assert parts[2] == parts[8] == 0.0 and "Identity" not in calls  # skip: free, not measured
    n_calls = len(calls)
    table.save()
    again = LatencyTable(tiny_space, (1, 8, 16, 16), 2, cache_dir=tmp_path, threads=1,
                         timer=_layer_timer(calls))  # type: ignore[arg-type]
    assert again.predict(geno.ops) == pytest.approx(sum(expected))
    assert len(calls) == n_calls  # read from the cache, nothing measured again
    other = LatencyTable(tiny_space, (1, 8, 16, 16), 2, cache_dir=tmp_path, threads=2,
                         timer=_layer_timer(calls))  # type: ignore[arg-type]
    assert other.path != again.path  # a thread count has a table of its own
    # calibration recovers the whole network's relation: 2 x sum + 1 ms
    rng = np.random.default_rng(0)
    nets = []
    for _ in range(4):
        p = [int(rng.integers(len(c.candidates))) for c in net.choice_layers]
        g = Genotype(tiny_space, net.genotype(p).ops, 2)
        nets.append((g.ops, g.build()))
    fit = again.calibrate(nets)
    assert fit["a"] == pytest.approx(2.0, rel=1e-6) and fit["b"] == pytest.approx(1.0, abs=1e-6)
    assert again.predict(geno.ops) == pytest.approx(2 * sum(expected) + 1.0)
    assert again.predict(geno.ops, calibrated=False) == pytest.approx(sum(expected))


# ------------------------------------------------------------------ evolution resume


class FakeScorer:
    """A known score: how many layers pick candidate 1 (shared weights are not needed to
    test the evolution's bookkeeping)."""

    def __init__(self, net: SuperNet) -> None:
        self.net = net
        self.calls = 0

    def score(self, paths: list[list[int]]) -> list[dict]:
        self.calls += len(paths)
        return [{"path": p, "genotype": self.net.genotype(p).to_string(),
                 "score": sum(i == 1 for i in p) / len(p), "params": self.net.path_params(p)}
                for p in paths]


def test_resumed_evolution_equals_an_unbroken_one(tmp_path: Path, tiny_space: str) -> None:
    """Stopping after generation 2 and continuing to 5 gives the unbroken run's populations
    and scored set; the resumed run scores only the generations it had not done."""
    net = SuperNet(tiny_space, 1, 2)
    cfg = SearchConfig(space=tiny_space, population=6, generations=5, seed=2)
    console = __import__("rich.console").console.Console(quiet=True)
    pop_a, rec_a, last_a = evolve(cfg, net, FakeScorer(net), tmp_path / "a", console=console,
                                  main=True)
    evolve(cfg.model_copy(update={"generations": 2}), net, FakeScorer(net), tmp_path / "b",
           console=console, main=True)
    scorer = FakeScorer(net)
    pop_b, rec_b, last_b = evolve(cfg, net, scorer, tmp_path / "b", console=console, main=True)
    assert last_a == last_b == 5
    assert [r["path"] for r in pop_a] == [r["path"] for r in pop_b]
    assert sorted(map(tuple, (r["path"] for r in rec_a))) == sorted(
        map(tuple, (r["path"] for r in rec_b)))
    assert scorer.calls == 3 * 6  # generations 3, 4, 5 only
    for g in range(6):
        a = json.loads((tmp_path / "a" / f"gen_{g:03d}.json").read_text())
        b = json.loads((tmp_path / "b" / f"gen_{g:03d}.json").read_text())
        assert a["population"] == b["population"] and a["new"] == b["new"]
    # the evolution improves the known score, and its children pass the cost filter
    assert max(r["score"] for r in pop_a) > max(r["score"] for r in json.loads(
        (tmp_path / "a" / "gen_000.json").read_text())["new"])
    assert all(net.feasible(r["path"]) for r in rec_a)
    assert len({tuple(r["path"]) for r in rec_a}) == len(rec_a)  # nothing scored twice


def test_real_run_resumes_mid_evolution(tmp_path: Path, tiny_space: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A run stopped between generations (as a kill leaves it: gen files are atomic)
    continues to the unbroken run's generations and pick; the CLI's evolution flags reach
    the run (latency cost, --pick, a baseline drawn by its cost)."""
    monkeypatch.setenv("VOLNAS_CACHE_DIR", str(tmp_path / "c"))
    data = write_tiny_npz(tmp_path / "d.npz")
    res = CliRunner().invoke(app, [
        "search", "--data", str(data), "--space", tiny_space, "--out", str(tmp_path / "a"),
        "--strategy", "evolution", "--slices", "8", "--size", "16x16", "--batch-size", "8",
        "--epochs", "1", "--generations", "3", "--population", "4", "--retrain-epochs", "1",
        "--costs", "params,latency", "--pick", "fastest-within 0.05",
        "--baselines", "resnet3d_18"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    cfg = load_saved_search_config(tmp_path / "a" / "search_config.yaml")
    assert (cfg.costs, cfg.pick, cfg.generations) == (["params", "latency"],
                                                      "fastest-within 0.05", 3)
    a = json.loads((tmp_path / "a" / "result.json").read_text())
    pareto = json.loads((tmp_path / "a" / "pareto.json").read_text())
    (base,) = pareto["baselines"]
    assert base["name"] == "resnet3d_18" and base["score"] is None
    assert base["params"] > 30e6 and base["latency_ms"] > 0
    assert a["picked"] == pick(a["front"], "fastest-within 0.05")
    assert all(r["latency_ms"] > 0 for r in a["front"])
    assert (tmp_path / "a" / "pareto.png").stat().st_size > 1000
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    b_dir = tmp_path / "b"
    for name in ("gen_002.json", "gen_003.json"):
        (b_dir / "search" / "generations" / name).unlink()
    for name in ("final", "pareto.csv", "pareto.json", "pareto.png", "genotype.json",
                 "result.json"):
        p = b_dir / name
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    b = run_search(cfg, b_dir, resume=True)
    for g in range(4):
        ga = json.loads((tmp_path / "a" / "search" / "generations" / f"gen_{g:03d}.json").read_text())
        gb = json.loads((b_dir / "search" / "generations" / f"gen_{g:03d}.json").read_text())
        assert ga["population"] == gb["population"]
        assert [r["score"] for r in ga["new"]] == [r["score"] for r in gb["new"]]
    assert a["genotype"] == b["genotype"] and a["front"] == b["front"]
    assert (b_dir / "final" / "metrics.json").is_file()
    front = (b_dir / "pareto.csv").read_text().splitlines()
    assert front[0].startswith("genotype,score") and len(front) - 1 == len(b["front"])


# ------------------------------------------------------------------ --time-budget


def test_parse_duration_and_budget_split(tmp_path: Path) -> None:
    assert parse_duration("45m") == 2700 and parse_duration("90s") == 90
    assert parse_duration("1.5h") == 5400 and parse_duration("12") == 12
    for bad in ("", "5d", "-3m", "0s", "m"):
        with pytest.raises(ValueError, match="--time-budget"):
            parse_duration(bad)
    b = Budget(tmp_path / "budget.json", 100.0, "evolution")
    assert b.split == {"supernet": 45.0, "evolution": 15.0, "retrain": 40.0}
    b.spent = {"supernet": 30.0}  # the supernet stage left 15 s: the evolution gets them
    assert b.left("evolution") == pytest.approx(30.0)
    assert b.left("retrain") == pytest.approx(100.0 - 3.0 - 30.0)
    assert fit_epochs(2.0, 9.0, 100) == 4 and fit_epochs(2.0, 1.0, 100) == 1
    assert fit_epochs(0.0, 9.0, 7) == 7
    with pytest.raises(ValueError, match="grid"):
        Budget(tmp_path / "x.json", 10.0, "grid")
    planned = Budget(tmp_path / "p.json", 10.0, "differentiable")
    assert planned.planned("search_epochs", lambda: 7) == 7
    again = Budget(tmp_path / "p.json", 99.0, "differentiable")  # a resume reads the file
    assert again.total == 10.0 and again.planned("search_epochs", lambda: 1) == 7


def test_budgeted_run_stops_on_time_and_writes_metrics(tmp_path: Path, tiny_space: str) -> None:
    """With far more epochs and generations than fit (minutes of work), a 12 s run stops
    each stage on time, still retrains and tests its pick, and records the split and the
    time taken. The bound is loose: the CPU is shared, one epoch can take seconds more than
    the last (the benchmark in docs/results measures the precision)."""
    data = write_tiny_npz(tmp_path / "d.npz")
    cfg = load_search_config(None, {
        "data": str(data), "space": tiny_space, "strategy": "evolution", "slices": 8,
        "size": (16, 16), "batch_size": 8, "search_epochs": 500, "generations": 500,
        "population": 4, "retrain_epochs": 500, "bn_batches": 2, "time_budget": 12.0,
        "cache_dir": str(tmp_path / "c")})
    t0 = time.perf_counter()
    result = run_search(cfg, tmp_path / "run")
    elapsed = time.perf_counter() - t0
    assert elapsed < 12.0 + 20.0, elapsed
    metrics = json.loads((tmp_path / "run" / "final" / "metrics.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0
    budget = json.loads((tmp_path / "run" / "search" / "budget.json").read_text())
    assert set(budget["spent_seconds"]) == {"supernet", "evolution", "retrain"}
    assert sum(budget["spent_seconds"].values()) <= elapsed
    assert result["budget"]["total_seconds"] == 12.0
    history = (tmp_path / "run" / "search" / "supernet" / "history.csv").read_text().splitlines()
    assert 2 <= len(history) < 501  # header + at least one epoch, far from all 500
    assert result["generations"] < 500
    retrain = (tmp_path / "run" / "final" / "history.csv").read_text().splitlines()
    assert 2 <= len(retrain) < 501
    for bad, match in (({"costs": []}, "--costs"), ({"costs": ["params", "params"]}, "--costs"),
                       ({"pick": "slowest"}, "--pick"), ({"ensemble": 2}, "--ensemble")):
        with pytest.raises(ValueError, match=match):
            run_search(cfg.model_copy(update=bad), tmp_path / "e")
        assert not (tmp_path / "e").exists()  # refused before the folder is made


def test_budgeted_random_search_probes_what_fits(tmp_path: Path, tiny_space: str) -> None:
    """The random strategy under a budget probes fewer draws than asked, then retrains."""
    data = write_tiny_npz(tmp_path / "d.npz")
    cfg = load_search_config(None, {
        "data": str(data), "space": tiny_space, "strategy": "random", "slices": 8,
        "size": (16, 16), "batch_size": 8, "random_samples": 40, "probe_epochs": 1,
        "retrain_epochs": 500, "time_budget": 5.0, "cache_dir": str(tmp_path / "c")})
    result = run_search(cfg, tmp_path / "run")
    assert 1 <= len(result["probes"]) < 40
    assert (tmp_path / "run" / "final" / "metrics.json").is_file()
    assert set(result["budget"]["spent_seconds"]) == {"probes", "retrain"}


def test_budgeted_differentiable_search_fits_its_epochs_and_resumes_them(
        tmp_path: Path, tiny_space: str) -> None:
    """Under a budget the differentiable search runs the epochs that fit its share (far
    fewer than the 500 asked, so warm-up, temperature and logit steps follow them), probes,
    retrains and tests; the plan is kept in budget.json and a resume runs to the same end."""
    data = write_tiny_npz(tmp_path / "d.npz")
    cfg = load_search_config(None, {
        "data": str(data), "space": tiny_space, "strategy": "differentiable", "slices": 8,
        "size": (16, 16), "batch_size": 8, "search_epochs": 500, "topk": 2, "probe_epochs": 1,
        "retrain_epochs": 500, "time_budget": 10.0, "cache_dir": str(tmp_path / "c"),
        "fit_strides": False})
    t0 = time.perf_counter()
    result = run_search(cfg, tmp_path / "run")
    elapsed = time.perf_counter() - t0
    assert elapsed < 10.0 + 20.0, elapsed
    budget = json.loads((tmp_path / "run" / "search" / "budget.json").read_text())
    planned = budget["plan"]["search_epochs"]
    assert 1 <= planned < 500
    assert set(budget["spent_seconds"]) == {"search", "probes", "retrain"}
    log = (tmp_path / "run" / "search" / "search_log.csv").read_text().splitlines()
    assert 2 <= len(log) <= planned + 1  # header + the epochs run, none past the plan
    assert result["budget"]["plan"] == {"search_epochs": planned}
    assert (tmp_path / "run" / "final" / "metrics.json").is_file()
    retrain = (tmp_path / "run" / "final" / "history.csv").read_text().splitlines()
    assert 2 <= len(retrain) < 501
    resumed = run_search(cfg, tmp_path / "run", resume=True)  # every stage done: same result
    assert resumed["genotype"] == result["genotype"]
    assert ({k: v for k, v in resumed["test"].items() if k != "run_seconds"}  # a wall time
            == {k: v for k, v in result["test"].items() if k != "run_seconds"})


def test_front_topk_retrains_the_next_members_of_the_front(
        tmp_path: Path, tiny_space: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """--front-topk K retrains the K best-scored front members other than the pick, each in
    front/rankNN from its own genotype file; none once the deadline has passed."""
    from rich.console import Console

    import volnas.search.evolution as evo

    calls: list[tuple[str, str]] = []
    monkeypatch.setattr(evo, "run_training",
                        lambda cfg, d, **kw: calls.append((cfg.model, d.name)) or {})
    net = SuperNet(tiny_space, 1, 2)
    paths = [[0] * 13, [1] * 13, [0, 1] * 6 + [0]]
    front = [{"genotype": net.genotype(p).to_string(), "score": s, "params": 1}
             for p, s in zip(paths, (0.9, 0.8, 0.7), strict=True)]
    cfg = SearchConfig(space=tiny_space, front_topk=2)
    quiet = Console(quiet=True)
    out = evo.retrain_front(cfg, front, front[1], tmp_path, 2, quiet, resume=False, deadline=None)
    assert out == ["front/rank01", "front/rank02"]
    assert [d for _, d in calls] == ["rank01", "rank02"]
    for i, rec in zip((1, 2), (front[0], front[2]), strict=True):
        saved = Genotype.load(tmp_path / "front" / f"rank{i:02d}.json")
        assert saved.to_string() == rec["genotype"]
    calls.clear()
    assert evo.retrain_front(cfg, front, front[1], tmp_path, 2, quiet, resume=False,
                             deadline=time.time() - 1) == [] and calls == []
