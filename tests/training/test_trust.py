"""Numbers a reviewer can trust: bootstrap intervals over patients, calibration, and that
neither the temperature nor anything else is chosen on the test split."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm

from volnas.data.dataset import ScanDataset
from volnas.data.synth import synthesize
from volnas.training import run as run_module
from volnas.training.config import TrainConfig
from volnas.training.evaluate import evaluate_run
from volnas.training.metrics import (
    CI_METRICS,
    apply_temperature,
    bootstrap_ci,
    bootstrap_samples,
    brier,
    choose_threshold,
    compute_metrics,
    ece,
    fit_temperature,
    operating_point_metrics,
    paired_bootstrap_auc,
    parse_operating_rule,
    resample_weights,
)
from volnas.training.rundir import RunDirError


def colour_pixels(path: Path, colour: str, tol: int = 25) -> int:
    """Pixels of the PNG within ``tol`` (per RGB channel) of a matplotlib colour."""
    from matplotlib.colors import to_rgb
    from PIL import Image

    img = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
    want = np.array([round(c * 255) for c in to_rgb(colour)], dtype=np.int16)
    return int((np.abs(img - want).max(axis=-1) <= tol).sum())


def _two_class(score: np.ndarray) -> np.ndarray:
    """Probabilities [negative, positive] from a score (positive when score > 0)."""
    p = 1 / (1 + np.exp(-score))
    return np.stack([1 - p, p], axis=1)


# --------------------------------------------------------------------------- intervals


def test_bootstrap_ci_covers_the_true_auc_and_accuracy() -> None:
    """Scores N(mu, 1) for positives, N(0, 1) for negatives: the true AUC is
    Phi(mu / sqrt 2), and thresholding at mu / 2 gives a true accuracy of Phi(mu / 2)."""
    mu, n, reps = 1.2, 120, 200
    true_auc, true_acc = norm.cdf(mu / math.sqrt(2)), norm.cdf(mu / 2)
    rng = np.random.default_rng(1)
    hits = {"auc": 0, "accuracy": 0}
    for r in range(reps):
        y = rng.integers(0, 2, n)
        score = rng.normal(size=n) + mu * y - mu / 2
        ci = bootstrap_ci(y, _two_class(score), ["neg", "pos"], "pos", np.arange(n),
                          n_boot=400, seed=r)
        for key in hits:
            lo, hi = ci[key]
            hits[key] += lo <= {"auc": true_auc, "accuracy": true_acc}[key] <= hi
    for key, h in hits.items():
        assert 0.90 <= h / reps <= 0.99, (key, h / reps)


def test_resample_weights_keep_a_patients_scans_together() -> None:
    groups = ["p1", "p1", "p2", "p3", "p3", "p3", "p4"]
    w = resample_weights(groups, len(groups), n_boot=200, seed=0)
    assert w.shape == (200, 7)
    for a, b in ((0, 1), (3, 4), (4, 5)):
        assert np.array_equal(w[:, a], w[:, b])  # drawn together, as often
    # each resample draws 4 patients
    per_patient = w[:, [0, 2, 3, 6]]
    assert (per_patient.sum(axis=1) == 4).all()
    assert len(np.unique(w[:, 0])) > 2  # patients are drawn 0, 1, 2, ... times
    with pytest.raises(ValueError, match="patient ids"):
        resample_weights(["a", ""], 2, 10, 0)


def test_grouping_widens_the_interval_of_correlated_scans() -> None:
    """Five scans per patient that are scored alike carry one patient's evidence: the
    patient-grouped interval is much wider than one that treats scans as independent."""
    rng = np.random.default_rng(0)
    patients, per = 40, 5
    y_p = rng.integers(0, 2, patients)
    s_p = rng.normal(size=patients) + 1.0 * y_p - 0.5
    y = np.repeat(y_p, per)
    score = np.repeat(s_p, per) + 0.05 * rng.normal(size=patients * per)
    groups = np.repeat([f"P{i}" for i in range(patients)], per)
    probs = _two_class(score)
    grouped = bootstrap_ci(y, probs, ["n", "p"], "p", groups, seed=3)
    scans = bootstrap_ci(y, probs, ["n", "p"], "p", None, seed=3)
    for key in ("accuracy", "auc"):
        wide = grouped[key][1] - grouped[key][0]
        narrow = scans[key][1] - scans[key][0]
        assert wide > 1.7 * narrow, (key, wide, narrow)


def test_bootstrap_metrics_equal_compute_metrics_on_the_full_sample() -> None:
    """An all-ones resample reproduces compute_metrics, ties in the scores included."""
    rng = np.random.default_rng(5)
    n = 90
    y = rng.integers(0, 3, n)
    p = rng.dirichlet([1, 1, 1], n)
    p[np.arange(n), y] += 0.4
    p = np.round(p / p.sum(1, keepdims=True), 1)  # coarse: many tied scores
    p[:, 2] = 1 - p[:, 0] - p[:, 1]
    p = np.clip(p, 0, 1)
    m = compute_metrics(y, p, ["a", "b", "c"], "b")
    s = bootstrap_samples(y, p, ["a", "b", "c"], "b", np.ones((1, n)))
    for key in CI_METRICS:
        want = m["weighted"]["f1"] if key == "f1_weighted" else m[key]
        assert s[key][0] == pytest.approx(want, abs=1e-12), key


def test_bootstrap_ci_is_seeded_and_skips_resamples_without_auc() -> None:
    # 2 positive patients of 6: some resamples draw none, and have no AUC
    y = np.array([1, 1, 0, 0, 0, 0])
    probs = _two_class(np.array([2.0, 0.5, -1.0, 1.0, -2.0, 0.0]))
    a = bootstrap_ci(y, probs, ["n", "p"], "p", np.arange(6), n_boot=300, seed=9)
    b = bootstrap_ci(y, probs, ["n", "p"], "p", np.arange(6), n_boot=300, seed=9)
    assert a == b
    used = a["resamples_used"]
    assert used["accuracy"] == 300 and 150 < used["auc"] < 300
    assert 0 <= a["auc"][0] <= a["auc"][1] <= 1


def test_paired_bootstrap_says_when_a_difference_is_noise() -> None:
    rng = np.random.default_rng(2)
    n = 200
    y = rng.integers(0, 2, n)
    good = _two_class(rng.normal(size=n) + 2.5 * y)
    noise = _two_class(rng.normal(size=n))
    slightly = _two_class(np.log(good[:, 1] / good[:, 0]) + 0.01 * rng.normal(size=n))
    groups = np.arange(n) // 2
    same = paired_bootstrap_auc(y, good, good, ["n", "p"], "p", groups)
    assert same["diff"] == 0 and same["ci"] == [0, 0] and same["within_noise"]
    near = paired_bootstrap_auc(y, slightly, good, ["n", "p"], "p", groups)
    assert near["within_noise"] and near["ci"][0] < 0 < near["ci"][1]
    far = paired_bootstrap_auc(y, good, noise, ["n", "p"], "p", groups)
    assert far["diff"] > 0.3 and far["ci"][0] > 0 and not far["within_noise"]


# --------------------------------------------------------------------------- calibration


def test_ece_and_brier_on_a_hand_computed_case() -> None:
    probs = np.array([[0.92, 0.08], [0.96, 0.04], [0.3, 0.7], [0.55, 0.45]])
    y = np.array([0, 1, 1, 0])
    # bins of 0.1: the first two share (0.9, 1]: accuracy 0.5, confidence 0.94
    assert ece(y, probs, bins=10) == pytest.approx((2 * 0.44 + 0.3 + 0.45) / 4)
    assert brier(y, probs) == pytest.approx((0.0128 + 1.8432 + 0.18 + 0.405) / 4)
    assert ece([0, 1], [[1.0, 0.0], [0.0, 1.0]]) == 0 and brier([0, 1], [[1, 0], [0, 1]]) == 0


def test_temperature_scaling_fixes_an_over_confident_model() -> None:
    rng = np.random.default_rng(4)

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 3, n)
        logits = rng.normal(size=(n, 3))
        logits[np.arange(n), y] += 1.0
        return y, logits

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    y_val, z_val = sample(600)
    y_test, z_test = sample(600)
    t = fit_temperature(softmax(4.0 * z_val), y_val)  # logits x4: over-confident
    assert 3.0 < t < 5.5  # undoes the factor, roughly
    assert fit_temperature(4.0 * z_val, y_val, logits=True) == pytest.approx(t, rel=1e-3)
    raw = softmax(4.0 * z_test)
    cal = apply_temperature(raw, t)
    assert ece(y_test, raw) > 0.2 and ece(y_test, cal) < 0.5 * ece(y_test, raw)
    assert brier(y_test, cal) < brier(y_test, raw)
    assert np.array_equal(cal.argmax(1), raw.argmax(1))
    assert np.allclose(cal.sum(1), 1.0)
    assert np.allclose(apply_temperature(raw, 1.0), raw, atol=1e-9)
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(raw, 0.0)


# --------------------------------------------------------------------------- a run



@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory: pytest.TempPathFactory,
        tiny_genotype) -> dict[str, object]:
    """One tiny run, with every dataset read and every temperature fit recorded."""
    root = tmp_path_factory.mktemp("trust")
    res = synthesize(root / "data", scans=30, fmt="npz", classes=2, shape=(12, 24, 24), seed=3)
    cfg = TrainConfig.model_validate({
        "data": str(next(res.out.glob("*.npz"))), "model": tiny_genotype(root / "tiny.json"),
        "epochs": 2, "batch_size": 4, "seed": 7, "cache_dir": str(root / "cache"),
        "preprocess": {"slices": 12, "size": (24, 24), "intensity": "range",
                       "window": (0, 255)}})
    events: list[tuple[str, int]] = []
    fits: list[tuple[int, np.ndarray]] = []
    real_load, real_fit = ScanDataset.load, run_module.fit_temperature

    def spy_load(self, i):
        events.append((self.rows[i].split, i))
        return real_load(self, i)

    def spy_fit(probs, labels, **kw):
        fits.append((len(events), np.asarray(labels)))
        return real_fit(probs, labels, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ScanDataset, "load", spy_load)
        mp.setattr(run_module, "fit_temperature", spy_fit)
        metrics = run_module.run_training(cfg, root / "run")
    return {"run": root / "run", "metrics": metrics, "events": events, "fits": fits,
            "root": root}


def test_temperature_is_fitted_on_validation_never_test(calibrated_run) -> None:
    events, fits = calibrated_run["events"], calibrated_run["fits"]
    run = calibrated_run["run"]
    assert len(fits) == 1
    before, labels = fits[0]
    seen = events[:before]
    assert all(split != "test" for split, _ in seen)  # test not read before the fit
    info = json.loads((run / "run.json").read_text())
    cal = json.loads((run / "calibration.json").read_text())
    assert len(labels) == info["n_val"] == cal["n_val"] and cal["fitted_on"] == "val"
    assert cal["val_nll_after"] <= cal["val_nll_before"] + 1e-9
    # and test is read once, at the very end
    test_events = [e for e in events if e[0] == "test"]
    first = events.index(test_events[0])
    assert all(split == "test" for split, _ in events[first:])
    assert sorted(i for _, i in test_events) == list(range(len(test_events)))


def test_run_metrics_carry_intervals_and_calibration(calibrated_run) -> None:
    run = calibrated_run["run"]
    m = json.loads((run / "metrics.json").read_text())
    assert (m["ci_level"], m["ci_resamples"], m["ci_unit"]) == (0.95, 1000, "patient")
    for key in ("accuracy", "f1", "specificity"):
        lo, hi = m["ci"][key]
        assert lo <= m[key] <= hi
    t = json.loads((run / "calibration.json").read_text())["temperature"]
    cal = m["calibration"]
    assert cal["temperature"] == t and {"ece", "brier", "ece_calibrated",
                                        "brier_calibrated", "auc_calibrated"} <= set(cal)
    assert cal["auc_calibrated"] == pytest.approx(m["auc"])  # two classes: AUC unchanged
    png = run / "reliability_test.png"
    assert colour_pixels(png, "C0", tol=25) > 100 and colour_pixels(png, "C1", tol=25) > 100
    with open(run / "predictions_test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == m["n_scans"]
    for r in rows:  # p_* calibrated from p_raw_* by the run's temperature
        raw = np.array([[float(r["p_raw_0"]), float(r["p_raw_1"])]])
        cal = apply_temperature(raw, t)[0]
        assert float(r["temperature"]) == pytest.approx(t, rel=1e-5)
        assert [float(r["p_0"]), float(r["p_1"])] == pytest.approx(cal, abs=1e-4)  # 6 decimals


def test_evaluate_applies_the_runs_temperature_or_says_it_has_none(calibrated_run,
                                                                    tmp_path: Path) -> None:
    import shutil

    run = shutil.copytree(calibrated_run["run"], tmp_path / "run")
    t = json.loads((run / "calibration.json").read_text())["temperature"]
    m = evaluate_run(run, None, "val", out=tmp_path / "e1")
    assert m["calibration"]["temperature"] == t and "ece_calibrated" in m["calibration"]
    assert json.loads((tmp_path / "e1" / "evaluation.json").read_text())["temperature"] == t
    (run / "calibration.json").write_text(json.dumps({"temperature": -1}))
    with pytest.raises(RunDirError, match="calibration.json: temperature must be a positive"):
        evaluate_run(run, None, "val", out=tmp_path / "e2")
    (run / "calibration.json").unlink()  # an older run
    m = evaluate_run(run, None, "val", out=tmp_path / "e3")
    assert m["calibration"]["temperature"] is None and "uncalibrated" in m["calibration"]["note"]
    with open(tmp_path / "e3" / "predictions_val.csv") as f:
        assert "p_raw_" not in f.readline()


# --------------------------------------------------------------------------- operating point


def test_operating_point_rules_on_a_hand_computed_case() -> None:
    # negatives score .1 .2 .3 .4 .6 .7, positives .5 .8 .9 .95
    y = np.array([0] * 6 + [1] * 4)
    s = np.array([.1, .2, .3, .4, .6, .7, .5, .8, .9, .95])
    probs = np.stack([1 - s, s], axis=1)

    def pick(rule: str) -> tuple[float, float, float]:
        op = choose_threshold(y, probs, ["neg", "pos"], "pos", rule)
        return op["threshold"], op["sensitivity"], op["specificity"]

    # Youden: >= .8 gives 3/4 + 6/6 - 1 = .75, >= .5 gives 4/4 + 4/6 - 1 = .67
    assert pick("youden") == pytest.approx((0.75, 0.75, 1.0))
    assert pick("sensitivity:1") == pytest.approx((0.45, 1.0, 4 / 6))   # halfway .5 / .4
    assert pick("sensitivity:0.75") == pytest.approx((0.75, 0.75, 1.0))
    assert pick("specificity:0.5") == pytest.approx((0.35, 1.0, 0.5))
    with pytest.raises(ValueError, match="choose youden, sensitivity:S"):
        parse_operating_rule("sensitivity:90")
    with pytest.raises(ValueError, match="only one side"):
        choose_threshold(np.zeros(4, int), probs[:4], ["neg", "pos"], "pos", "youden")

    m = operating_point_metrics(y, probs, ["neg", "pos"], "pos", 0.45, n_boot=500, seed=1)
    assert m["binary_counts"] == {"tp": 4, "fp": 2, "fn": 0, "tn": 4}
    assert (m["sensitivity"], m["specificity"], m["ppv"], m["npv"]) == pytest.approx(
        (1.0, 4 / 6, 4 / 6, 1.0))
    for k in ("specificity", "ppv", "accuracy"):
        lo, hi = m["ci"][k]
        assert lo <= m[k] <= hi and lo < hi
    assert m["ci"]["sensitivity"] == [1.0, 1.0]  # every positive is called in every resample
    # a sample without positives has no sensitivity: None, never 0
    none = operating_point_metrics(y[:6], probs[:6], ["neg", "pos"], "pos", 0.45, n_boot=50)
    assert none["sensitivity"] is None and none["ci"]["sensitivity"] is None
    assert none["specificity"] == pytest.approx(4 / 6)


def test_run_reports_test_metrics_at_the_validation_operating_point(calibrated_run,
                                                                    tmp_path: Path) -> None:
    import shutil

    run = calibrated_run["run"]
    cal = json.loads((run / "calibration.json").read_text())
    op = cal["operating_point"]
    assert op["rule"] == "youden" and op["chosen_on_n"] == cal["n_val"] and 0 < op["threshold"] < 1
    m = json.loads((run / "metrics.json").read_text())
    got = m["operating_point"]
    assert got["threshold"] == op["threshold"] and got["chosen_on"] == "val"
    assert got["probabilities"] == "calibrated"
    with open(run / "predictions_test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    called = [int(r["positive_at_threshold"]) for r in rows]
    assert called == [int(float(r["p_1"]) >= op["threshold"]) for r in rows]
    truth = [r["label"] == m["positive_class"] for r in rows]
    tp = sum(c and t for c, t in zip(called, truth, strict=True))
    fn = sum((not c) and t for c, t in zip(called, truth, strict=True))
    assert got["binary_counts"]["tp"] == tp and got["binary_counts"]["fn"] == fn
    if tp + fn:
        assert got["sensitivity"] == pytest.approx(tp / (tp + fn))
    # evaluate applies the recorded threshold to other data; it never chooses a new one
    copy = shutil.copytree(run, tmp_path / "run")
    e = evaluate_run(copy, None, "val", out=tmp_path / "ev")
    assert e["operating_point"]["threshold"] == op["threshold"]
    assert e["operating_point"]["sensitivity"] == pytest.approx(op["sensitivity"])
    assert e["operating_point"]["specificity"] == pytest.approx(op["specificity"])
    c = json.loads((copy / "calibration.json").read_text())
    c["operating_point"]["threshold"] = 3
    (copy / "calibration.json").write_text(json.dumps(c))
    with pytest.raises(RunDirError, match="not a valid operating point"):
        evaluate_run(copy, None, "val", out=tmp_path / "ev2")


# --------------------------------------------------------------------------- benchmark report


def _predictions_csv(path: Path, ids: list[str], patients: list[str], labels: np.ndarray,
                     probs: np.ndarray, calibrated: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    head = ["scan_id", "patient_id", "label", "predicted", "p_neg", "p_pos"]
    if calibrated:  # p_* are then calibrated (here: scrambled) and p_raw_* the model's own
        head += ["temperature", "p_raw_neg", "p_raw_pos"]
    lines = [",".join(head)]
    for sid, pid, y, p in zip(ids, patients, labels, probs, strict=True):
        row = [sid, pid, ["neg", "pos"][y], "x", "0.5", "0.5"]
        if calibrated:
            row += ["1.5", f"{p[0]:.6f}", f"{p[1]:.6f}"]
        else:
            row[4:6] = [f"{p[0]:.6f}", f"{p[1]:.6f}"]
        lines.append(",".join(row))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_report_compares_each_row_with_the_best_baseline(tmp_path: Path) -> None:
    from volnas.benchmark.markdown import fmt_vs_baseline
    from volnas.benchmark.report import compare_to_best_baseline

    rng = np.random.default_rng(8)
    n = 160
    ids = [f"s{i:03d}" for i in range(n)]
    patients = [f"P{i // 2}" for i in range(n)]
    y = rng.integers(0, 2, n)
    signal = rng.normal(size=n) + 2.0 * y

    def run(name: str, seed: int, score: np.ndarray, calibrated: bool = True) -> Path:
        order = rng.permutation(n)  # files list scans in any order: paired by scan_id
        return _predictions_csv(tmp_path / name / str(seed) / "predictions_test.csv",
                                [ids[i] for i in order], [patients[i] for i in order],
                                y[order], _two_class(score)[order], calibrated)

    def row(name: str, kind: str, auc: float, files: list[Path]) -> dict:
        return {"name": name, "kind": kind, "summary": {"auc": {"mean": auc}},
                "runs": [{"positive_class": "pos"}] * len(files), "_predictions": files}

    rows = [
        row("weak", "train", 0.6, [run("weak", s, 0.3 * signal + rng.normal(size=n))
                                   for s in (0, 1)]),
        row("strong", "train", 0.9, [run("strong", s, signal + 0.1 * rng.normal(size=n))
                                     for s in (0, 1)]),
        row("twin", "search", 0.9, [run("twin", s, signal + 0.1 * rng.normal(size=n), False)
                                    for s in (0, 1)]),
        row("broken", "search", 0.5, [tmp_path / "missing.csv"]),
    ]
    compare_to_best_baseline(rows)
    weak, strong, twin, broken = rows
    assert strong["best_baseline"] and "vs_baseline" not in strong
    assert weak["vs_baseline"]["baseline"] == "strong"
    assert weak["vs_baseline"]["diff"] < 0 and weak["vs_baseline"]["ci"][1] < 0
    assert not weak["vs_baseline"]["within_noise"]
    assert twin["vs_baseline"]["within_noise"] and abs(twin["vs_baseline"]["diff"]) < 0.02
    assert twin["vs_baseline"]["n_scans"] == n and twin["vs_baseline"]["runs"] == 2
    assert "missing.csv" in broken["vs_baseline"]["error"]
    assert fmt_vs_baseline(strong) == "best baseline"
    assert fmt_vs_baseline(twin).endswith(", within noise")
    assert "within noise" not in fmt_vs_baseline(weak) and fmt_vs_baseline(weak).startswith("-")
