"""Trainer and run folders: artefacts, never overwriting, resume after a kill, test read once."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from volnas.core.files import load_tensors
from volnas.data.dataset import ScanDataset
from volnas.data.synth import synthesize
from volnas.training.config import TrainConfig, load_config
from volnas.training.evaluate import evaluate_run
from volnas.training.run import run_training
from volnas.training.rundir import RunDirError
from volnas.training.trainer import Trainer

METRIC_KEYS = {
    "accuracy", "precision", "sensitivity", "specificity", "f1", "auc", "positive_class",
    "confusion_matrix", "per_class", "weighted", "n_scans", "params", "model_size_mb",
    "flops_per_scan",
}



@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory,
        tiny_genotype) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("tiny")
    res = synthesize(root / "data", scans=30, fmt="npz", classes=2, shape=(12, 24, 24), seed=3)
    model = tiny_genotype(root / "tiny.json")
    return next(res.out.glob("*.npz")), model


def _cfg(data: Path, model: str, tmp: Path, **kw) -> TrainConfig:
    base = {"data": str(data), "model": model, "epochs": 3, "batch_size": 4, "seed": 7,
            "preprocess": {"slices": 12, "size": (24, 24), "intensity": "range", "window": (0, 255)},
            "cache_dir": str(tmp / "cache")}
    base.update(kw)
    return TrainConfig.model_validate(base)


def test_run_folder_artefacts_and_no_overwrite(tiny_data, tmp_path: Path) -> None:
    data, model = tiny_data
    cfg = _cfg(data, model, tmp_path, epochs=2)
    run = tmp_path / "run"
    metrics = run_training(cfg, run)
    for name in ("config.yaml", "run.json", "history.csv", "model.safetensors", "metrics.json",
                 "curves.png", "confusion_test.png", "roc_test.png", "predictions_test.csv",
                 "genotype.json"):
        assert (run / name).is_file(), name
    saved = json.loads((run / "metrics.json").read_text())
    assert METRIC_KEYS <= set(saved)
    assert saved["n_scans"] == metrics["n_scans"] > 0
    assert sum(map(sum, saved["confusion_matrix"])) == saved["n_scans"]
    assert len((run / "history.csv").read_text().strip().splitlines()) == 3  # header + 2 epochs
    # the resolved config reloads to the same settings, with the genotype pinned in the run
    again = load_config(run / "config.yaml", {})
    assert again.model == "genotype:genotype.json" and again.preprocess == cfg.preprocess
    # weights are safetensors
    assert load_tensors(run / "model.safetensors")
    # never overwrite an earlier run
    with pytest.raises(RunDirError, match="already holds a run"):
        run_training(cfg, run)
    # evaluate recomputes the same test metrics from the saved checkpoint
    re = evaluate_run(run, None, "test")
    assert re["accuracy"] == pytest.approx(saved["accuracy"])
    assert re["auc"] == pytest.approx(saved["auc"])


def test_resume_after_kill_matches_an_unbroken_run(tiny_data, tmp_path: Path, monkeypatch) -> None:
    data, model = tiny_data
    cfg = _cfg(data, model, tmp_path)
    run_training(cfg, tmp_path / "full")

    real_epoch = Trainer.train_epoch

    def killed(self, loader, epoch, total=None, limit=None):
        if epoch == 3:
            raise KeyboardInterrupt("simulated kill")
        return real_epoch(self, loader, epoch, total, limit)

    monkeypatch.setattr(Trainer, "train_epoch", killed)
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, tmp_path / "broken")
    assert not (tmp_path / "broken" / "metrics.json").exists()
    assert json.loads((tmp_path / "broken" / "checkpoint" / "last.json").read_text())["epoch"] == 2
    monkeypatch.setattr(Trainer, "train_epoch", real_epoch)
    run_training(cfg, tmp_path / "broken", resume=True)

    a = load_tensors(tmp_path / "full" / "checkpoint" / "epoch_0003.safetensors")
    b = load_tensors(tmp_path / "broken" / "checkpoint" / "epoch_0003.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    ha = (tmp_path / "full" / "history.csv").read_text().splitlines()
    hb = (tmp_path / "broken" / "history.csv").read_text().splitlines()
    strip = [lambda line: line.rsplit(",", 1)[0]]  # drop the wall-time column
    assert [strip[0](x) for x in ha] == [strip[0](x) for x in hb]
    # The wall time counts the epochs of both processes, not only the resumed one's.
    with (tmp_path / "broken" / "history.csv").open(newline="") as f:
        epoch_secs = [float(r["seconds"]) for r in csv.DictReader(f)]
    assert len(epoch_secs) == cfg.epochs
    metrics = json.loads((tmp_path / "broken" / "metrics.json").read_text())
    assert metrics["train_seconds"] == pytest.approx(sum(epoch_secs))
    assert metrics["train_seconds"] > sum(epoch_secs[2:])


def test_test_split_is_read_once_at_the_end(tiny_data, tmp_path: Path, monkeypatch) -> None:
    data, model = tiny_data
    cfg = _cfg(data, model, tmp_path, epochs=2)
    events: list[tuple[str, int]] = []
    real_load = ScanDataset.load

    def spy(self, i):
        events.append((self.rows[i].split, i))
        return real_load(self, i)

    monkeypatch.setattr(ScanDataset, "load", spy)
    run_training(cfg, tmp_path / "run")
    test_events = [e for e in events if e[0] == "test"]
    n_test = json.loads((tmp_path / "run" / "metrics.json").read_text())["n_scans"]
    assert sorted(i for _, i in test_events) == list(range(n_test))  # each test scan once
    first_test = events.index(test_events[0])
    assert all(split == "test" for split, _ in events[first_test:])  # nothing after it


def test_config_file_and_flags(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("model: mc3_18\nepochs: 5\npreprocess:\n  slices: 16\n")
    cfg = load_config(f, {"epochs": 9, "size": (64, 64), "lr": None})
    assert (cfg.model, cfg.epochs, cfg.lr) == ("mc3_18", 9, 1e-3)
    assert cfg.preprocess.slices == 16 and cfg.preprocess.size == (64, 64)
    f.write_text("epochs: 0\n")
    with pytest.raises(ValueError, match="(?s)c.yaml.*epochs"):
        load_config(f, {})
    f.write_text("optimiser: adam\n")
    with pytest.raises(ValueError, match="optimiser"):
        load_config(f, {})


def test_flip_augmentation_is_per_scan_and_training_only() -> None:
    cfg = TrainConfig(augment="flip")
    trainer = Trainer(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32, 2)), cfg,
                      class_names=["a", "b"], positive_class="b", device=torch.device("cpu"),
                      run_dir=Path("unused"))
    torch.manual_seed(0)
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).view(1, 1, 2, 4, 4).repeat(64, 1, 1, 1, 1)
    y = trainer.augment(x)
    same = (y == x).flatten(1).all(1)
    hflip = (y == x.flip(-1)).flatten(1).all(1)
    vflip = (y == x.flip(-2)).flatten(1).all(1)
    assert bool((same | hflip | vflip).all())
    for kind in (same, hflip, vflip):  # about a third each, decided per scan
        assert 8 < int(kind.sum()) < 40
    assert np.isclose(float(y.sum()), float(x.sum()))


@pytest.mark.slow
def test_real_adrenalmnist3d_learns_above_chance(adrenal_npz: Path, tmp_path: Path) -> None:
    """A small baseline trained briefly on real AdrenalMNIST3D (a class-balanced subset of the
    official training split, the full official validation split) beats chance on validation."""
    from volnas.data.dataset import open_source
    from volnas.data.manifest import IndexResult, write_manifest

    source = open_source(adrenal_npz)
    rng = np.random.default_rng(0)
    train = [r for r in source.rows if r.split == "train"]
    pos = [r for r in train if r.label == "1"]
    neg = [r for r in train if r.label == "0"]
    rows = [pos[i] for i in rng.choice(len(pos), 120, replace=False)]
    rows += [neg[i] for i in rng.choice(len(neg), 120, replace=False)]
    rows += [r for r in source.rows if r.split == "val"]
    rows += [r for r in source.rows if r.split == "test"][:40]
    manifest = tmp_path / "adrenal_subset.csv"
    write_manifest(IndexResult(rows, source.class_names, source.positive_class, str(adrenal_npz),
                               0, None, "medmnist-npz"), manifest)
    cfg = TrainConfig.model_validate({
        "data": str(manifest), "model": "resnet3d_18", "epochs": 3, "batch_size": 16, "seed": 0,
        "lr": 1e-3, "preprocess": {"slices": 28, "size": (28, 28), "intensity": "range",
                                   "window": (0, 255)},
        "cache_dir": str(tmp_path / "cache")})
    run_training(cfg, tmp_path / "run")
    best = json.loads((tmp_path / "run" / "best_val_metrics.json").read_text())
    assert best["n_scans"] == 98
    assert best["auc"] > 0.65, best["auc"]


def test_bn_recalibration_replaces_stale_running_statistics() -> None:
    """Running averages that lag the weights are replaced by the exact batch average."""
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 3, 1), torch.nn.BatchNorm3d(3),
                              torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten(), torch.nn.Linear(3, 2))
    bn = net[1]
    bn.running_mean.fill_(50.0)  # stale: far from what the current weights produce
    bn.running_var.fill_(0.01)
    cfg = TrainConfig(bn_recalibration=3, channels_last=False)
    trainer = Trainer(net, cfg, class_names=["a", "b"], positive_class="b",
                      device=torch.device("cpu"), run_dir=Path("unused"))
    torch.manual_seed(0)
    batches = [(torch.randn(4, 1, 2, 4, 4) * 2 + 1, torch.zeros(4, dtype=torch.long))
               for _ in range(5)]
    net.eval()
    assert trainer.recalibrate_bn(batches) == 3  # capped at cfg.bn_recalibration
    with torch.no_grad():
        feats = [net[0](x) for x, _ in batches[:3]]
    mean = torch.stack([f.mean((0, 2, 3, 4)) for f in feats]).mean(0)
    var = torch.stack([f.var((0, 2, 3, 4), unbiased=True) for f in feats]).mean(0)
    torch.testing.assert_close(bn.running_mean, mean)
    torch.testing.assert_close(bn.running_var, var)
    assert bn.momentum == 0.1 and not net.training  # restored
    off = Trainer(net, TrainConfig(bn_recalibration=0), class_names=["a", "b"],
                  positive_class="b", device=torch.device("cpu"), run_dir=Path("unused"))
    assert off.recalibrate_bn(batches) == 0
    torch.testing.assert_close(bn.running_mean, mean)


def test_balanced_class_weights_and_weighted_loss(tmp_path: Path) -> None:
    from volnas.training.trainer import balanced_class_weights

    w = balanced_class_weights([30, 10], ["normal", "covid"])
    assert w.tolist() == pytest.approx([40 / 60, 40 / 20])
    with pytest.raises(ValueError, match="no training scan of class \\['covid'\\]"):
        balanced_class_weights([5, 0], ["normal", "covid"])
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 2))
    cfg = TrainConfig.model_validate({"class_weight": "balanced", "epochs": 1})
    trainer = Trainer(net, cfg, class_names=["normal", "covid"], positive_class="covid",
                      device=torch.device("cpu"), run_dir=tmp_path, class_counts=[30, 10])
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.2], [-1.0, 1.0]])
    y = torch.tensor([0, 1, 1])
    nll = -torch.log_softmax(logits, 1)[torch.arange(3), y]
    wy = w[y]
    assert trainer.loss_fn(logits, y).item() == pytest.approx((wy * nll).sum().item() / wy.sum().item())
    plain = Trainer(net, cfg.model_copy(update={"class_weight": "none"}), class_names=["normal", "covid"],
                    positive_class="covid", device=torch.device("cpu"), run_dir=tmp_path)
    assert plain.loss_fn(logits, y).item() == pytest.approx(nll.mean().item())
    no_counts = Trainer(net, cfg, class_names=["normal", "covid"], positive_class="covid",
                        device=torch.device("cpu"), run_dir=tmp_path)
    with pytest.raises(ValueError, match="class counts"):
        no_counts.loss_fn(logits, y)


def test_class_weight_balanced_reaches_the_training_loss(tiny_data, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import volnas.training.trainer as trainer_mod
    from volnas.data.dataset import open_source

    data, model = tiny_data
    seen: list[torch.Tensor | None] = []
    real = trainer_mod.F.cross_entropy

    def spy(logits, y, *args, weight=None, **kw):
        seen.append(weight)
        return real(logits, y, *args, weight=weight, **kw)

    monkeypatch.setattr(trainer_mod.F, "cross_entropy", spy)
    run_training(_cfg(data, model, tmp_path, epochs=1, class_weight="balanced"), tmp_path / "run")
    src = open_source(str(data))
    labels = [r.label for r in src.split("train")]
    counts = np.array([labels.count(c) for c in src.class_names], float)
    expected = counts.sum() / (len(counts) * counts)
    weights = [w for w in seen if w is not None]
    assert weights, "no weighted training loss was computed"
    for w in weights:
        assert w.tolist() == pytest.approx(expected.tolist())
    assert load_config(tmp_path / "run" / "config.yaml", {}).class_weight == "balanced"


def test_evaluate_never_writes_over_the_run_record(tiny_data, tmp_path: Path) -> None:
    """evaluate (other data or the run's own) goes to its own folder; export keeps the
    run's test metrics."""
    from volnas.deploy.bundle import export_bundle

    data, model = tiny_data
    run = tmp_path / "run"
    run_training(_cfg(data, model, tmp_path, epochs=1), run)
    record = {n: (run / n).read_bytes() for n in
              ("metrics.json", "predictions_test.csv", "confusion_test.png", "roc_test.png")}
    own = json.loads(record["metrics.json"])
    other = synthesize(tmp_path / "other", scans=12, fmt="npz", classes=2, shape=(12, 24, 24),
                       seed=11)
    other_npz = next(other.out.glob("*.npz")).rename(tmp_path / "other.npz")

    first = evaluate_run(run, str(other_npz), "test")
    again = evaluate_run(run, None, "test")  # the run's own data and split
    assert {n: (run / n).read_bytes() for n in record} == record
    val = evaluate_run(run, None, "val", out=tmp_path / "mine")
    assert {n: (run / n).read_bytes() for n in record} == record
    assert not (run / "metrics_val.json").exists() and not (run / "predictions_val.csv").exists()

    d1, d2 = Path(first["evaluation_dir"]), Path(again["evaluation_dir"])
    assert d1.parent == d2.parent == run / "evaluations" and d1 != d2
    assert d1.name == f"{other_npz.stem}-test-001" and d2.name == f"{data.stem}-test-001"
    info = json.loads((d1 / "evaluation.json").read_text())
    assert info["data"] == str(other_npz) and info["split"] == "test"
    assert info["run"] == str(run.resolve()) and info["same_data_as_run"] is False
    assert json.loads((d2 / "evaluation.json").read_text())["same_data_as_run"] is True
    assert json.loads((d1 / "metrics.json").read_text())["n_scans"] == first["n_scans"]
    assert (d1 / "predictions_test.csv").is_file() and (d1 / "confusion_test.png").is_file()
    assert again["accuracy"] == pytest.approx(own["accuracy"])
    assert Path(val["evaluation_dir"]) == tmp_path / "mine"
    assert json.loads((tmp_path / "mine" / "evaluation.json").read_text())["split"] == "val"
    # a second evaluation of the same data never replaces the first
    third = evaluate_run(run, None, "test")
    assert Path(third["evaluation_dir"]).name == f"{data.stem}-test-002"
    with pytest.raises(RunDirError, match="mine: already exists and is not empty"):
        evaluate_run(run, None, "test", out=tmp_path / "mine")
    assert not list((run / "evaluations").glob(".*tmp"))

    bundle = json.loads((export_bundle(run, tmp_path / "bundle") / "bundle.json").read_text())
    assert bundle["metrics"]["accuracy"] == own["accuracy"]
    assert bundle["metrics"]["best_epoch"] == own["best_epoch"] == 1

    # a metrics.json an older `evaluate` wrote over with other data is not exported as the run's
    (run / "metrics.json").write_text(json.dumps(first | {"evaluation_dir": None}))
    with pytest.warns(UserWarning, match="older `volnas evaluate`"):
        legacy = export_bundle(run, tmp_path / "bundle2")
    assert json.loads((legacy / "bundle.json").read_text())["metrics"] is None
