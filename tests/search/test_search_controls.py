"""The controls a search is judged by: random search, the supernet's ranking quality, a toy
search whose right answer is known, and the hand-picked members of each space."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_search import TINY, write_tiny_npz
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from typer.testing import CliRunner

from volnas.cli.main import app
from volnas.search.config import SearchConfig
from volnas.search.random_search import PARAMS_TOLERANCE, draw_paths
from volnas.search.ranking import kendall_tau
from volnas.search.search import PairedLoader, SearchTrainer
from volnas.search.supernet import SuperNet

REPO = Path(__file__).resolve().parents[2]

# ------------------------------------------------------------------ random search

RANDOM = ["--strategy", "random", "--samples", "3", "--slices", "8", "--size", "16x16",
          "--batch-size", "8", "--probe-epochs", "1", "--retrain-epochs", "1"]


def test_random_search_end_to_end(tmp_path: Path, tiny_space: str) -> None:
    """volnas search --strategy random writes the run folder contract: the drawn genotypes
    and a log under search/, one probe per draw, the best probe chosen and retrained."""
    data = write_tiny_npz(tmp_path / "d.npz")
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["search", "--data", str(data), "--space", tiny_space,
                                   "--out", str(out), *RANDOM])
    assert res.exit_code == 0, res.output + repr(res.exception)
    result = json.loads((out / "result.json").read_text())
    assert result["strategy"] == "random" and result["samples"] == 3
    draws = json.loads((out / "search" / "draws.json").read_text())
    assert [d["draw"] for d in draws] == [1, 2, 3]
    assert len({d["genotype"] for d in draws}) == 3
    assert sorted(p.name for p in (out / "search" / "genotypes").iterdir()) == [
        "draw_001.json", "draw_002.json", "draw_003.json"]
    with open(out / "probes.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["genotype"] for r in table] == [d["genotype"] for d in draws]
    with open(out / "search" / "draws.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 3
    for d in draws:
        assert (out / "probes" / f"rank{d['draw']:02d}" / "probe.json").is_file()
        assert not (out / "probes" / f"rank{d['draw']:02d}" / "metrics.json").exists()  # no test
    best = max(result["probes"], key=lambda p: p["probe_score"])
    assert result["genotype"] == best["genotype"]
    assert json.loads((out / "genotype.json").read_text())["genotype"] == best["genotype"]
    assert (out / "final" / "metrics.json").is_file()
    assert set(result["test"]) >= {"accuracy", "f1", "auc"}
    assert result["search_seconds"] is not None and result["total_seconds"] is not None
    # the same seed draws the same architectures, another seed others
    cfg = SearchConfig(data=str(data), space=tiny_space, strategy="random", random_samples=3)
    net = SuperNet(tiny_space, 1, 2)
    again = [net.genotype(p).to_string() for p in draw_paths(net, 3, cfg.seed)]
    assert again == [d["genotype"] for d in draws]
    assert [net.genotype(p).to_string() for p in draw_paths(net, 3, cfg.seed + 1)] != again


def test_random_draws_obey_the_cost_filter(tiny_space: str) -> None:
    """Every draw keeps the stride budget and, with target_params, the parameter limit;
    without the filter the same space has draws over both."""
    net = SuperNet(tiny_space, 1, 2, stride_budget=2.0)
    free = SuperNet(tiny_space, 1, 2, stride_budget=None)
    unfiltered = draw_paths(free, 40, 0)
    assert not all(net.feasible(p) for p in unfiltered)  # the budget has something to reject
    sizes = sorted(free.path_params(p) for p in unfiltered)
    target = float(np.median(sizes)) / 1e6
    paths = draw_paths(net, 12, 0, target_params=target)
    assert len({tuple(p) for p in paths}) == 12
    assert all(net.feasible(p) for p in paths)
    assert all(net.path_params(p) <= target * 1e6 * (1 + PARAMS_TOLERANCE) for p in paths)
    assert max(sizes) > target * 1e6 * (1 + PARAMS_TOLERANCE)
    with pytest.raises(ValueError, match=r"found \d+ of 12 distinct architectures.*target_params"):
        draw_paths(net, 12, 0, target_params=min(sizes) / 1e6 * 0.5)


def test_failed_random_search_keeps_its_finished_probes(
    tmp_path: Path, tiny_space: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error in a later probe leaves the folder (draws, finished probes) for --resume; a
    search that fails before its draws are recorded is removed, as any failed start."""
    import volnas.search.evaluation as ev
    from volnas.search.run import run_search

    real, calls = ev.run_training, []

    def failing_second(*args: object, **kwargs: object) -> dict:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return real(*args, **kwargs)

    monkeypatch.setattr(ev, "run_training", failing_second)
    data = write_tiny_npz(tmp_path / "d.npz")
    cfg = SearchConfig.model_validate({
        "data": str(data), "space": tiny_space, "strategy": "random", "random_samples": 3,
        "preprocess": {"slices": 8, "size": (16, 16)}, "batch_size": 8, "probe_epochs": 1})
    with pytest.raises(RuntimeError, match="out of memory"):
        run_search(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "search" / "draws.json").is_file()
    assert (tmp_path / "run" / "probes" / "rank01" / "probe.json").is_file()
    with pytest.raises(ValueError, match="found 0 of 3"):
        run_search(cfg.model_copy(update={"target_params": 1e-6}), tmp_path / "run2")
    assert not (tmp_path / "run2").exists()


