"""Data-parallel training and search: 2 CPU processes on gloo over loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from volnas.data.synth import synthesize

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gn_model() -> nn.Module:
    """A small net with GroupNorm: per-rank batch statistics cannot differ from one process."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv3d(1, 8, 3, stride=2, padding=1), nn.GroupNorm(2, 8), nn.ReLU(),
        nn.Conv3d(8, 16, 3, stride=2, padding=1), nn.GroupNorm(4, 16), nn.ReLU(),
        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(16, 2))


def _worker(rank: int, world: int, port: int, kind: str, cfg: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from volnas.search.run import load_search_config, run_search
    from volnas.search.search import SearchTrainer
    from volnas.training.config import TrainConfig
    from volnas.training.run import run_training

    report: dict = {"rank": rank}
    if kind == "evolution":
        result = run_search(load_search_config(None, cfg), Path(out) / "run")
        report.update(genotype=result["genotype"], front=result["front"],
                      generations=result["generations"])
    elif kind == "train":
        m = run_training(TrainConfig.model_validate(cfg), Path(out) / "run", model=_gn_model())
        report["metrics"] = {k: m[k] for k in ("accuracy", "auc", "loss", "n_scans")}
    else:
        logits: list = []
        real_end = SearchTrainer.on_epoch_end

        def spy(self, epoch, row):
            logits.append([a.detach().tolist() for a in self.supernet.alpha.logits])
            grads = [p.grad for p in self.supernet.weight_parameters() if p.grad is not None]
            report["grad_norm"] = float(sum(g.norm() ** 2 for g in grads) ** 0.5)
            real_end(self, epoch, row)

        SearchTrainer.on_epoch_end = spy
        run_search(load_search_config(None, cfg), Path(out) / "run")
        report["logits"] = logits
    Path(out, f"rank{rank}.json").write_text(json.dumps(report))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    res = synthesize(root / "data", scans=40, fmt="npz", classes=2, shape=(8, 16, 16), seed=5)
    return next(res.out.glob("*.npz"))


def _train_cfg(data: Path, tmp: Path, batch: int) -> dict:
    return {"data": str(data), "model": "custom", "epochs": 2, "batch_size": batch, "seed": 3,
            "augment": "none", "lr": 3e-3,
            "preprocess": {"slices": 8, "size": [16, 16], "intensity": "range", "window": [0, 255]},
            "cache_dir": str(tmp / "cache")}


def test_two_ranks_equal_one_process_with_double_batch(tiny_npz: Path, tmp_path: Path) -> None:
    os.environ.pop("WORLD_SIZE", None)
    single = tmp_path / "single"
    single.mkdir()
    _worker_single(_train_cfg(tiny_npz, tmp_path, batch=4), single)
    ddp = tmp_path / "ddp"
    ddp.mkdir()
    mp.spawn(_worker, args=(2, _free_port(), "train", _train_cfg(tiny_npz, tmp_path, 2), str(ddp)),
             nprocs=2, join=True)
    # one run folder, written by rank 0, with the files a single process writes
    assert (ddp / "run" / "metrics.json").exists() and (ddp / "run" / "model.safetensors").exists()
    r0, r1 = (json.loads((ddp / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["metrics"] == pytest.approx(r1["metrics"])  # both ranks agree
    one = json.loads((single / "report.json").read_text())["metrics"]
    for k in ("accuracy", "auc", "loss"):
        assert r0["metrics"][k] == pytest.approx(one[k], abs=1e-4), k
    from volnas.core.files import load_tensors

    a = load_tensors(single / "run" / "model.safetensors")
    b = load_tensors(ddp / "run" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def _worker_single(cfg: dict, out: Path) -> None:
    from volnas.training.config import TrainConfig
    from volnas.training.run import run_training

    m = run_training(TrainConfig.model_validate(cfg), out / "run", model=_gn_model())
    (out / "report.json").write_text(json.dumps({"metrics": {k: m[k] for k in
                                                             ("accuracy", "auc", "loss")}}))


def test_search_logits_identical_on_both_ranks(tiny_npz: Path, tmp_path: Path) -> None:
    # unfitted strides (1^3 late maps) keep it cheap; fitting is tested in test_search
    cfg = {"data": str(tiny_npz), "space": "covidnet3d-s", "strategy": "differentiable",
           "fit_strides": False,
           "search_epochs": 2, "topk": 1,
           "probe_epochs": 1, "retrain_epochs": 1, "batch_size": 2, "seed": 1, "arch_lr": 0.05,
           "preprocess": {"slices": 8, "size": [16, 16], "intensity": "range", "window": [0, 255]},
           "cache_dir": str(tmp_path / "cache")}
    mp.spawn(_worker, args=(2, _free_port(), "search", cfg, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert len(r0["logits"]) == 2
    for a, b in zip(r0["logits"], r1["logits"], strict=True):
        np.testing.assert_allclose(np.concatenate([np.ravel(x) for x in a]),
                                   np.concatenate([np.ravel(x) for x in b]), rtol=0, atol=1e-7)
    moved = np.abs(np.concatenate([np.ravel(x) for x in r0["logits"][-1]])).max()
    assert moved > 1e-3  # the logits did move
    assert r0["grad_norm"] == pytest.approx(r1["grad_norm"], rel=1e-5)  # synchronised gradients
    assert (tmp_path / "run" / "final" / "metrics.json").exists()
    assert len(list((tmp_path / "run" / "search" / "genotypes").glob("*.json"))) == 2


def test_evolution_decides_alike_on_both_ranks(tiny_npz: Path, tmp_path: Path) -> None:
    """Under 2 ranks the evolution's scores (gathered), fronts and pick are the same on
    both, and rank 0 writes the generations."""
    cfg = {"data": str(tiny_npz), "space": "covidnet3d-s", "strategy": "evolution",
           "fit_strides": False,
           "search_epochs": 1, "generations": 2, "population": 4, "retrain_epochs": 1,
           "batch_size": 2, "seed": 1, "bn_batches": 2,
           "preprocess": {"slices": 8, "size": [16, 16], "intensity": "range", "window": [0, 255]},
           "cache_dir": str(tmp_path / "cache")}
    mp.spawn(_worker, args=(2, _free_port(), "evolution", cfg, str(tmp_path)), nprocs=2,
             join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["generations"] == r1["generations"] == 2
    assert r0["genotype"] == r1["genotype"] and r0["front"] == r1["front"]
    gens = sorted((tmp_path / "run" / "search" / "generations").glob("gen_*.json"))
    assert [g.name for g in gens] == ["gen_000.json", "gen_001.json", "gen_002.json"]
    assert (tmp_path / "run" / "final" / "metrics.json").exists()


def test_torchrun_cli_train(tiny_npz: Path, tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", VOLNAS_CACHE_DIR=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "volnas", "train", "--data", str(tiny_npz), "--model", "r3d_18",
           "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "2",
           "--slices", "8", "--size", "16x16"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["n_scans"] > 0
