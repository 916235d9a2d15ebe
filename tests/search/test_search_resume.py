"""``volnas search --resume`` after a kill -9 gives exactly what an unbroken run gives.

A chain of processes: the first is killed at a named point (``VOLNAS_CRASH_AT``), the
resumed one at the next point (in the search, its checkpoint write, after the search,
in a probe, in the retrain), and so on to the end; the run folder must then match an
unbroken run's file for file (search log, genotypes, checkpoints, probes, chosen
genotype, final weights and test metrics), wall times aside.

The processes register a narrow space with medpipe's structure (searched strides under
the stride budget, one layer per cell) before calling the CLI's ``main()``, so that a
process costs its start-up and not its network.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tiny_search import TINY

from volnas.core.files import LOCK_NAME

REPO = Path(__file__).resolve().parents[2]


RUNNER = f"""
import sys
from volnas.models.spaces import SPACES, SpaceDef
SPACES["tiny-strides"] = SpaceDef(*{TINY!r})
from volnas.cli.main import main
sys.argv = ["volnas", *sys.argv[1:]]
main()
"""

# 16 training scans: 8 per search half (2 search steps per epoch), 4 steps per probe or
# retrain epoch; "train.step" also counts search steps (the search runs the same loop).
# Architecture and augmentation search with searched strides: every generator is drawn.
OPTIONS = ["--space", "tiny-strides", "--augment-search", "joint", "--epochs", "3",
           "--slices", "8", "--size", "16x16", "--batch-size", "4", "--topk", "2",
           "--probe-epochs", "1", "--retrain-epochs", "2"]
KILLS = [
    "search.step#3",        # search epoch 2, mid-epoch
    "checkpoint.record#2",  # epoch 3's checkpoint: weights written, record not
    "search.done",          # search finished (done.json written), no probe started
    "train.step#6",         # the second probe, mid-epoch
    "train.step#10",        # the second probe again, then the retrain's epoch 2, mid-epoch
]


def _write_npz(path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 16), ("val", 6), ("test", 6)):
        y = np.arange(n) % 2
        x = rng.integers(0, 80, (n, 8, 16, 16)).astype(np.uint8)
        x[y == 1, :, 4:12, 4:12] += 100
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = x, y[:, None]
    np.savez(path, **arrays)


def _search(args: list[str], crash_at: str | None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "VOLNAS_CRASH_AT"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    if crash_at:
        env["VOLNAS_CRASH_AT"] = crash_at
    return subprocess.Popen([sys.executable, "-c", RUNNER, "search", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, expected: int, what: str) -> None:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == expected, (
        f"{what}: exit {proc.returncode}, expected {expected}\n{out[-4000:]}")


def _clean(obj: Any, run: str) -> Any:
    """JSON without wall times, with the run folder's own path replaced."""
    if isinstance(obj, dict):
        return {k: _clean(v, run) for k, v in obj.items()
                if k != "seconds" and not k.endswith("_seconds")}
    if isinstance(obj, list):
        return [_clean(v, run) for v in obj]
    if isinstance(obj, str):
        return obj.replace(run, "RUN")
    return obj


def _read(path: Path, run: Path) -> Any:
    """A file's content for comparison: wall times dropped, the run folder's path replaced."""
    if path.suffix == ".safetensors":
        return load_file(str(path))
    text = path.read_text().replace(str(run), "RUN")
    if path.suffix == ".json":
        return _clean(json.loads(text), "RUN")
    if path.suffix == ".csv":
        rows = list(csv.reader(text.splitlines()))
        keep = [i for i, name in enumerate(rows[0]) if name != "seconds"] if rows else []
        return [[r[i] for i in keep] for r in rows]
    return text


STAGES = ("search_config", "search/", "probes", "genotype", "final/", "result")


def _assert_same_run(ref: Path, got: Path) -> None:
    """Every file of ``got`` equals ``ref``'s (PNGs and wall times aside); the message lists
    the differing files in stage order, so the first one is where the runs parted."""
    def files(run: Path) -> list[str]:  # the folders' locks hold their writer's pid
        return sorted(str(p.relative_to(run)) for p in run.rglob("*")
                      if p.is_file() and p.name != LOCK_NAME)

    ref_files, got_files = files(ref), files(got)
    assert got_files == ref_files, "the resumed run's files differ from the unbroken run's"
    order = sorted(ref_files, key=lambda n: [n.startswith(s) for s in STAGES].index(True))
    differ = []
    for name in order:
        if name.endswith(".png"):
            continue
        a, b = _read(ref / name, ref), _read(got / name, got)
        if name.endswith(".safetensors"):
            same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        else:
            same = a == b
        if not same:
            differ.append(name)
    assert not differ, f"differ from the unbroken run: {differ}"


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    _write_npz(path)
    return path