def test_random_search_resumes_after_kill(tmp_path: Path, tiny_space: str) -> None:
    """kill -9 in the second probe; --resume keeps the seed's draws, reads the first probe
    back (not rerun), finishes the others and chooses the best probe."""
    data = write_tiny_npz(tmp_path / "d.npz")
    runner = (f"import sys\nfrom volnas.models.spaces import SPACES, SpaceDef\n"
              f"SPACES['tiny-strides'] = SpaceDef(*{TINY!r})\n"
              "from volnas.cli.main import main\nsys.argv = ['volnas', *sys.argv[1:]]\nmain()\n")
    env = {k: v for k, v in os.environ.items() if k != "VOLNAS_CRASH_AT"}
    env.update(PYTHONPATH=os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    out = tmp_path / "run"

    def search(*args: str, crash: str | None = None) -> subprocess.CompletedProcess:
        e = env | ({"VOLNAS_CRASH_AT": crash} if crash else {})
        return subprocess.run([sys.executable, "-c", runner, "search", "--out", str(out), *args],
                              env=e, text=True, capture_output=True, timeout=300)

    # 16 scans, batch 8: 2 steps per probe epoch; the 4th step is in the second probe
    killed = search("--data", str(data), "--space", tiny_space, *RANDOM, crash="train.step#4")
    assert killed.returncode == -9, killed.stdout + killed.stderr
    first = out / "probes" / "rank01" / "probe.json"
    assert first.is_file() and not (out / "probes" / "rank02" / "probe.json").exists()
    stamp = first.stat().st_mtime_ns
    resumed = search("--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert first.stat().st_mtime_ns == stamp  # read back, not rerun
    net = SuperNet(tiny_space, 1, 2)
    drawn = [net.genotype(p).to_string() for p in draw_paths(net, 3, 0)]
    assert [d["genotype"] for d in json.loads((out / "search" / "draws.json").read_text())] == drawn
    result = json.loads((out / "result.json").read_text())
    assert [p["genotype"] for p in result["probes"]] == drawn
    assert result["genotype"] == max(result["probes"], key=lambda p: p["probe_score"])["genotype"]
    assert (out / "final" / "metrics.json").is_file()


# ------------------------------------------------------------------ Kendall tau


def test_kendall_tau_known_answers() -> None:
    assert kendall_tau([1, 2, 3, 4, 5], [10, 20, 30, 40, 50]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4, 5], [5, 4, 3, 2, 1]) == pytest.approx(-1.0)
    # one discordant pair ((2, 3)) of the 6: (5 - 1) / 6
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(2 / 3)
    # two discordant pairs of 10: (8 - 2) / 10
    assert kendall_tau([0.1, 0.2, 0.3, 0.4, 0.5], [0.2, 0.1, 0.3, 0.5, 0.4]) == pytest.approx(0.6)


def test_kendall_tau_refuses_what_it_cannot_rank() -> None:
    with pytest.raises(ValueError, match="same length"):
        kendall_tau([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="at least 2"):
        kendall_tau([1], [1])
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))  # one side all tied: undefined


