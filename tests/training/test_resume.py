"""Resume keeps the run it continues: kill -9 anywhere, then the README's resume line gives
what an unbroken run gives; options that would change the run are refused; failed starts
leave nothing behind; killed writes leave no temporaries; files follow the umask."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

import volnas
from volnas.cli.main import app
from volnas.core.files import atomic_write_text, load_tensors, save_tensors
from volnas.data.synth import synthesize
from volnas.models.genotype import Genotype
from volnas.models.spaces import layer_specs
from volnas.search.config import SearchConfig
from volnas.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]
SRC = Path(volnas.__file__).resolve().parents[1]  # the sources under test, for subprocesses
runner = CliRunner()


def _readme_resume_line() -> list[str]:
    """The train resume command exactly as README.md shows it (without the comment)."""
    m = re.search(r"^(volnas train --out \S+ --resume)\s*(#.*)?$", (REPO / "README.md").read_text(),
                  re.M)
    assert m, "README.md lost its `volnas train --out ... --resume` line"
    return m.group(1).split()[1:]


RESUME_ARGS = _readme_resume_line()
RUN = RESUME_ARGS[RESUME_ARGS.index("--out") + 1]  # runs/r18


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny npz data, a small genotype and a finished 3-epoch reference run (in process)."""
    root = tmp_path_factory.mktemp("resume")
    res = synthesize(root / "data", scans=30, fmt="npz", classes=2, shape=(8, 16, 16), seed=3)
    specs = layer_specs("medpipe")
    ops = ["skip" if s.kind == "normal" else ("conv_s2" if i < 3 else "conv_s1")
           for i, s in enumerate(specs)]
    Genotype("medpipe", ops).save(root / "g.json")
    # the cache the autouse fixture of conftest.py gives every test (and so the subprocesses)
    paths = {"root": root, "data": next(res.out.glob("*.npz")), "genotype": root / "g.json",
             "cache": tmp_path_factory.getbasetemp() / "cache"}
    ref = root / "ref"
    import volnas.training.trainer as trainer_mod

    log: list[str] = []  # "best" (model.safetensors written) and "ckpt" (an epoch's checkpoint)

    def spy(real, what):
        def call(*a, **kw):
            log.append(what)
            return real(*a, **kw)
        return call

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VOLNAS_CACHE_DIR", str(paths["cache"]))
        mp.setattr(trainer_mod, "save_tensors", spy(trainer_mod.save_tensors, "best"))
        mp.setattr(trainer_mod, "save_training_state",
                   spy(trainer_mod.save_training_state, "ckpt"))
        # one thread, as the subprocesses: CPU kernels on several threads may sum in another
        # order from run to run, and the comparison is bit for bit
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            result = runner.invoke(app, ["train", *_start_args(paths, ref)])
        finally:
            torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert log.count("ckpt") == 3
    paths["ref"] = ref
    paths["best_epochs"] = [log[:i].count("ckpt") + 1 for i, w in enumerate(log) if w == "best"]
    return paths


def _start_args(tiny: dict[str, Path], out: Path | str) -> list[str]:
    return ["--data", str(tiny["data"]), "--model", f"genotype:{tiny['genotype']}", "--out",
            str(out), "--epochs", "3", "--slices", "8", "--size", "16x16", "--batch-size", "4",
            "--seed", "5", "--device", "cpu"]


