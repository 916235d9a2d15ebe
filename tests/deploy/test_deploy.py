"""Bundles and prediction: export -> predict equals evaluate, refusals, unreadable scans, ONNX."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from volnas.cli.main import app
from volnas.core.files import save_tensors, sha256_file
from volnas.data.index import build_index
from volnas.data.manifest import read_manifest, write_manifest
from volnas.data.synth import synthesize
from volnas.deploy.bundle import BundleError, content_digest, export_bundle, load_bundle
from volnas.deploy.predict import predict_scans
from volnas.models.genotype import Genotype
from volnas.models.registry import create_model
from volnas.models.spaces import layer_specs
from volnas.training.config import TrainConfig, dump_config
from volnas.training.metrics import apply_temperature
from volnas.training.run import run_training

runner = CliRunner()


def invoke(*args: object, code: int = 0) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output + repr(result.exception)
    return result.output


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny searched-style net trained for one epoch on synthetic NIfTI CT, and its bundle."""
    root = tmp_path_factory.mktemp("deploy")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VOLNAS_CACHE_DIR", str(root / "cache"))
        synthesize(root / "data", scans=20, fmt="nifti", classes=2, shape=(8, 16, 16), seed=4)
        manifest = write_manifest(build_index(root / "data", split=(0.5, 0.25, 0.25), seed=0),
                                  root / "manifest.csv")
        specs = layer_specs("medpipe")
        ops = ["skip" if s.kind == "normal" else ("conv_s2" if i < 3 else "conv_s1")
               for i, s in enumerate(specs)]
        Genotype("medpipe", ops).save(root / "tiny.json")
        cfg = TrainConfig.model_validate({
            "data": str(manifest), "model": f"genotype:{root / 'tiny.json'}", "epochs": 1,
            "batch_size": 4, "lr": 0.01, "seed": 1, "device": "cpu",
            "preprocess": {"slices": 8, "size": (16, 16)}})
        run_training(cfg, root / "run")
        invoke("export", root / "run", "--out", root / "bundle")
    return {"root": root, "run": root / "run", "bundle": root / "bundle", "manifest": manifest}


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLNAS_CACHE_DIR", str(tmp_path / "cache"))