def test_inherited_net_is_the_supernet_path(tiny_space: str) -> None:
    """The network scored with inherited weights computes what the supernet's path computes."""
    from volnas.search.ranking import inherited_net, path_of

    torch.manual_seed(0)
    supernet = SuperNet(tiny_space, 1, 2).eval()
    path = draw_paths(supernet, 1, 3)[0]
    net = inherited_net(supernet, supernet.genotype(path)).eval()
    assert path_of(supernet, supernet.genotype(path)) == path
    supernet.fixed_path = path
    x = torch.randn(2, 1, 8, 16, 16)
    with torch.no_grad():
        assert torch.allclose(net(x), supernet(x), atol=1e-6)


# ------------------------------------------------------------------ a search that must decide

# One searchable layer after the stem and a calibration layer: three candidates that output
# zeros (the class cannot be read behind them) and "skip", which passes the features on.
TOY_CANDIDATES = ("zero_a", "zero_b", "skip", "zero_c")
SOLVER = TOY_CANDIDATES.index("skip")


class _Zero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0.0


@pytest.fixture
def toy_space(monkeypatch: pytest.MonkeyPatch) -> str:
    import volnas.models.genotype as genotype_mod
    import volnas.search.supernet as supernet_mod
    from volnas.models.mbconv import OPS, LayerSpec

    for name in TOY_CANDIDATES:
        if name != "skip":
            monkeypatch.setitem(OPS, name, lambda cin, cout, stride: _Zero())
    specs = [LayerSpec("stem", "stem", -1, 4, ("conv_s1",)),
             LayerSpec("cell1.calib", "calib", 4, 4, ("conv_s2",)),
             LayerSpec("cell1.layer1", "normal", 4, 4, TOY_CANDIDATES)]
    real = genotype_mod.layer_specs

    def layer_specs(space: str, spatial: tuple[int, ...] | None = None,
                    rule: str = "end") -> list[LayerSpec]:
        return list(specs) if space == "toy-decide" else real(space, spatial, rule)

    monkeypatch.setattr(genotype_mod, "layer_specs", layer_specs)
    monkeypatch.setattr(supernet_mod, "layer_specs", layer_specs)
    return "toy-decide"


