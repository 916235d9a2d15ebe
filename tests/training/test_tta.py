"""Test-time augmentation: what flips average, that the choice is made on validation only,
and that evaluate, the bundle and predict all apply the recorded choice."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from torch import nn

from volnas.data.dataset import ScanDataset
from volnas.data.synth import synthesize
from volnas.deploy.bundle import BundleError, content_digest, export_bundle, load_bundle
from volnas.deploy.predict import predict_scans
from volnas.training import run as run_module
from volnas.training.config import TrainConfig
from volnas.training.evaluate import evaluate_run
from volnas.training.rundir import RunDirError
from volnas.training.trainer import Trainer
from volnas.training.tta import TTA_MODES, predict_tta, views


class PoolLinear(nn.Module):
    """Global average pooling then a linear layer: blind to every flip."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3, 4)))


class FlatLinear(nn.Module):
    """A linear layer on every voxel: sees where things are, so flips change its output."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2 * 4 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def _batches(n: int = 10, batch: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 2, 4, 6, 6, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


def test_tta_of_a_flip_invariant_model_equals_the_model() -> None:
    torch.manual_seed(0)
    model, loader = PoolLinear(), _batches()
    plain, labels, loss = predict_tta(model, loader, "none")
    tta, labels_tta, loss_tta = predict_tta(model, loader, "flips")
    assert plain.shape == (10, 3) and np.array_equal(labels, labels_tta)
    np.testing.assert_allclose(tta, plain, rtol=0, atol=1e-6)
    assert loss_tta == pytest.approx(loss, abs=1e-6)
    # through a Trainer too (channels_last, its own device handling)
    trainer = Trainer(model, TrainConfig(device="cpu"), class_names=["a", "b", "c"],
                      positive_class=None, device=torch.device("cpu"), run_dir=Path("."),
                      console=Console(quiet=True))
    np.testing.assert_allclose(predict_tta(trainer, loader, "flips")[0], plain, rtol=0, atol=1e-6)
    np.testing.assert_allclose(trainer.predict(loader)[0], plain, rtol=0, atol=1e-6)


def test_tta_of_a_position_sensitive_model_is_the_mean_over_in_plane_flips() -> None:
    torch.manual_seed(0)
    model, loader = FlatLinear().eval(), _batches()
    plain = predict_tta(model, loader, "none")[0]
    tta = predict_tta(model, loader, "flips")[0]
    assert np.abs(tta - plain).max() > 1e-2
    with torch.no_grad():
        x = torch.cat([b[0] for b in loader])
        want = torch.stack([torch.softmax(model(x.flip(d)), 1) for d in
                            ((), (-2,), (-1,), (-2, -1))]).mean(0).numpy()
    np.testing.assert_allclose(tta, want, rtol=0, atol=1e-6)
    assert len(views(x, "flips")) == 4 and len(views(x, "none")) == 1  # never along D
    with pytest.raises(ValueError, match="unknown test-time augmentation 'rot90'"):
        predict_tta(model, loader, "rot90")


def test_auto_keeps_flips_only_when_better_on_validation(monkeypatch) -> None:
    labels = np.array([0, 0, 1, 1])
    good = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.2, 0.8]])  # AUC 1
    bad = np.array([[0.4, 0.6], [0.8, 0.2], [0.3, 0.7], [0.7, 0.3]])  # AUC 0.75

    class T:
        cfg = TrainConfig(tta="auto")
        class_names, positive_class = ["0", "1"], "1"

    for none_p, flips_p, want in ((bad, good, "flips"), (good, bad, "none"), (good, good, "none")):
        probs = {"none": none_p, "flips": flips_p}
        monkeypatch.setattr(run_module, "predict_tta",
                            lambda tr, loader, mode, p=probs: (p[mode], labels, 0.5))
        chosen, record, (p, lab) = run_module.choose_tta(T(), None, Console(quiet=True))
        assert chosen == record["tta"] == want and p is probs[want]
        assert record["tta_val_scores"] == {"none": pytest.approx(0.75 if none_p is bad else 1.0),
                                            "flips": pytest.approx(0.75 if flips_p is bad else 1.0)}
    T.cfg = TrainConfig(tta="none")  # fixed: no comparison, one pass
    chosen, record, _ = run_module.choose_tta(T(), None, Console(quiet=True))
    assert chosen == "none" and list(record["tta_val_scores"]) == ["none"]


# --------------------------------------------------------------------------- a real run



@pytest.fixture(scope="module")
def tta_run(tmp_path_factory: pytest.TempPathFactory,
        tiny_genotype) -> dict[str, object]:
    """One tiny run with tta auto; every scan read and every TTA pass of the choice recorded."""
    root = tmp_path_factory.mktemp("tta")
    res = synthesize(root / "data", scans=40, fmt="npz", classes=2, shape=(8, 16, 16), seed=5)
    cfg = TrainConfig.model_validate({
        "data": str(next(res.out.glob("*.npz"))), "model": tiny_genotype(root / "tiny.json"),
        "epochs": 1, "batch_size": 4, "seed": 2, "cache_dir": str(root / "cache"),
        "device": "cpu", "preprocess": {"slices": 8, "size": (16, 16)}})
    events: list[tuple[str, int]] = []
    passes: list[tuple[int, str, set[str]]] = []
    fits: list[np.ndarray] = []
    real_load, real_tta, real_fit = (ScanDataset.load, run_module.predict_tta,
                                     run_module.fit_temperature)

    def spy_load(self, i):
        events.append((self.rows[i].split, i))
        return real_load(self, i)

    def spy_tta(trainer, loader, mode):
        passes.append((len(events), mode, {r.split for r in loader.dataset.rows}))
        return real_tta(trainer, loader, mode)

    def spy_fit(probs, labels, **kw):
        fits.append(np.asarray(probs))
        return real_fit(probs, labels, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VOLNAS_CACHE_DIR", str(root / "cache"))
        mp.setattr(ScanDataset, "load", spy_load)
        mp.setattr(run_module, "predict_tta", spy_tta)
        mp.setattr(run_module, "fit_temperature", spy_fit)
        run_module.run_training(cfg, root / "run")
    return {"run": root / "run", "events": events, "passes": passes, "fits": fits,
            "root": root, "npz": cfg.data}


def _raw(path: Path) -> np.ndarray:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return np.array([[float(r["p_raw_0"]), float(r["p_raw_1"])] for r in rows])


def test_auto_choice_reads_validation_only_and_is_recorded(tta_run, tmp_path: Path) -> None:
    run, events, passes = tta_run["run"], tta_run["events"], tta_run["passes"]
    assert [(m, s) for _, m, s in passes] == [("none", {"val"}), ("flips", {"val"})]
    first_test = next(i for i, (split, _) in enumerate(events) if split == "test")
    assert all(at <= first_test for at, _, _ in passes)  # chosen before test is read
    cal = json.loads((run / "calibration.json").read_text())
    scores = cal["tta_val_scores"]
    assert (cal["tta_setting"], cal["tta_chosen_on"], cal["tta_select_metric"]) == (
        "auto", "val", "auc")
    assert cal["tta"] == ("flips" if scores["flips"] > scores["none"] else "none")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["tta"] == cal["tta"]  # the final test used the choice
    # the recorded scores are the validation AUCs with and without TTA ...
    probs = {}
    for mode in TTA_MODES:
        m = evaluate_run(run, None, "val", out=tmp_path / mode, tta=mode)
        assert m["auc"] == pytest.approx(scores[mode], abs=1e-9)
        probs[mode] = _raw(tmp_path / mode / "predictions_val.csv")
    assert np.abs(probs["flips"] - probs["none"]).max() > 1e-4
    # ... and the temperature was fitted on the chosen TTA's validation probabilities
    np.testing.assert_allclose(tta_run["fits"][0], probs[cal["tta"]], atol=2e-6)


def _with_tta(run: Path, dst: Path, mode: str) -> Path:
    run = Path(shutil.copytree(run, dst))
    path = run / "calibration.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"tta": mode}))
    return run


def test_evaluate_applies_the_recorded_choice_unless_overridden(tta_run, tmp_path: Path) -> None:
    run = _with_tta(tta_run["run"], tmp_path / "run", "flips")
    evaluate_run(run, None, "val", out=tmp_path / "rec")
    evaluate_run(run, None, "val", out=tmp_path / "none", tta="none")
    evaluate_run(run, None, "val", out=tmp_path / "flips", tta="flips")
    rec = json.loads((tmp_path / "rec" / "evaluation.json").read_text())
    assert (rec["tta"], rec["tta_recorded"], rec["tta_overridden"]) == ("flips", "flips", False)
    over = json.loads((tmp_path / "none" / "evaluation.json").read_text())
    assert (over["tta"], over["tta_recorded"], over["tta_overridden"]) == ("none", "flips", True)
    assert "--tta override" in json.loads(
        (tmp_path / "none" / "metrics.json").read_text())["calibration"]["note"]
    got = _raw(tmp_path / "rec" / "predictions_val.csv")
    assert np.array_equal(got, _raw(tmp_path / "flips" / "predictions_val.csv"))
    assert np.abs(got - _raw(tmp_path / "none" / "predictions_val.csv")).max() > 1e-4
    (run / "calibration.json").write_text(json.dumps({"temperature": 1.0, "tta": "rot90"}))
    with pytest.raises(RunDirError, match="calibration.json: tta must be one of none, flips"):
        evaluate_run(run, None, "val", out=tmp_path / "bad")


def test_bundle_records_the_choice_and_predict_applies_it(tta_run, tmp_path: Path) -> None:
    run = _with_tta(tta_run["run"], tmp_path / "run", "flips")
    bundle = load_bundle(export_bundle(run, tmp_path / "bundle"))
    assert bundle.tta == bundle.manifest["inference"]["tta"] == "flips"
    scans = [f"{tta_run['npz']}#val/{i}" for i in range(3)]
    rows, failures = predict_scans(bundle, scans, Console(quiet=True), device="cpu")
    plain, _ = predict_scans(bundle, scans, Console(quiet=True), device="cpu", tta="none")
    assert not failures and [r["tta"] for r in rows] == ["flips"] * 3
    raw = np.array([[r["probabilities_raw"][c] for c in bundle.classes] for r in rows])
    raw_none = np.array([[r["probabilities_raw"][c] for c in bundle.classes] for r in plain])
    assert np.abs(raw - raw_none).max() > 1e-4
    # predict with the bundle's TTA gives what evaluate gives the same scans with it
    evaluate_run(run, None, "val", out=tmp_path / "ev")
    np.testing.assert_allclose(raw, _raw(tmp_path / "ev" / "predictions_val.csv")[:3], atol=2e-6)
    with pytest.raises(ValueError, match="--tta: unknown test-time augmentation 'rot90'"):
        predict_scans(bundle, scans, Console(quiet=True), device="cpu", tta="rot90")


def test_bundle_refuses_an_edited_tta(tta_run, tmp_path: Path) -> None:
    run = _with_tta(tta_run["run"], tmp_path / "run", "flips")
    path = export_bundle(run, tmp_path / "bundle") / "bundle.json"
    m = json.loads(path.read_text())
    assert m["inference"]["tta"] == "flips"
    m["inference"]["tta"] = "none"
    m["content_sha256"] = content_digest(m)  # a thorough tamperer
    path.write_text(json.dumps(m))
    with pytest.raises(BundleError, match="inference is .* but config.yaml and calibration.json"):
        load_bundle(path.parent)


def test_runs_saved_before_tta_resume_and_evaluate_without_it(tmp_path: Path) -> None:
    """A config.yaml written before the tta field keeps the behaviour it ran with (no TTA),
    not today's default (auto), so resuming it cannot change its test result."""
    import yaml

    from volnas.search.config import SearchConfig
    from volnas.training.config import TrainConfig, load_saved_config

    old = TrainConfig().model_dump(mode="json")
    old.pop("tta")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    assert TrainConfig().tta == "auto" and load_saved_config(tmp_path / "config.yaml").tta == "none"
    old_search = SearchConfig().model_dump(mode="json")
    for key in ("tta", "aug_prior"):
        old_search.pop(key)
    saved = SearchConfig.from_saved(old_search)
    assert (saved.tta, saved.aug_prior) == ("none", "candidates")
    new = TrainConfig(tta="flips").model_dump(mode="json")
    assert TrainConfig.from_saved(new).tta == "flips"  # a saved value always wins