def _copy(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(bundle, dst)
    return dst


def _edit_manifest(bundle: Path, restamp: bool = True, **changes: object) -> None:
    """Edit bundle.json; ``restamp``: also fix its content_sha256 (a thorough tamperer)."""
    path = bundle / "bundle.json"
    m = json.loads(path.read_text())
    m.update(changes)
    if restamp:
        m["content_sha256"] = content_digest(m)
    path.write_text(json.dumps(m))


def test_bundle_is_self_contained_and_pickle_free(trained, tmp_path: Path) -> None:
    # export from a copy of the run, then delete the run: the bundle must still load
    run = shutil.copytree(trained["run"], tmp_path / "run")
    bundle_dir = export_bundle(run, tmp_path / "bundle")
    shutil.rmtree(run)
    files = {p.name for p in bundle_dir.iterdir()}
    assert {"bundle.json", "model.safetensors", "genotype.json", "config.yaml", "run.json",
            "metrics.json", "calibration.json"} <= files
    for p in bundle_dir.iterdir():
        head = p.read_bytes()[:2]
        assert head != b"PK" and head[:1] != b"\x80", f"{p.name} looks like a pickle"
    m = json.loads((bundle_dir / "bundle.json").read_text())
    assert m["format"] == "volnas-bundle" and m["format_version"] == 2
    assert m["input_shape"] == [1, 8, 16, 16] and m["num_classes"] == 2
    assert m["weights"]["sha256"] == sha256_file(bundle_dir / "model.safetensors")
    assert m["preprocess"]["slices"] == 8 and m["preprocess"]["sampling"] == "symmetrical"
    assert m["preprocess"]["window"] == [-1000.0, 400.0]
    assert m["model"]["genotype"]["space"] == "medpipe"
    assert m["classes"] == ["covid", "normal"] and m["positive_class"] == "covid"
    assert m["metrics"]["accuracy"] == json.loads((trained["run"] / "metrics.json").read_text())[
        "accuracy"]
    assert "augmentation" in m
    b = load_bundle(bundle_dir)
    assert not b.model.training and b.classes == ["covid", "normal"]
    # the run's temperature travels, hashed, and is recorded in bundle.json
    t = json.loads((trained["run"] / "calibration.json").read_text())["temperature"]
    assert b.temperature == m["inference"]["temperature"] == t
    assert m["files"]["calibration.json"] == sha256_file(bundle_dir / "calibration.json")
    assert b.preprocess.size == (16, 16) and b.input_shape == (1, 8, 16, 16)

    # never overwrite a non-empty bundle folder
    with pytest.raises(BundleError, match="not empty"):
        export_bundle(trained["run"], bundle_dir)
    out = invoke("export", trained["run"], "--out", bundle_dir, code=2)
    assert "not empty" in out


def test_predict_matches_evaluate(trained, tmp_path: Path) -> None:
    run = shutil.copytree(trained["run"], tmp_path / "run")
    out = invoke("evaluate", run)
    evaluation = run / "evaluations" / "manifest-test-001"
    assert f"evaluation: {evaluation}" in "".join(out.split("\n"))
    with open(evaluation / "predictions_test.csv", newline="") as f:
        expected = {r["scan_id"]: r for r in csv.DictReader(f)}
    out = tmp_path / "pred.json"
    invoke("predict", trained["bundle"], trained["manifest"], "--out", out, "--device", "cpu")
    got = {r["scan"]: r for r in json.loads(out.read_text())["predictions"]}
    assert len(got) == len(read_manifest(trained["manifest"]))
    assert set(expected) <= set(got)
    for sid, e in expected.items():
        assert got[sid]["predicted"] == e["predicted"]
        for c in ("covid", "normal"):
            assert got[sid]["probabilities"][c] == pytest.approx(float(e[f"p_{c}"]), abs=2e-6)
    # the scans themselves (not through the manifest) give the same numbers
    rows = {r.scan_id: r for r in read_manifest(trained["manifest"])}
    sids = sorted(expected)
    direct, failures = predict_scans(load_bundle(trained["bundle"]), [rows[s].path for s in sids],
                                     batch_size=3, device="cpu")
    assert not failures
    for sid, r in zip(sids, direct, strict=True):
        assert r["probabilities"] == pytest.approx(got[sid]["probabilities"], abs=1e-6)
    probs = np.array([[r["probabilities"][c] for c in ("covid", "normal")] for r in direct])
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)
    # calibrated by the bundle's temperature, with the model's own probabilities kept
    t = load_bundle(trained["bundle"]).temperature
    raw = np.array([[r["probabilities_raw"][c] for c in ("covid", "normal")] for r in direct])
    assert t is not None and all(r["temperature"] == t for r in direct)
    assert np.allclose(probs, apply_temperature(raw, t), atol=1e-6)
    assert (probs.argmax(1) == raw.argmax(1)).all()
    for sid, e in expected.items():
        assert float(e["temperature"]) == pytest.approx(t, rel=1e-5)
        assert got[sid]["probabilities_raw"]["covid"] == pytest.approx(float(e["p_raw_covid"]),
                                                                       abs=2e-6)
    payload = json.loads(out.read_text())
    assert payload["temperature"] == t and payload["probabilities"].startswith("calibrated")
    # the run's validation operating point travels with the bundle: same calls as evaluate
    op = json.loads((trained["run"] / "calibration.json").read_text())["operating_point"]
    assert payload["operating_point"] == {"rule": "youden", "threshold": op["threshold"]}
    for sid, e in expected.items():
        assert got[sid]["threshold"] == op["threshold"]
        assert got[sid]["positive_at_threshold"] == (e["positive_at_threshold"] == "1")
    csv_out = tmp_path / "pred.csv"
    invoke("predict", trained["bundle"], trained["manifest"], "--out", csv_out, "--device", "cpu")
    with open(csv_out, newline="") as f:
        lines = {r["scan"]: r for r in csv.DictReader(f)}
    assert {sid: lines[sid]["positive_at_threshold"] for sid in expected} == {
        sid: "yes" if got[sid]["positive_at_threshold"] else "no" for sid in expected}