def _toy_data(n: int, seed: int) -> TensorDataset:
    """Class 1 has a bright cube in the middle: its mean intensity tells the class."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.rand(n, 1, 8, 8, 8, generator=g)
    x[y == 1, :, 2:6, 2:6, 2:6] += 1.0
    return TensorDataset(x, y)


def _toy_search(space: str, run_dir: Path, epochs: int, **settings: float) -> SuperNet:
    torch.manual_seed(0)
    cfg = SearchConfig.model_validate({
        "data": "unused", "space": space, "preprocess": {"slices": 8, "size": (8, 8)},
        "search_epochs": epochs, "batch_size": 16, "bn_recalibration": 2, **settings})
    net = SuperNet(space, 1, 2)
    trainer = SearchTrainer(net, cfg.search_train_config(), cfg, cfg.preprocess.input_shape,
                            class_names=["a", "b"], positive_class="b",
                            device=torch.device("cpu"), run_dir=run_dir)

    def loader(ds: TensorDataset, seed: int) -> DataLoader:
        return DataLoader(ds, 16, shuffle=True, generator=torch.Generator().manual_seed(seed))

    # 64 scans per half, batch 16: 4 architecture steps per epoch
    paired = PairedLoader(loader(_toy_data(64, 1), 1), loader(_toy_data(64, 2), 2), seed=1)
    trainer.fit(paired, DataLoader(_toy_data(32, 3), 16))
    return net


def test_toy_search_decides_on_the_only_solving_candidate(tmp_path: Path, toy_space: str) -> None:
    """Where one candidate alone can solve the task, the search ends decided on it.

    With a logit step (arch_lr 0.05) and weight lr (0.01) large enough for 80 steps; today's
    defaults (1e-3, 3e-4) do not decide here: see the next test."""
    net = _toy_search(toy_space, tmp_path, 20, arch_lr=0.05, weight_lr=0.01)
    decision = net.alpha.decision()
    assert decision["entropy_ratio"] <= 0.6, decision
    assert net.alpha.argmax() == [SOLVER]
    assert net.genotype().ops[-1] == "skip"


def test_default_search_decides_the_toy(tmp_path: Path, toy_space: str) -> None:
    """The defaults (a third of the epochs warm-up, weight lr 1e-3, the logits' lr from
    arch_travel) decide the toy on the solving candidate. With the earlier defaults (no
    warm-up, weight lr 3e-4, logit lr 1e-3: 80 steps move a logit by <= 0.08, while a row of
    4 needs a gap of ~2.3 for an entropy ratio of 0.6) it stays at its start."""
    net = _toy_search(toy_space, tmp_path / "new", 20)
    decision = net.alpha.decision()
    assert decision["entropy_ratio"] <= 0.6, decision
    assert net.alpha.argmax() == [SOLVER]
    old = _toy_search(toy_space, tmp_path / "old", 20, arch_lr=1e-3, weight_lr=3e-4,
                      warmup_epochs=0, branch_gradient=False)
    moved = max(float(t.detach().abs().max()) for t in old.alpha.logits)
    assert 0 < moved <= 80 * 1e-3 * 1.05
    assert old.alpha.decision()["entropy_ratio"] > 0.99


# ------------------------------------------------------------------ benchmark cells


def test_benchmark_runs_a_random_search_cell(tmp_path: Path, tiny_space: str) -> None:
    """``SPACE:random`` is a search cell of its own, beside the space's differentiable one."""
    from volnas.benchmark.cells import BenchmarkError, cell_name, check_names, search_config
    from volnas.benchmark.run import run_benchmark

    assert cell_name(f"{tiny_space}:random") != cell_name(tiny_space)
    cfg = search_config({}, "d.npz", f"{tiny_space}:random", 0)
    assert (cfg.space, cfg.strategy) == (tiny_space, "random")
    assert search_config({}, "d.npz", tiny_space, 0).strategy == "differentiable"
    with pytest.raises(BenchmarkError, match="unknown strategy 'genetic'"):
        check_names([], [f"{tiny_space}:genetic"])
    assert search_config({}, "d.npz", f"{tiny_space}:evolution", 0).strategy == "evolution"
    data = write_tiny_npz(tmp_path / "d.npz")
    report = run_benchmark(data, [], [f"{tiny_space}:random"], seeds=1, out=tmp_path / "b",
                           overrides={"random_samples": 2, "probe_epochs": 1, "epochs": 1,
                                      "batch_size": 8, "slices": 8, "size": (16, 16)})
    assert not report["failed"]
    (row,) = report["rows"]
    assert row["name"] == f"{tiny_space}_random" and row["n_done"] == 1
    result = json.loads((tmp_path / "b" / "runs" / row["name"] / "seed0" / "result.json").read_text())
    assert result["strategy"] == "random" and len(result["probes"]) == 2
    # the report's search time is the probes' (a random search's whole search), not the draw
    (run,) = row["runs"]
    assert run["seconds"] == pytest.approx(result["total_seconds"] - result["retrain_seconds"])
    assert run["seconds"] >= result["probe_seconds"] > 0


# ------------------------------------------------------------------ space ceiling