def test_killed_and_resumed_search_equals_unbroken_run(tiny_npz: Path, tmp_path: Path) -> None:
    ref, resumed = tmp_path / "unbroken", tmp_path / "resumed"
    first = ["--data", str(tiny_npz), *OPTIONS]
    unbroken = _search([*first, "--out", str(ref)], None)  # beside the chain: 2 cores
    for i, point in enumerate([*KILLS, None]):
        args = [*first, "--out", str(resumed)] if i == 0 else ["--out", str(resumed), "--resume"]
        _finish(_search(args, point), -9 if point else 0, f"run {i} ({point or 'to the end'})")
    _finish(unbroken, 0, "unbroken run")
    log = list(csv.DictReader((ref / "search" / "search_log.csv").open()))
    assert [r["epoch"] for r in log] == ["1", "2", "3"]
    assert all(r["policy_json"] for r in log)  # the augmentation logits were searched
    _assert_same_run(ref, resumed)


# ---- the random streams themselves (fast, in-process) -------------------------------------


def _trainer(tmp_path: Path) -> Any:
    from volnas.search.config import SearchConfig
    from volnas.search.search import SearchTrainer
    from volnas.search.supernet import SuperNet

    search = SearchConfig(data="x.npz", space="tiny-strides", augment_search="joint", seed=4)
    return SearchTrainer(SuperNet("tiny-strides"), search.search_train_config(), search,
                         (1, 8, 16, 16), class_names=["0", "1"], positive_class="1",
                         device=torch.device("cpu"), run_dir=tmp_path)


def _draws(trainer: Any) -> tuple[list[list[int]], torch.Tensor]:
    """Three sampled paths (with stride-budget redraws) and one augmented batch."""
    paths = [trainer.supernet.sample_path() for _ in range(3)]
    x = torch.rand((2, 1, 8, 16, 16), generator=torch.Generator().manual_seed(0))
    return paths, trainer.augment(x)


def test_search_draws_depend_only_on_seed_and_epoch(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from volnas.models.spaces import SPACES, SpaceDef

    monkeypatch.setitem(SPACES, "tiny-strides", SpaceDef(*TINY))
    unbroken = _trainer(tmp_path)
    unbroken._seed_epoch(1)
    _draws(unbroken)  # epoch 1 advances the generators
    unbroken._seed_epoch(2)
    paths, batch = _draws(unbroken)
    resumed = _trainer(tmp_path)  # a process resumed after epoch 1 (or another rank)
    torch.manual_seed(123)  # whatever the global generator went through before
    resumed._seed_epoch(2)
    paths_r, batch_r = _draws(resumed)
    assert paths_r == paths and torch.equal(batch_r, batch)
    resumed._seed_epoch(3)
    assert _draws(resumed)[0] != paths  # each epoch has its own draws


class _EpochData(torch.utils.data.TensorDataset):
    epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


def _loader(n: int, seed: int) -> torch.utils.data.DataLoader:
    from volnas.core.distributed import ShardedBatchSampler

    data = _EpochData(torch.arange(n), torch.zeros(n, dtype=torch.long))
    return torch.utils.data.DataLoader(data, batch_sampler=ShardedBatchSampler(
        n, 2, shuffle=True, seed=seed, rank=0, world_size=1, drop_last=True))


def test_architecture_batches_depend_only_on_seed_and_epoch() -> None:
    from volnas.search.search import PairedLoader

    def arch_order(global_seed: int, epoch: int) -> list[list[int]]:
        paired = PairedLoader(_loader(4, 0), _loader(8, 1), seed=1)
        paired.dataset.set_epoch(epoch)
        torch.manual_seed(global_seed)
        return [a.tolist() for _, (a, _) in paired]

    assert arch_order(0, 2) == arch_order(99, 2)
    assert arch_order(0, 2) != arch_order(0, 3)