def test_unreadable_scans_are_reported_and_the_rest_predicted(trained, tmp_path: Path) -> None:
    good = read_manifest(trained["manifest"])[0].path
    empty = tmp_path / "empty_series"
    empty.mkdir()
    zero = tmp_path / "zero.nii.gz"
    zero.write_bytes(b"")
    out = tmp_path / "pred.csv"
    res = runner.invoke(app, ["predict", str(trained["bundle"]), good, str(tmp_path / "nope.nii.gz"),
                              str(empty), str(zero), "--out", str(out)])
    assert res.exit_code == 1, res.output
    assert "3 could not be predicted" in res.output
    for name in ("nope.nii.gz", "empty_series", "zero.nii.gz"):
        assert name in res.output
    assert "no such file" in res.output and "empty folder" in res.output
    with open(out, newline="") as f:
        lines = list(csv.DictReader(f))
    assert lines[0]["path"] == good and lines[0]["predicted"] in ("covid", "normal")
    assert [bool(r["error"]) for r in lines] == [False, True, True, True]
    # refuse to overwrite the output file
    res = runner.invoke(app, ["predict", str(trained["bundle"]), good, "--out", str(out)])
    assert res.exit_code == 2 and "refusing to overwrite" in res.output


def _nifti(path: Path, array: np.ndarray) -> Path:
    import nibabel as nib

    nib.Nifti1Image(array.astype(np.float32), np.eye(4)).to_filename(str(path))
    return path