def test_space_ceiling_members_build_with_their_sizes(tmp_path: Path) -> None:
    """benchmarks/space_ceiling.py writes genotype files the model registry builds; their
    sizes are the supernet's for the same path, and the choices are the ones named."""
    import importlib.util

    from volnas.models.registry import create_model
    from volnas.search.ranking import path_of

    spec = importlib.util.spec_from_file_location("space_ceiling",
                                                  REPO / "benchmarks" / "space_ceiling.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sizes = mod.write_members(tmp_path, ["covidnet3d-s", "medpipe"], num_classes=3)
    assert len(sizes) == 6
    for path, n in sizes.items():
        geno = mod.Genotype.load(path)
        net = create_model(f"genotype:{path}", in_channels=1, num_classes=3)
        assert sum(p.numel() for p in net.parameters()) == n
        supernet = SuperNet(geno.space, 1, 3)
        assert supernet.path_params(path_of(supernet, geno)) == n
        assert supernet.feasible(path_of(supernet, geno))  # within the stride budget
    k3e6 = mod.Genotype.load(tmp_path / "covidnet3d-s-all-k3e6.json")
    assert [op for op, s in zip(k3e6.ops, k3e6.specs, strict=True) if s.kind == "normal"] == ["k3e6"] * 21
    mbv2 = mod.Genotype.load(tmp_path / "medpipe-mbv2-like.json")
    normal = [op for op, s in zip(mbv2.ops, mbv2.specs, strict=True) if s.kind == "normal"]
    assert normal.count("k3e6") == 1 + 2 + 3 + 2 + 2 + 0 and normal.count("skip") == 21 - 10
    assert mbv2.ops[0] == "conv_s1" and mbv2.ops[-2] == "conv_s1"  # MedPipe's strides
    size = {p.stem: n for p, n in sizes.items()}
    assert size["covidnet3d-s-all-k3e6"] > size["covidnet3d-s-all-k5e4"] > size["covidnet3d-s-mbv2-like"]
    # fitted to 28^3 like a search: "end" keeps cell 1's stride, "cell1" moves it to the end
    calib = {}
    for rule in ("end", "cell1"):
        geno = mod.hand_picked("covidnet3d-s", 2, (1, 28, 28, 28), rule)["all-k3e6"]
        calib[rule] = [op for op, sp in zip(geno.ops, geno.specs, strict=True) if sp.kind != "normal"]
        assert geno.extra["stride_rule"] == rule
    assert calib["end"][:3] == ["conv_s2", "conv_s2", "conv_s2"]
    assert calib["cell1"][:3] == ["conv_s2", "conv_s1", "conv_s2"]


def test_search_ensemble_retrains_the_top_k(tmp_path: Path, tiny_space: str) -> None:
    """--ensemble 2: the second-best probe is retrained beside final/, and their ensemble
    is evaluated on the test split and exported; a resumed search reads it back."""
    data = write_tiny_npz(tmp_path / "d.npz")
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["search", "--data", str(data), "--space", tiny_space,
                                   "--out", str(out), *RANDOM, "--ensemble", "2"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    result = json.loads((out / "result.json").read_text())
    assert result["ensemble_members"] == ["final", "ensemble/member02"]
    ranked = sorted(result["probes"], key=lambda p: -p["probe_score"])
    second = json.loads((out / "ensemble" / "member02" / "genotype.json").read_text())
    assert second["genotype"] == ranked[1]["genotype"] != result["genotype"]
    assert (out / "ensemble" / "member02" / "metrics.json").is_file()
    record = json.loads((out / "ensemble" / "evaluation" / "ensemble.json").read_text())
    assert [m["path"] for m in record["members"]] == [
        str((out / "final").resolve()), str((out / "ensemble" / "member02").resolve())]
    metrics = json.loads((out / "ensemble" / "evaluation" / "metrics.json").read_text())
    assert metrics["n_members"] == 2 and metrics["split"] == "test" and metrics["n_scans"] == 6
    bundle = json.loads((out / "ensemble" / "bundle" / "bundle.json").read_text())
    assert bundle["kind"] == "ensemble" and len(bundle["members"]) == 2
    assert "ensemble of 2: test acc" in "".join(res.output.split("\n"))
    again = CliRunner().invoke(app, ["search", "--out", str(out), "--resume"])
    assert again.exit_code == 0, again.output + repr(again.exception)
    assert json.loads((out / "ensemble" / "evaluation" / "metrics.json").read_text()) == metrics


def test_default_strategy_is_random_unless_the_policy_is_searched() -> None:
    """Random search is the default for architecture searches (the differentiable one did not
    beat it: docs/results/strategies-adrenal28.md); a policy search needs the differentiable
    one; a saved run from before the default changed resumes as what it was."""
    from volnas.search.config import SearchConfig

    assert SearchConfig(data="d.npz").strategy == "random"
    assert SearchConfig(data="d.npz", space="medpipe").strategy == "differentiable"  # joint
    assert SearchConfig(data="d.npz", space="medpipe", augment_search="off").strategy == "random"
    assert SearchConfig(data="d.npz", strategy="evolution").strategy == "evolution"
    old = SearchConfig(data="d.npz").model_dump(mode="json")
    del old["strategy"]
    assert SearchConfig.from_saved(old).strategy == "differentiable"


def test_strides_are_fitted_to_the_search_input_except_in_older_runs() -> None:
    from volnas.search.config import SearchConfig

    cfg = SearchConfig(data="d.npz", preprocess={"slices": 28, "size": (28, 28)})
    assert cfg.fit_input == (28, 28, 28)
    assert SearchConfig(data="d.npz", preprocess={"slices": 64, "size": (96, 96)}, search_slices=16,
                        search_size=(48, 48)).fit_input == (16, 48, 48)
    assert SearchConfig(data="d.npz", fit_strides=False).fit_input is None
    old = cfg.model_dump(mode="json")
    del old["fit_strides"]
    assert SearchConfig.from_saved(old).fit_input is None


def test_ranking_benchmark_reads_a_random_searchs_probes(tmp_path: Path) -> None:
    """bench_ranking --standalone-from: a random search's probes are its architectures and
    stand-alone scores; a run of another input's fitted strides is refused."""
    import importlib.util

    import yaml

    spec = importlib.util.spec_from_file_location("bench_ranking",
                                                  REPO / "benchmarks" / "bench_ranking.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = SearchConfig(data="x.npz", space="covidnet3d-s",
                       preprocess={"slices": 28, "size": (28, 28)})
    net = SuperNet("covidnet3d-s", 1, 2, spatial=cfg.fit_input)
    paths = [[0] * len(net.alpha), [1] * len(net.alpha)]
    probes = [{"genotype": net.genotype(p).to_string(), "probe_score": s,
               "probe_val": {"accuracy": 0.8, "f1": 0.5, "auc": s, "loss": 0.4}}
              for p, s in zip(paths, (0.71, 0.75), strict=True)]
    run = tmp_path / "random"
    run.mkdir()
    (run / "search_config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    (run / "result.json").write_text(json.dumps({"probes": probes}))
    got = mod.standalone_of(run, cfg, 2)
    assert [g.to_string() for g, _ in got] == [p["genotype"] for p in probes]
    assert [r["score"] for _, r in got] == [0.71, 0.75]
    assert mod.kendall_tau([0.1, 0.2], [r["score"] for _, r in got]) == 1.0
    other = cfg.model_copy(update={"search_slices": 56, "search_size": (56, 56)})
    with pytest.raises(SystemExit, match="fitted to"):
        mod.standalone_of(run, other, 2)


def test_paired_probes_pairs_the_same_draws_and_refuses_others(tmp_path: Path) -> None:
    """benchmarks/paired_probes.py pairs two random searches draw by draw, ignoring the fixed
    layers' strides, and refuses a pair whose searchable choices differ."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("paired_probes",
                                                  REPO / "benchmarks" / "paired_probes.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    def write(run: Path, rows: list[tuple[int, float, str]]) -> Path:
        run.mkdir()
        lines = ["rank,draw,probe_score,params,genotype"]
        lines += [f'{i},{d},{s},100,"{g}"' for i, (d, s, g) in enumerate(rows, 1)]
        (run / "probes.csv").write_text("\n".join(lines) + "\n")
        return run

    g1, g2 = "s[conv_s2|conv_s2:k3e3,skip|pw_s1:k5e4]", "s[conv_s2|conv_s2:k7e4,k3e6|pw_s1:skip]"
    a = write(tmp_path / "a", [(1, 0.70, g1), (2, 0.80, g2)])
    b = write(tmp_path / "b", [(2, 0.85, g2.replace("conv_s2:k7", "conv_s1:k7")),
                               (1, 0.71, g1.replace("pw_s1", "pw_s1x2x2"))])
    got = mod.pair(a, b)
    assert [(d, sa, sb) for d, sa, sb in got] == [(1, 0.70, 0.71), (2, 0.80, 0.85)]
    mean, lo, hi = mod.summarise(np.array([sb - sa for _, sa, sb in got]))
    assert mean == pytest.approx(0.03) and lo == pytest.approx(0.01) and hi == pytest.approx(0.05)
    c = write(tmp_path / "c", [(1, 0.9, g2)])
    with pytest.raises(SystemExit, match="drew different networks"):
        mod.pair(a, c)
