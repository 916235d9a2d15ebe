"""Ensembles: the mean of calibrated member probabilities, evaluated like a run; the
ensemble bundle through export / predict / explain; spread, entropy and the review flag;
refusals (incompatible members, an existing --out, a modified member)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import volnas.api as vn
from volnas.cli.main import app
from volnas.core.files import load_tensors, save_tensors, sha256_file
from volnas.data.index import build_index
from volnas.data.manifest import write_manifest
from volnas.data.synth import synthesize
from volnas.deploy.bundle import BundleError, content_digest, load_bundle
from volnas.deploy.ensemble import (
    EnsembleError,
    load_ensemble,
    normalised_entropy,
    spread,
    uncertainty,
)
from volnas.explain.cam import normalize_maps
from volnas.explain.ensemble import EnsembleExplainer
from volnas.explain.methods import make_explainer
from volnas.training.config import TrainConfig
from volnas.training.metrics import apply_temperature
from volnas.training.run import run_training
from volnas.training.rundir import load_run

runner = CliRunner()
CLASSES = ("covid", "normal")


def invoke(*args: object, code: int = 0) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output + repr(result.exception)
    return result.output


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_genotype) -> dict[str, Path]:
    """Two tiny searched-style nets (seeds 1 and 2) trained one epoch on synthetic NIfTI CT."""
    root = tmp_path_factory.mktemp("ensemble")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VOLNAS_CACHE_DIR", str(root / "cache"))
        synthesize(root / "data", scans=20, fmt="nifti", classes=2, shape=(8, 16, 16), seed=4)
        manifest = write_manifest(build_index(root / "data", split=(0.5, 0.25, 0.25), seed=0),
                                  root / "manifest.csv")
        model = tiny_genotype(root / "tiny.json")
        for seed in (1, 2):
            cfg = TrainConfig.model_validate({
                "data": str(manifest), "model": model, "epochs": 1, "batch_size": 4,
                "lr": 0.01, "seed": seed, "device": "cpu", "tta": "none",
                "preprocess": {"slices": 8, "size": (16, 16)}})
            run_training(cfg, root / f"run{seed}")
    return {"root": root, "a": root / "run1", "b": root / "run2", "manifest": manifest}


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLNAS_CACHE_DIR", str(tmp_path / "cache"))


def _read_csv(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        return {r["scan_id"] if "scan_id" in r else r["scan"]: r for r in csv.DictReader(f)}


def _set_calibration(run: Path, temperature: float, tta: str = "none") -> None:
    path = run / "calibration.json"
    record = json.loads(path.read_text())
    record.update({"temperature": temperature, "tta": tta})
    path.write_text(json.dumps(record))


def _constant_run(src: Path, dst: Path, bias: tuple[float, float]) -> Path:
    """A copy of ``src`` whose network ignores the scan: the last linear layer's weights
    are zero and its bias is ``bias``, so every scan gets softmax(bias); temperature 1."""
    shutil.copytree(src, dst)
    model, _, _ = load_run(dst)
    name = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    tensors = load_tensors(dst / "model.safetensors")
    tensors[f"{name}.weight"] = torch.zeros_like(tensors[f"{name}.weight"])
    tensors[f"{name}.bias"] = torch.tensor(bias, dtype=tensors[f"{name}.bias"].dtype)
    save_tensors(dst / "model.safetensors", tensors)
    _set_calibration(dst, 1.0)
    return dst


def _softmax(z: tuple[float, float]) -> np.ndarray:
    e = np.exp(np.asarray(z, dtype=np.float64))
    return e / e.sum()


# --------------------------------------------------------------------------- the rule


def test_spread_and_entropy_numbers() -> None:
    a = np.array([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]])
    b = np.array([[0.7, 0.3], [0.5, 0.5], [0.6, 0.4]])
    u = uncertainty([a, b], flag_spread=0.15, flag_entropy=0.8)
    assert u["probs"] == pytest.approx(np.array([[0.8, 0.2], [0.5, 0.5], [0.4, 0.6]]))
    assert list(u["predicted"]) == [0, 0, 1]
    # std over members of the predicted class's probability: |a - b| / 2 for two members
    assert u["spread"] == pytest.approx([0.1, 0.0, 0.2])
    h0 = -(0.8 * np.log(0.8) + 0.2 * np.log(0.2)) / np.log(2)
    assert u["entropy"] == pytest.approx([h0, 1.0, -(0.4 * np.log(0.4) + 0.6 * np.log(0.6))
                                          / np.log(2)])
    # scan 0: spread 0.1, entropy 0.72 -> not flagged; scan 1: uniform; scan 2: spread 0.2
    assert list(u["review"]) == [False, True, True]
    assert normalised_entropy(np.array([[1.0, 0, 0], [1 / 3, 1 / 3, 1 / 3]])) == pytest.approx(
        [0.0, 1.0])
    assert spread([a, a, a], np.array([0, 1, 1])) == pytest.approx([0, 0, 0])


# --------------------------------------------------------------------------- evaluation


def test_identical_members_equal_the_member(runs, tmp_path: Path) -> None:
    twin = shutil.copytree(runs["a"], tmp_path / "twin")
    single = vn.evaluate(runs["a"], out=tmp_path / "single", quiet=True)
    metrics = vn.ensemble([runs["a"], twin], tmp_path / "ens", quiet=True)
    for key in ("accuracy", "f1", "auc", "sensitivity", "specificity", "ci"):
        assert metrics[key] == single[key], key
    assert metrics["calibration"]["ece_calibrated"] == pytest.approx(
        single["calibration"]["ece_calibrated"])
    expected = _read_csv(tmp_path / "single" / "predictions_test.csv")
    got = _read_csv(tmp_path / "ens" / "predictions_test.csv")
    assert set(got) == set(expected) and len(got) == metrics["n_scans"] > 0
    for sid, e in expected.items():
        assert got[sid]["predicted"] == e["predicted"]
        for c in CLASSES:
            assert got[sid][f"p_{c}"] == e[f"p_{c}"]
        assert float(got[sid]["spread"]) == 0.0


def test_ensemble_averages_calibrated_probabilities(runs, tmp_path: Path) -> None:
    a = shutil.copytree(runs["a"], tmp_path / "a")
    b = shutil.copytree(runs["b"], tmp_path / "b")
    _set_calibration(a, 4.0)  # a softened member and a sharpened one
    _set_calibration(b, 0.5, tta="flips")  # and each member's own test-time augmentation
    metrics = vn.ensemble([a, b], tmp_path / "ens", quiet=True)
    got = _read_csv(tmp_path / "ens" / "predictions_test.csv")
    raw = {}
    for name, run, t in (("a", a, 4.0), ("b", b, 0.5)):
        vn.evaluate(run, out=tmp_path / f"eval-{name}", quiet=True)
        rows = _read_csv(tmp_path / f"eval-{name}" / "predictions_test.csv")
        raw[name] = {sid: np.array([float(r[f"p_raw_{c}"]) for c in CLASSES])
                     for sid, r in rows.items()}
        assert {float(r["temperature"]) for r in rows.values()} == {t}
    gap = 0.0
    for sid, row in got.items():
        cal = [apply_temperature(raw[n][sid][None], t)[0] for n, t in (("a", 4.0), ("b", 0.5))]
        # the CSV rounds raw probabilities to 1e-6; a temperature T < 1 amplifies that by
        # about cal / (T * min raw p); float32 inference differs by ~1e-6 across CPUs
        tol = [1e-5 + cal[i] * 2e-6 / (t * raw[n][sid].min())
               for i, (n, t) in enumerate((("a", 4.0), ("b", 0.5)))]
        want = (cal[0] + cal[1]) / 2
        p = np.array([float(row[f"p_{c}"]) for c in CLASSES])
        assert np.all(np.abs(p - want) <= (tol[0] + tol[1]) / 2)
        for i in range(2):  # each member's calibrated probabilities are listed too
            listed = np.array([float(row[f"m{i:02d}_p_{c}"]) for c in CLASSES])
            assert np.all(np.abs(listed - cal[i]) <= tol[i])
        gap = max(gap, float(np.abs(p - (raw["a"][sid] + raw["b"][sid]) / 2).max()))
    assert gap > 0.01  # the plain mean of the members' own probabilities is not it

    # evaluated like a run: intervals over patients, calibration, plots, the member record
    assert metrics["ci_unit"] == "patient" and set(metrics["ci"]) >= {"accuracy", "auc"}
    out = tmp_path / "ens"
    for name in ("metrics.json", "ensemble.json", "reliability_test.png", "roc_test.png",
                 "confusion_test.png"):
        assert (out / name).is_file(), name
    record = json.loads((out / "ensemble.json").read_text())
    assert [m["weights_sha256"] for m in record["members"]] == [
        sha256_file(a / "model.safetensors"), sha256_file(b / "model.safetensors")]
    assert [m["temperature"] for m in record["members"]] == [4.0, 0.5]
    assert [m["tta"] for m in record["members"]] == ["none", "flips"]
    assert [m["path"] for m in record["members"]] == [str(a.resolve()), str(b.resolve())]
    assert json.loads((out / "metrics.json").read_text())["accuracy"] == metrics["accuracy"]


# --------------------------------------------------------------------------- refusals


def test_incompatible_members_are_named(runs, tmp_path: Path) -> None:
    other = shutil.copytree(runs["b"], tmp_path / "other-classes")
    info = json.loads((other / "run.json").read_text())
    info["classes"] = ["normal", "covid"]
    (other / "run.json").write_text(json.dumps(info))
    with pytest.raises(EnsembleError, match=f"member {other}: classes"):
        vn.ensemble([runs["a"], other], tmp_path / "x", quiet=True)

    wider = shutil.copytree(runs["b"], tmp_path / "wider")
    text = (wider / "config.yaml").read_text()
    assert "slices: 8" in text
    (wider / "config.yaml").write_text(text.replace("slices: 8", "slices: 6"))
    out = invoke("ensemble", runs["a"], wider, "--out", tmp_path / "y", code=2)
    assert f"member {wider}" in "".join(out.split("\n")) and "slices 6 vs 8" in out

    out = invoke("ensemble", runs["a"], "--out", tmp_path / "z", code=2)
    assert "at least two members" in out
    out = invoke("ensemble", runs["a"], tmp_path / "nothing", "--out", tmp_path / "z", code=2)
    assert f"member {tmp_path / 'nothing'}" in "".join(out.split("\n"))
    assert not any((tmp_path / d).exists() for d in ("x", "y", "z"))


def test_out_is_never_overwritten(runs, tmp_path: Path) -> None:
    out = tmp_path / "ens"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    msg = invoke("ensemble", runs["a"], runs["b"], "--out", out, code=2)
    assert "not empty" in msg and (out / "mine.txt").read_text() == "keep"
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    # an existing --export is refused before anything is written
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "x").write_text("keep")
    msg = invoke("ensemble", runs["a"], runs["b"], "--out", tmp_path / "new", "--export",
                 bundle, code=2)
    assert "--export" in msg and not (tmp_path / "new").exists()
    assert [p.name for p in bundle.iterdir()] == ["x"]


# --------------------------------------------------------------------------- bundle


def test_bundle_round_trip_export_predict_explain(runs, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    invoke("ensemble", runs["a"], runs["b"], "--out", tmp_path / "ens", "--export", bundle)
    m = json.loads((bundle / "bundle.json").read_text())
    assert m["kind"] == "ensemble" and [r["dir"] for r in m["members"]] == [
        "members/00", "members/01"]
    assert m["review"] == {"flag_spread": 0.15, "flag_entropy": 0.8}
    ens = load_ensemble(bundle)
    assert len(ens.members) == 2 and ens.classes == list(CLASSES)
    assert [b.temperature for b in ens.members] == [
        json.loads((r / "calibration.json").read_text())["temperature"]
        for r in (runs["a"], runs["b"])]

    # predict equals the ensemble's evaluation, scan by scan
    expected = _read_csv(tmp_path / "ens" / "predictions_test.csv")
    out = tmp_path / "pred.json"
    invoke("predict", bundle, runs["manifest"], "--out", out, "--device", "cpu")
    payload = json.loads(out.read_text())
    got = {r["scan"]: r for r in payload["predictions"]}
    assert payload["flag_spread"] == 0.15 and len(got) == 20
    for sid, e in expected.items():
        r = got[sid]
        assert r["predicted"] == e["predicted"]
        for c in CLASSES:
            assert r["probabilities"][c] == pytest.approx(float(e[f"p_{c}"]), abs=2e-6)
        assert r["spread"] == pytest.approx(float(e["spread"]), abs=2e-6)
        assert r["entropy"] == pytest.approx(float(e["entropy"]), abs=2e-6)
        assert r["review"] == (e["review"] == "yes")
    # the CSV form carries the same columns
    invoke("predict", bundle, runs["manifest"], "--out", tmp_path / "pred.csv")
    rows = _read_csv(tmp_path / "pred.csv")
    assert {"spread", "entropy", "review"} <= set(next(iter(rows.values())))

    # an ensemble bundle is a valid member list for a re-evaluation, and keeps its flags
    again = vn.ensemble([bundle], tmp_path / "again", quiet=True)
    assert again["auc"] == json.loads((tmp_path / "ens" / "metrics.json").read_text())["auc"]

    # explain: the members' normalised maps, averaged
    scan = f"{runs['manifest']}#CT-1/study_0002"
    records = vn.explain(bundle, [scan], tmp_path / "expl", quiet=True)
    assert records[0]["predicted"] == got["CT-1/study_0002"]["predicted"]
    assert records[0]["probability"] == pytest.approx(got["CT-1/study_0002"]["probability"],
                                                      abs=1e-5)
    heat = nib.load(tmp_path / "expl" / records[0]["name"] / "heatmap.nii.gz").get_fdata()
    assert heat.max() == pytest.approx(1.0, abs=1e-5) and heat.min() >= 0

    # a plain bundle loader refuses it, naming what it is
    with pytest.raises(BundleError, match="ensemble"):
        load_bundle(bundle)


def test_explain_averages_normalised_member_maps(runs, tmp_path: Path) -> None:
    models = [load_run(r)[0] for r in (runs["a"], runs["b"])]
    explainers = [make_explainer(m, "cam") for m in models]
    x = torch.randn(3, 1, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    ens = EnsembleExplainer(explainers, [2.0, None])
    got = ens(x)
    probs = (torch.softmax(models[0](x) / 2.0, 1) + torch.softmax(models[1](x), 1)) / 2
    assert torch.allclose(got.probs, probs.detach(), atol=1e-6)
    target = probs.argmax(1)
    assert torch.equal(got.classes, target)
    want = normalize_maps((explainers[0](x, target).maps + explainers[1](x, target).maps) / 2)
    assert torch.allclose(got.maps, want, atol=1e-6)
    # a fixed class is explained by every member
    assert torch.equal(ens(x, 1).classes, torch.ones(3, dtype=torch.long))

    # twins: the ensemble's map is the member's map
    twin = shutil.copytree(runs["a"], tmp_path / "twin")
    vn.ensemble([runs["a"], twin], tmp_path / "ens", export=tmp_path / "bundle", quiet=True)
    scan = f"{runs['manifest']}#CT-0/study_0004"
    one = vn.explain(runs["a"], [scan], tmp_path / "one", quiet=True)[0]
    two = vn.explain(tmp_path / "bundle", [scan], tmp_path / "two", quiet=True)[0]
    assert one["target_class"] == two["target_class"]
    h1 = nib.load(tmp_path / "one" / one["name"] / "heatmap.nii.gz").get_fdata()
    h2 = nib.load(tmp_path / "two" / two["name"] / "heatmap.nii.gz").get_fdata()
    assert np.allclose(h1, h2, atol=1e-5)


def test_modified_member_is_refused(runs, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    vn.ensemble([runs["a"], runs["b"]], tmp_path / "ens", export=bundle, quiet=True)
    # bundle.json edited: caught by its content hash; re-stamped: by what the members say
    manifest = json.loads((bundle / "bundle.json").read_text())
    for change, restamp, message in (({"review": {"flag_spread": 0.5, "flag_entropy": 1.0}},
                                      False, "content differs"),
                                     ({"classes": ["normal", "covid"]}, True,
                                      "classes is .* but the members say")):
        edited = shutil.copytree(bundle, tmp_path / f"edited-{restamp}")
        m = manifest | change
        if restamp:
            m["content_sha256"] = content_digest(m)
        (edited / "bundle.json").write_text(json.dumps(m))
        with pytest.raises(EnsembleError, match=message):
            load_ensemble(edited)
    weights = bundle / "members" / "01" / "model.safetensors"
    tensors = load_tensors(weights)
    key = next(iter(tensors))
    tensors[key] = tensors[key] + 1
    save_tensors(weights, tensors)
    with pytest.raises(EnsembleError, match="members/01/model.safetensors: sha256 differs"):
        load_ensemble(bundle)
    out = invoke("predict", bundle, runs["manifest"], code=2)
    assert "member 1 was modified" in "".join(out.split("\n"))


# --------------------------------------------------------------------------- review flag


def test_review_flag_fires_on_disagreement_only(runs, tmp_path: Path) -> None:
    sure = _constant_run(runs["a"], tmp_path / "sure", (4.0, -4.0))  # covid, p = 0.9997
    twin = _constant_run(runs["a"], tmp_path / "twin", (4.0, -4.0))
    contrary = _constant_run(runs["a"], tmp_path / "contrary", (-4.0, 4.0))  # normal
    leaning = _constant_run(runs["a"], tmp_path / "leaning", (1.0, -1.0))  # covid, p = 0.88
    scans = [runs["manifest"]]

    def predict(a: Path, b: Path, **flags: float) -> list[dict]:
        name = f"{a.name}-{b.name}-{len(flags)}"
        vn.ensemble([a, b], tmp_path / f"e-{name}", export=tmp_path / name, quiet=True)
        return vn.predict(tmp_path / name, scans, device="cpu", **flags)

    agree = predict(sure, twin)
    assert len(agree) == 20
    assert not any(r["review"] for r in agree)
    assert all(r["spread"] == pytest.approx(0, abs=1e-7) for r in agree)
    p = _softmax((4.0, -4.0))
    h = float(-(p * np.log(p)).sum() / np.log(2))
    assert all(r["entropy"] == pytest.approx(h, abs=1e-5) for r in agree)

    disagree = predict(sure, contrary)
    assert all(r["review"] for r in disagree)
    assert all(r["entropy"] == pytest.approx(1.0, abs=1e-6) for r in disagree)
    assert all(r["spread"] == pytest.approx((p[0] - p[1]) / 2, abs=1e-5) for r in disagree)

    # same class, different confidence: spread 0.06 is under the default 0.15 but over 0.05
    q = _softmax((1.0, -1.0))
    lean = predict(sure, leaning)
    assert all(r["predicted"] == "covid" for r in lean)
    assert all(r["spread"] == pytest.approx((p[0] - q[0]) / 2, abs=1e-5) for r in lean)
    assert not any(r["review"] for r in lean)
    assert all(r["review"] for r in vn.predict(tmp_path / "sure-leaning-0", scans,
                                               device="cpu", flag_spread=0.05))
    out = invoke("predict", tmp_path / "sure-leaning-0", runs["manifest"], "--flag-spread",
                 0.05, "--device", "cpu")
    assert "20 of 20 scan(s) flagged for review (spread > 0.05" in "".join(out.split("\n"))
    # thresholds belong to ensembles only
    out = invoke("predict", tmp_path / "sure-leaning-0" / "members" / "00", runs["manifest"],
                 "--flag-spread", 0.05, code=2)
    assert "need an ensemble bundle" in out