def test_scans_unlike_the_training_scans_are_flagged(trained, tmp_path: Path) -> None:
    ref = load_bundle(trained["bundle"]).intensity_reference
    train = [r for r in read_manifest(trained["manifest"]) if r.split == "train"]
    assert ref["n_scans"] == len(train) > 0 and ref["hu_fraction"] == 1.0
    assert ref["p99"]["min"] > -500  # chest CT: tissue and bone above air
    good = [r.path for r in read_manifest(trained["manifest"]) if r.split == "test"]
    air = _nifti(tmp_path / "air[red].nii.gz", np.full((16, 16, 10), -1000.0))
    mri = _nifti(tmp_path / "mri.nii.gz", np.random.default_rng(0).uniform(0, 900, (16, 16, 10)))
    out = tmp_path / "pred.csv"
    res = runner.invoke(app, ["predict", str(trained["bundle"]), *good, str(air), str(mri),
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert f"warning: {air}: intensities unlike the training scans: median -1000" in text
    assert "99th percentile -1000 (training" in text
    assert f"warning: {mri}: intensities unlike the training scans: not in Hounsfield units" in text
    assert text.count("warning:") == 2 and "intensity check" not in text
    with open(out, newline="") as f:
        lines = {r["path"]: r for r in csv.DictReader(f)}
    assert [bool(lines[g]["warning"]) for g in good] == [False] * len(good)
    assert "median -1000" in lines[str(air)]["warning"]
    assert lines[str(air)]["predicted"] in ("covid", "normal")  # predicted all the same

    # a bundle from before the statistics predicts unchecked, saying so once
    old = _copy(trained["bundle"], tmp_path)
    m = json.loads((old / "bundle.json").read_text())
    for key in ("intensity_reference", "content_sha256"):
        del m[key]
    (old / "bundle.json").write_text(json.dumps(m | {"format_version": 1}))
    out = tmp_path / "old.json"
    res = runner.invoke(app, ["predict", str(old), str(air), str(mri), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert res.output.count("intensity check unavailable") == 1 and "warning:" not in res.output
    payload = json.loads(out.read_text())
    assert payload["intensity_check"].startswith("unavailable")
    assert [r["warning"] for r in payload["predictions"]] == [None, None]


def test_pickled_weights_are_refused(trained, tmp_path: Path) -> None:
    bundle = _copy(trained["bundle"], tmp_path)
    state = load_bundle(bundle).model.state_dict()
    torch.save(state, bundle / "model.safetensors")  # a pickle renamed into the bundle
    with pytest.raises(BundleError, match="pickle"):
        load_bundle(bundle)
    # even with bundle.json updated to the pickle's checksum
    _edit_manifest(bundle, weights={"file": "model.safetensors", "format": "safetensors",
                                    "sha256": sha256_file(bundle / "model.safetensors")})
    with pytest.raises(BundleError, match="pickle"):
        load_bundle(bundle)
    res = runner.invoke(app, ["predict", str(bundle), str(read_manifest(trained["manifest"])[0].path)])
    assert res.exit_code == 2 and "pickle" in res.output


def test_tampered_or_corrupt_files_give_clear_errors(trained, tmp_path: Path) -> None:
    bundle = _copy(trained["bundle"], tmp_path)
    weights = bundle / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in a weight
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 differs"):
        load_bundle(bundle)
    weights.write_bytes(bytes(data[: len(data) // 2]))  # truncated, checksum "fixed"
    _edit_manifest(bundle, weights={"file": "model.safetensors", "sha256": sha256_file(weights)})
    with pytest.raises(BundleError, match="not a valid safetensors"):
        load_bundle(bundle)

    bundle = _copy(trained["bundle"], tmp_path / "b2")
    (bundle / "config.yaml").write_text((bundle / "config.yaml").read_text() + "# edited\n")
    with pytest.raises(BundleError, match="config.yaml: sha256 differs"):
        load_bundle(bundle)


def test_declared_input_is_checked_against_the_weights(trained, tmp_path: Path) -> None:
    bundle = _copy(trained["bundle"], tmp_path)
    _edit_manifest(bundle, input_shape=[1, 4, 16, 16])
    with pytest.raises(BundleError, match="declared input"):
        load_bundle(bundle)
    # what the checksummed config.yaml and run.json say wins over an edited bundle.json
    _edit_manifest(bundle, input_shape=[2, 8, 16, 16])
    with pytest.raises(BundleError, match=r"input_shape is \[2, 8, 16, 16\] but config.yaml"):
        load_bundle(bundle)
    _edit_manifest(bundle, input_shape=[1, 8, 16, 16], num_classes=3,
                   classes=["covid", "normal", "cap"])
    with pytest.raises(BundleError, match="classes is .* but run.json says"):
        load_bundle(bundle)
    _edit_manifest(bundle, num_classes=3, classes=["covid", "normal"])
    with pytest.raises(BundleError, match="num_classes 3"):
        load_bundle(bundle)
    (bundle / "bundle.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bundle)
    with pytest.raises(BundleError, match="export it first"):
        load_bundle(trained["run"])


def test_edited_bundle_json_is_refused_by_every_loader(trained, tmp_path: Path,
                                                       monkeypatch) -> None:
    """Fields that change a prediction are checked against the checksummed files, and the
    whole bundle.json against its content_sha256: predict, explain and load_run refuse."""
    from volnas.deploy.bundle import load_run_or_bundle
    from volnas.training.rundir import RunDirError, load_run

    scan = str(read_manifest(trained["manifest"])[0].path)
    m = json.loads((trained["bundle"] / "bundle.json").read_text())
    window = {**m["preprocess"], "window": [-600.0, 200.0]}
    edits = {
        "classes": (dict(classes=["normal", "covid"]), "classes is"),
        "window": (dict(preprocess=window), "preprocess is"),
        "positive": (dict(positive_class="normal"), "positive_class is"),
        "amp": (dict(inference={**m["inference"], "amp": False}), "inference is"),
        "temperature": (dict(inference={**m["inference"],
                                        "temperature": 2 * m["inference"]["temperature"]}),
                        "inference is"),
        "no temperature": (dict(inference={k: v for k, v in m["inference"].items()
                                           if k != "temperature"}), "inference is"),
        "augmentation": (dict(augmentation={"train": "none", "policy": None}), "augmentation is"),
        "metrics": (dict(metrics={**m["metrics"], "accuracy": 0.99}), "metrics is"),
        "genotype": (dict(model={**m["model"], "genotype": {**m["model"]["genotype"],
                                                            "space": "covidnet3d-s"}}),
                     "model.genotype is"),
        "weights": (dict(weights={**m["weights"], "file": "config.yaml"}), "weights.file is"),
    }
    for name, (change, message) in edits.items():
        bundle = _copy(trained["bundle"], tmp_path / name)
        _edit_manifest(bundle, **change)
        with pytest.raises(BundleError, match=f"bundle.json: {message}"):
            load_bundle(bundle)
    # the classes edit through each loader, with the file and what differs named
    bundle = tmp_path / "classes" / "copy"
    with pytest.raises(RunDirError, match="an exported bundle"):
        load_run(bundle)  # the training layer never opens a bundle unverified
    with pytest.raises(BundleError, match="run.json says"):
        load_run_or_bundle(bundle)
    res = runner.invoke(app, ["evaluate", str(bundle)])
    assert res.exit_code == 2 and "run.json says" in res.output, res.output
    # an intact bundle evaluates, without a file written into it
    before = sorted(p.name for p in trained["bundle"].iterdir())
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["evaluate", str(trained["bundle"])])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in trained["bundle"].iterdir()) == before
    assert (tmp_path / "evaluations").is_dir() and load_bundle(trained["bundle"])
    res = runner.invoke(app, ["predict", str(bundle), scan])
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert '/bundle.json: classes is ["normal", "covid"] but run.json says ["covid", "normal"]' in text
    res = runner.invoke(app, ["explain", str(bundle), scan, "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "run.json says" in res.output, res.output
    # any other edit (here the intensity statistics) breaks the content digest
    bundle = _copy(trained["bundle"], tmp_path / "stats")
    ref = m["intensity_reference"]
    _edit_manifest(bundle, restamp=False, intensity_reference={**ref, "hu_fraction": 0.0})
    with pytest.raises(BundleError, match="content differs from its content_sha256"):
        load_bundle(bundle)
    # a swapped genotype.json, or one dropped from the file list, is refused too
    bundle = _copy(trained["bundle"], tmp_path / "geno")
    geno = json.loads((bundle / "genotype.json").read_text())
    (bundle / "genotype.json").write_text(json.dumps({**geno, "num_classes": 3}))
    with pytest.raises(BundleError, match="genotype.json: sha256 differs"):
        load_bundle(bundle)
    _edit_manifest(bundle, files={k: v for k, v in m["files"].items() if k != "genotype.json"})
    with pytest.raises(BundleError, match="does not list genotype.json"):
        load_bundle(bundle)


def test_registry_model_bundle_from_a_search_folder(tmp_path: Path) -> None:
    """A registry architecture is rebuilt by name; a search folder exports its final/ run."""
    final = tmp_path / "search" / "final"
    final.mkdir(parents=True)
    model = create_model("mc3_18", in_channels=1, num_classes=3).eval()
    save_tensors(final / "model.safetensors", model.state_dict())
    cfg = TrainConfig.model_validate({"data": "unused.csv", "model": "mc3_18",
                                      "preprocess": {"slices": 4, "size": (16, 16)}})
    (final / "config.yaml").write_text(dump_config(cfg))
    (final / "run.json").write_text(json.dumps({"classes": ["a", "b", "c"], "positive_class": "b"}))
    with pytest.warns(UserWarning, match="unused.csv could not be read"):
        bundle = load_bundle(export_bundle(tmp_path / "search", tmp_path / "bundle"))
    assert bundle.intensity_reference is None
    assert bundle.model_name == "mc3_18" and bundle.metrics is None
    x = torch.rand(2, 1, 4, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(bundle.model(x), model(x))


def test_explain_writes_heatmaps(trained, tmp_path: Path) -> None:
    if importlib.util.find_spec("volnas.explain.api") is None:
        pytest.skip("volnas.explain.api is not available")
    rows = read_manifest(trained["manifest"])
    scans = [f"{trained['manifest']}#{rows[0].scan_id}", rows[1].path]
    out = tmp_path / "explain"
    invoke("predict", trained["bundle"], *scans, "--explain", "--explain-dir", out)
    heatmaps = sorted(out.glob("*/heatmap.nii.gz"))
    assert len(heatmaps) == 2 and (out / "summary.json").is_file()


def test_predict_real_dicom_series(trained, dicom_series: Path) -> None:
    rows, failures = predict_scans(load_bundle(trained["bundle"]), [dicom_series])
    assert not failures
    assert len(rows) == 1 and rows[0]["predicted"] in ("covid", "normal")
    assert sum(rows[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_onnx_export_matches_pytorch(trained, tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    bundle_dir = export_bundle(trained["run"], tmp_path / "bundle", onnx=True)
    m = json.loads((bundle_dir / "bundle.json").read_text())
    assert m["onnx"]["file"] == "model.onnx", m["onnx"]
    onnx.checker.check_model(str(bundle_dir / "model.onnx"))
    bundle = load_bundle(bundle_dir)
    x = torch.rand(3, *bundle.input_shape)
    with torch.no_grad():
        expected = bundle.model(x).numpy()
    try:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(bundle_dir / "model.onnx"))
        got = sess.run(None, {"scan": x.numpy()})[0]
    except ImportError:
        from onnx.reference import ReferenceEvaluator

        got = ReferenceEvaluator(str(bundle_dir / "model.onnx")).run(None, {"scan": x.numpy()})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_onnx_missing_is_a_warning_not_a_failure(trained, tmp_path: Path, monkeypatch) -> None:
    for name in ("onnx", "onnxscript", "onnxruntime"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed: import fails
    with pytest.warns(UserWarning, match="onnx"):
        bundle_dir = export_bundle(trained["run"], tmp_path / "bundle", onnx=True)
    m = json.loads((bundle_dir / "bundle.json").read_text())
    assert m["onnx"]["file"] is None and "onnx" in m["onnx"]["error"]
    assert not (bundle_dir / "model.onnx").exists()
    load_bundle(bundle_dir)


def test_a_folder_of_scans_is_predicted_scan_by_scan(trained, tmp_path: Path) -> None:
    """A user points predict at the folder the new scans are in: every scan inside it is
    predicted (masks/ beside them is not), each named by its path, the threshold shown."""
    data = trained["root"] / "data"
    assert (data / "masks").is_dir() and any((data / "masks").iterdir())
    out = tmp_path / "pred.json"
    text = invoke("predict", trained["bundle"], data, "--out", out, "--device", "cpu")
    rows = json.loads(out.read_text())["predictions"]
    want = sorted(str(Path(r.path).resolve()) for r in read_manifest(trained["manifest"]))
    assert sorted(str(Path(r["path"]).resolve()) for r in rows) == want
    assert all("masks" not in Path(r["path"]).parts for r in rows)
    assert f"{len(want)} scan(s)" in text and "covid at p >=" in " ".join(text.split())
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    res = runner.invoke(app, ["predict", str(trained["bundle"]), str(empty)])
    assert res.exit_code == 1 and "folder holds no" in " ".join(res.output.split())