def _volnas(args: list[str], cwd: Path, crash_at: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "VOLNAS_CRASH_AT"}
    env.update({"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "COLUMNS": "200"})
    if crash_at:
        env["VOLNAS_CRASH_AT"] = crash_at
    return subprocess.run([sys.executable, "-m", "volnas", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _history(run: Path) -> list[dict[str, str]]:
    with (run / "history.csv").open(newline="") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def _same_weights(a: Path, b: Path) -> None:
    ta, tb = load_tensors(a), load_tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), f"{a.name}: {k} differs"


def _temporaries(run: Path) -> list[Path]:
    return [p for p in run.rglob(".*.tmp")]


def test_kill9_anywhere_then_readme_resume_equals_an_unbroken_run(tiny, tmp_path: Path) -> None:
    """One run killed three times (inside the best epoch's model.safetensors write, between a
    checkpoint's weights and its last.json, in the middle of an epoch's steps), each time
    resumed with the README's line and nothing else."""
    ref = tiny["ref"]
    ref_hist = _history(ref)
    assert len(ref_hist) == 3
    run = tmp_path / RUN
    steps = -(-json.loads((ref / "run.json").read_text())["n_train"] // 4)  # batches per epoch
    best = tiny["best_epochs"]  # epochs that wrote model.safetensors
    k = best[-1]

    def checkpoint_epoch() -> int:
        last = run / "checkpoint" / "last.json"
        return json.loads(last.read_text())["epoch"] if last.exists() else 0

    # 1. killed while the last best epoch k writes model.safetensors
    done = _volnas(["train", *_start_args(tiny, RUN)], tmp_path,
                   f"write:model.safetensors#{len(best)}")
    assert done.returncode == -9, done.stderr
    assert [p.name.split(".")[1] for p in _temporaries(run)] == ["model"]
    assert checkpoint_epoch() == k - 1 and not (run / "metrics.json").exists()
    # 2. killed between epoch k's checkpoint weights and its last.json
    done = _volnas(RESUME_ARGS, tmp_path, "checkpoint.record")
    assert done.returncode == -9, done.stderr
    assert not _temporaries(run)  # the killed write's temporary is gone
    assert checkpoint_epoch() == k - 1
    assert (run / "checkpoint" / f"epoch_{k:04d}.safetensors").is_file()  # unrecorded
    # 3. killed in the middle of an epoch's steps (the next one's, or epoch 3's)
    nth = steps + 2 if k < 3 else 2
    done = _volnas(RESUME_ARGS, tmp_path, f"train.step#{nth}")
    assert done.returncode == -9, done.stderr
    assert checkpoint_epoch() == (k if k < 3 else k - 1)
    # 4. the README's line finishes it
    done = _volnas(RESUME_ARGS, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resumed after epoch" in done.stdout

    assert (run / "config.yaml").read_text() == (ref / "config.yaml").read_text()
    assert yaml.safe_load((run / "config.yaml").read_text())["epochs"] == 3
    assert _history(run) == ref_hist
    got, want = (json.loads((d / "metrics.json").read_text()) for d in (run, ref))
    for m in (got, want):
        m.pop("train_seconds"), m.pop("run_seconds")
    assert got == want and got["best_epoch"] == k
    _same_weights(run / "model.safetensors", ref / "model.safetensors")
    _same_weights(run / "checkpoint" / "epoch_0003.safetensors",
                  ref / "checkpoint" / "epoch_0003.safetensors")
    assert not _temporaries(run)


# ---- what may be given at resume ------------------------------------------------------------


@pytest.fixture
def finished(tiny, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny["ref"], run)
    return run


def _invoke(*args: str) -> tuple[int, str]:
    res = runner.invoke(app, [str(a) for a in args])
    return res.exit_code, " ".join(res.output.split())


class _Stop(Exception):
    pass


def _capture_fit(monkeypatch) -> list[int]:
    """Trainer.fit records the epochs it was asked for and stops there."""
    seen: list[int] = []

    def fit(self, *a, **kw):
        seen.append(self.cfg.epochs)
        raise _Stop

    monkeypatch.setattr(Trainer, "fit", fit)
    return seen


def test_resume_continues_the_saved_configuration(finished: Path, monkeypatch) -> None:
    cfg_before = (finished / "config.yaml").read_bytes()
    # saved 4 epochs, 3 finished: the unset --epochs default (200) must not win
    (finished / "config.yaml").write_text(cfg_before.decode().replace("epochs: 3", "epochs: 4"))
    seen = _capture_fit(monkeypatch)
    with pytest.raises(_Stop):
        runner.invoke(app, ["train", "--out", str(finished), "--resume", "--device", "cpu",
                            "--workers", "0"], catch_exceptions=False)
    assert seen == [4]
    assert yaml.safe_load((finished / "config.yaml").read_text())["epochs"] == 4


def test_resume_refuses_options_that_change_the_run(finished: Path) -> None:
    before = {p: p.read_bytes() for p in finished.rglob("*") if p.is_file()}
    code, out = _invoke("train", "--out", finished, "--resume", "--lr", "0.01", "--slices", "9")
    assert code == 2
    assert "would change the run" in out and "lr (saved 0.001, given 0.01)" in out
    assert "slices (saved 8, given 9)" in out
    assert {p: p.read_bytes() for p in finished.rglob("*") if p.is_file()} == before
    # a value equal to the saved one is no change: accepted (here the run is finished)
    code, out = _invoke("train", "--out", finished, "--resume", "--slices", "8")
    assert code == 0, out


def test_epochs_may_extend_only_a_run_whose_epochs_all_finished(finished: Path, monkeypatch) -> None:
    cfg_text = (finished / "config.yaml").read_text()
    code, out = _invoke("train", "--out", finished, "--resume", "--epochs", "2")
    assert code == 2 and "epochs (saved 3, given 2)" in out
    (finished / "config.yaml").write_text(cfg_text.replace("epochs: 3", "epochs: 4"))
    code, out = _invoke("train", "--out", finished, "--resume", "--epochs", "6")
    assert code == 2 and "only 3 of its 4 epochs have finished" in out
    assert (finished / "config.yaml").read_text() == cfg_text.replace("epochs: 3", "epochs: 4")
    (finished / "config.yaml").write_text(cfg_text)
    seen = _capture_fit(monkeypatch)
    with pytest.raises(_Stop):
        runner.invoke(app, ["train", "--out", str(finished), "--resume", "--epochs", "5"],
                      catch_exceptions=False)
    assert seen == [5]
    assert yaml.safe_load((finished / "config.yaml").read_text())["epochs"] == 5
    info = json.loads((finished / "run.json").read_text())
    assert info["extended"] == [{"from_epochs": 3, "to_epochs": 5}]


def test_search_resume_refuses_options_that_change_the_search(tmp_path: Path) -> None:
    run = tmp_path / "s"
    run.mkdir()
    cfg = SearchConfig.model_validate({"data": str(tmp_path / "gone.npz"), "search_epochs": 2})
    (run / "search_config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    before = (run / "search_config.yaml").read_bytes()
    code, out = _invoke("search", "--out", run, "--resume", "--epochs", "5", "--topk", "3")
    assert code == 2
    assert "search_epochs (saved 2, given 5)" in out and "topk (saved 10, given 3)" in out
    assert (run / "search_config.yaml").read_bytes() == before
    assert sorted(p.name for p in run.iterdir()) == ["search_config.yaml"]


# ---- failed starts ----------------------------------------------------------------------------


def test_unknown_model_is_refused_before_data_or_folder(tiny, tmp_path: Path, monkeypatch) -> None:
    import volnas.training.run as run_mod

    def no_data(*a, **kw):
        raise AssertionError("data was opened")

    monkeypatch.setattr(run_mod, "open_source", no_data)
    out = tmp_path / "r"
    code, text = _invoke("train", "--data", tiny["data"], "--model", "resnet3d_9000", "--out", out)
    assert code == 2 and "unknown model 'resnet3d_9000'" in text and "resnet3d_18" in text
    assert not out.exists()
    code, text = _invoke("train", "--data", tiny["data"], "--model", "genotype:nope.json",
                         "--out", out)
    assert code == 2 and "nope.json" in text and not out.exists()


def test_failed_start_leaves_nothing_and_the_retry_runs(tiny, tmp_path: Path, monkeypatch) -> None:
    from volnas.data.dataset import ScanDataset
    from volnas.data.volume import DataError

    out = tmp_path / "r"
    code, text = _invoke("train", "--data", tmp_path / "missing.npz", "--out", out)
    assert code == 2 and "missing.npz" in text
    assert not out.exists()
    # unreadable data found while training: what this start made goes, an empty folder stays
    out.mkdir()

    def unreadable(self, i):
        raise DataError(Path(self.rows[i].path), "cannot read scan")

    monkeypatch.setattr(ScanDataset, "load", unreadable)
    code, text = _invoke("train", *_start_args(tiny, out))
    assert code == 2 and "cannot read scan" in text
    assert out.is_dir() and not any(out.iterdir())
    # search: unknown space and unreadable data leave no folder either
    code, text = _invoke("search", "--data", tiny["data"], "--space", "nope", "--out", out / "s")
    assert code == 2 and "unknown search space 'nope'" in text and not (out / "s").exists()
    code, text = _invoke("search", "--data", tmp_path / "missing.npz", "--out", out / "s")
    assert code == 2 and "missing.npz" in text and not (out / "s").exists()
    monkeypatch.undo()
    monkeypatch.setenv("VOLNAS_CACHE_DIR", str(tiny["cache"]))
    # ... so the same --out is not "already holds a run"
    seen = _capture_fit(monkeypatch)
    with pytest.raises(_Stop):
        runner.invoke(app, ["train", *_start_args(tiny, out)], catch_exceptions=False)
    assert seen == [3]


def test_an_earlier_runs_files_are_never_removed(finished: Path) -> None:
    before = sorted(p.name for p in finished.iterdir())
    code, text = _invoke("train", "--data", "/nonexistent.npz", "--out", finished)
    assert code == 2 and "already holds a run" in text
    assert sorted(p.name for p in finished.iterdir()) == before
    code, text = _invoke("train", "--model", "resnet3d_9000", "--out", finished, "--resume")
    assert code == 2 and "model (saved 'genotype:genotype.json', given 'resnet3d_9000')" in text
    assert sorted(p.name for p in finished.iterdir()) == before


def test_a_run_folder_in_use_is_refused(finished: Path, tiny, tmp_path: Path) -> None:
    """While one process writes a run folder (it holds the folder's lock), a second resume,
    a second search resume, or a new run in that folder is refused and changes nothing; the
    lock goes with the process, so the same commands then work."""
    from volnas.core.files import LOCK_NAME, run_dir_lock

    before = {p: p.read_bytes() for p in finished.rglob("*") if p.is_file()}
    with run_dir_lock(finished):
        code, text = _invoke("train", "--out", finished, "--resume")
        assert code == 2 and "in use by another volnas process" in text
        assert f"pid {os.getpid()}" in text
    assert {p: p.read_bytes() for p in finished.rglob("*") if p.is_file()} == before
    code, text = _invoke("train", "--out", finished, "--resume")
    assert code == 0, text
    search = tmp_path / "s"
    search.mkdir()
    cfg = SearchConfig.model_validate({"data": str(tiny["data"]), "search_epochs": 2})
    (search / "search_config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    with run_dir_lock(search):
        code, text = _invoke("search", "--out", search, "--resume")
        assert code == 2 and "in use by another volnas process" in text
    fresh = tmp_path / "fresh"
    with run_dir_lock(fresh):  # another process made the folder and is starting its run
        code, text = _invoke("train", *_start_args(tiny, fresh))
        assert code == 2 and "in use by another volnas process" in text
        assert [p.name for p in fresh.iterdir()] == [LOCK_NAME]


# ---- temporaries and permissions -------------------------------------------------------------


def test_stale_temporaries_of_the_run_are_removed(tmp_path: Path) -> None:
    from volnas.core.files import remove_stale_temporaries

    (tmp_path / "checkpoint").mkdir()
    stale = [tmp_path / ".model.safetensors.k2j_9xq1.tmp",
             tmp_path / "checkpoint" / ".epoch_0002.safetensors.abcdefgh.tmp",
             tmp_path / ".curves.0a1b2c3d.png.tmp"]
    kept = [tmp_path / "notes.tmp", tmp_path / ".hidden", tmp_path / ".x.tmp",
            tmp_path / "model.safetensors"]
    for p in stale + kept:
        p.write_text("x")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)


def test_atomic_writers_follow_the_umask(tmp_path: Path) -> None:
    from matplotlib.figure import Figure

    from volnas.data.cache import StackCache
    from volnas.data.preprocess import PreprocessConfig, StackGeometry
    from volnas.training.plots import _save

    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        save_tensors(tmp_path / "w.safetensors", {"x": torch.ones(2)})
        _save(Figure(), tmp_path / "p.png")
        cache = StackCache(PreprocessConfig(), tmp_path / "cache")
        cache._store(tmp_path / "cache" / "s.npy", tmp_path / "cache" / "s.json",
                     np.zeros((2, 4, 4), np.float32), StackGeometry((2, 4, 4), (4, 4), (0, 0)))
        for name in ("a.json", "w.safetensors", "p.png", "cache/s.npy", "cache/s.json"):
            assert (tmp_path / name).stat().st_mode & 0o777 == 0o640, name
    finally:
        os.umask(old)


def test_bundle_folder_follows_the_umask(tiny, tmp_path: Path) -> None:
    from volnas.deploy.bundle import export_bundle

    old = os.umask(0o022)
    try:
        out = export_bundle(tiny["ref"], tmp_path / "bundle")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o755
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in out.iterdir() if p.is_file())
