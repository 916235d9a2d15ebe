"""Metrics against hand-worked examples and scikit-learn; plots produce sane PNGs."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from sklearn.metrics import (
    balanced_accuracy_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from volnas.training import plots
from volnas.training.metrics import (
    compute_metrics,
    resolve_positive_class,
    select_metric,
    summarize_seeds,
)

THREE = ["NCP", "CP", "Normal"]


def probs_for(preds: list[int], k: int, top: float = 0.7) -> np.ndarray:
    """Softmax-like rows whose argmax is ``preds``."""
    p = np.full((len(preds), k), (1.0 - top) / (k - 1))
    p[np.arange(len(preds)), preds] = top
    return p


def from_confusion(cm: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(y_true, probs) reproducing a confusion matrix (rows true, cols predicted)."""
    y, pred = [], []
    for t, row in enumerate(cm):
        for p, count in enumerate(row):
            y += [t] * count
            pred += [p] * count
    return np.array(y), probs_for(pred, len(cm))


def random_probs(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    logits = rng.normal(size=(n, k))
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------- hand-computed examples


def test_binary_hand_computed():
    # P(COVID) for 4 COVID scans then 6 Normal scans; threshold is 0.5 (argmax of 2 columns).
    pos_scores = [0.9, 0.8, 0.6, 0.3]  # TP, TP, TP, FN
    neg_scores = [0.7, 0.55, 0.4, 0.2, 0.1, 0.45]  # FP, FP, TN, TN, TN, TN
    s = np.array(pos_scores + neg_scores)
    probs = np.stack([1 - s, s], axis=1)
    y = np.array([1] * 4 + [0] * 6)
    m = compute_metrics(y, probs, ["Normal", "COVID"])

    # TP=3 FN=1 FP=2 TN=4
    assert m["positive_class"] == "COVID"
    assert m["binary_counts"] == {"tp": 3, "fp": 2, "fn": 1, "tn": 4}
    assert m["accuracy"] == pytest.approx(7 / 10)  # (3 + 4) / 10
    assert m["precision"] == pytest.approx(3 / 5)  # 3 / (3 + 2)
    assert m["sensitivity"] == pytest.approx(3 / 4)  # 3 / (3 + 1)
    assert m["specificity"] == pytest.approx(4 / 6)  # 4 / (4 + 2)
    # 2PR/(P+R) = 2 * 0.6 * 0.75 / 1.35 = 0.9 / 1.35 = 2/3
    assert m["f1"] == pytest.approx(2 / 3)
    # AUC = P(score_pos > score_neg) over 4*6 = 24 pairs:
    # 0.9 beats 6, 0.8 beats 6, 0.6 beats 5 (not 0.7), 0.3 beats 2 (0.2, 0.1) -> 19/24
    assert m["auc"] == pytest.approx(19 / 24)
    assert m["auc_macro_ovr"] == pytest.approx(19 / 24)
    assert m["confusion_matrix"] == [[4, 2], [1, 3]]
    # balanced accuracy = (recall_Normal + recall_COVID) / 2 = (4/6 + 3/4) / 2
    assert m["balanced_accuracy"] == pytest.approx((4 / 6 + 3 / 4) / 2)
    assert m["n_scans"] == 10
    assert m["warnings"] == []


def test_three_class_covid_vs_rest_hand_computed():
    cm = [
        [5, 1, 0],  # NCP    (6 scans)
        [2, 3, 1],  # CP     (6 scans)
        [1, 0, 7],  # Normal (8 scans)
    ]
    y, probs = from_confusion(cm)
    m = compute_metrics(y, probs, THREE)

    # NCP (index 0) is positive by name, not index 1.
    assert m["positive_class"] == "NCP" and m["positive_index"] == 0
    assert m["confusion_matrix"] == cm
    # TP = 5; FN = 1 + 0 = 1; FP = 2 + 1 = 3 (CP, Normal called NCP);
    # TN = CP+Normal not called NCP = (3 + 1) + (0 + 7) = 11; total 5+1+3+11 = 20
    assert m["binary_counts"] == {"tp": 5, "fp": 3, "fn": 1, "tn": 11}
    assert m["accuracy"] == pytest.approx(15 / 20)  # diagonal 5 + 3 + 7
    assert m["precision"] == pytest.approx(5 / 8)
    assert m["sensitivity"] == pytest.approx(5 / 6)
    assert m["specificity"] == pytest.approx(11 / 14)
    assert m["f1"] == pytest.approx(10 / 14)  # 2TP / (2TP + FP + FN) = 10 / 14

    pc = m["per_class"]
    # CP: precision 3 / (1 + 3 + 0), recall 3 / 6, f1 = 2*3 / (2*3 + 1 + 3) = 6/10
    assert pc["CP"] == pytest.approx({"precision": 3 / 4, "recall": 1 / 2, "f1": 0.6, "support": 6})
    # Normal: precision 7 / (0 + 1 + 7), recall 7 / 8
    assert pc["Normal"] == pytest.approx(
        {"precision": 7 / 8, "recall": 7 / 8, "f1": 7 / 8, "support": 8}
    )
    # NCP per-class equals the binary figures
    assert pc["NCP"] == pytest.approx(
        {"precision": 5 / 8, "recall": 5 / 6, "f1": 5 / 7, "support": 6}
    )
    f1s, sup = [5 / 7, 0.6, 7 / 8], [6, 6, 8]
    assert m["macro"]["f1"] == pytest.approx(sum(f1s) / 3)
    assert m["weighted"]["f1"] == pytest.approx(
        sum(f * s for f, s in zip(f1s, sup, strict=True)) / 20
    )
    assert m["weighted"]["recall"] == pytest.approx(m["accuracy"])  # weighted recall == accuracy
    assert m["balanced_accuracy"] == pytest.approx((5 / 6 + 1 / 2 + 7 / 8) / 3)
    json.dumps(m, allow_nan=False)


def test_confusion_matrix_orientation_rows_true_cols_pred():
    y = np.array([0, 0, 0, 2])
    probs = probs_for([1, 1, 1, 2], 3)
    cm = compute_metrics(y, probs, THREE)["confusion_matrix"]
    assert cm[0][1] == 3 and cm[1][0] == 0 and cm[2][2] == 1


# ---------------------------------------------------------------- against scikit-learn


@pytest.mark.parametrize("k", [2, 3, 5])
def test_auc_and_averages_match_sklearn(k):
    rng = np.random.default_rng(k)
    n = 200
    y = rng.integers(0, k, n)
    probs = random_probs(rng, n, k)
    names = [f"c{i}" for i in range(k)]
    m = compute_metrics(y, probs, names)
    pos = 1
    assert m["positive_class"] == "c1"
    assert m["auc"] == pytest.approx(roc_auc_score(y == pos, probs[:, pos]))
    if k > 2:
        assert m["auc_macro_ovr"] == pytest.approx(
            roc_auc_score(y, probs, multi_class="ovr", average="macro")
        )
    pred = probs.argmax(1)
    for avg in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y, pred, average=avg, zero_division=0)
        assert m[avg] == pytest.approx({"precision": p, "recall": r, "f1": f})
    p, r, f, _ = precision_recall_fscore_support(
        y == pos, pred == pos, average="binary", zero_division=0
    )
    assert (m["precision"], m["sensitivity"], m["f1"]) == pytest.approx((p, r, f))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["accuracy"] == pytest.approx(np.mean(pred == y))


# ---------------------------------------------------------------- positive class rule


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["Normal", "COVID-19"], 1),
        (["COVID", "Normal"], 0),
        (["covid19", "cap", "normal"], 0),
        (["Normal", "CP", "Covid_19"], 2),
        (["NCP", "CP", "Normal"], 0),
        (["normal", "ncp"], 1),
        (["benign", "malignant"], 1),  # binary fallback: index 1
        (["a", "b", "c"], 1),  # no name match, K > 2: index 1 too
        (["covidlike", "x"], 1),  # no substring matching
    ],
)
def test_positive_class_resolution(names, expected):
    assert resolve_positive_class(names) == expected


def test_explicit_positive_class_wins_and_is_checked():
    assert resolve_positive_class(THREE, "Normal") == 2
    y, probs = from_confusion([[2, 0, 0], [0, 2, 0], [0, 0, 2]])
    assert compute_metrics(y, probs, THREE, positive_class="CP")["positive_class"] == "CP"
    with pytest.raises(ValueError, match="positive_class 'covid'"):
        compute_metrics(y, probs, THREE, positive_class="covid")


# ---------------------------------------------------------------- degenerate inputs


def test_class_absent_from_y_true():
    # No CP scans at all; one Normal scan is predicted CP.
    y = np.array([0, 0, 2, 2, 2])
    probs = probs_for([0, 2, 2, 2, 1], 3)
    m = compute_metrics(y, probs, THREE)
    assert m["per_class"]["CP"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert any("'CP' has no scans" in w for w in m["warnings"])
    # balanced accuracy over present classes only: (1/2 + 2/3) / 2
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert m["auc"] is not None
    assert m["auc_macro_ovr"] is not None
    assert any("auc_macro_ovr skips" in w for w in m["warnings"])
    json.dumps(m, allow_nan=False)


def test_all_predictions_one_class_zero_division():
    y = np.array([1, 1, 0, 0, 0])
    probs = probs_for([0] * 5, 2)  # COVID never predicted
    m = compute_metrics(y, probs, ["Normal", "COVID"])
    assert m["precision"] == 0.0 and m["sensitivity"] == 0.0 and m["f1"] == 0.0
    assert m["specificity"] == 1.0
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["auc"] == pytest.approx(0.5)  # all scores tie
    assert any("'COVID' is never predicted" in w for w in m["warnings"])
    json.dumps(m, allow_nan=False)


@pytest.mark.parametrize("label", [0, 1])
def test_single_class_in_y_true_auc_none(label):
    y = np.full(4, label)
    probs = probs_for([0, 1, 1, 0], 2)
    m = compute_metrics(y, probs, ["Normal", "COVID"])
    assert m["auc"] is None and m["auc_macro_ovr"] is None
    assert any(w.startswith("auc undefined") for w in m["warnings"])
    if label == 0:  # no positives: sensitivity is 0 by zero_division
        assert m["sensitivity"] == 0.0 and m["specificity"] == 0.5
    json.dumps(m, allow_nan=False)


def test_single_scan_and_accepted_inputs():
    m = compute_metrics([2], [[0.1, 0.1, 0.8]], THREE)
    assert m["accuracy"] == 1.0 and m["auc"] is None
    # float labels that are integers, and rows off by less than 1e-3, are accepted
    probs = np.array([[0.6, 0.4005], [0.3, 0.7]])
    m = compute_metrics(np.array([0.0, 1.0]), probs, ["Normal", "COVID"])
    assert m["accuracy"] == 1.0


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("y", "probs", "names", "match"),
    [
        ([0, 1], [[0.5, 0.5], [0.5, 0.5]], THREE, "2 columns but there are 3"),
        ([0, 1], [0.5, 0.5], ["a", "b"], "must be 2-D"),
        ([0, 1], [[2.0, -1.0], [0.5, 0.5]], ["a", "b"], "non-negative"),
        ([0, 1], [[1.2, 0.5], [0.5, 0.5]], ["a", "b"], "sum to 1 within"),
        ([0, 2], [[0.5, 0.5], [0.5, 0.5]], ["a", "b"], r"in \[0, 1\]"),
        ([-1, 0], [[0.5, 0.5], [0.5, 0.5]], ["a", "b"], "found \\[-1\\]"),
        ([0], [[0.5, 0.5], [0.5, 0.5]], ["a", "b"], "must have shape \\(2,\\)"),
        ([0.5, 1], [[0.5, 0.5], [0.5, 0.5]], ["a", "b"], "non-integral"),
        ([0, 1], [[np.nan, 0.5], [0.5, 0.5]], ["a", "b"], "NaN"),
        ([0, 1], [[0.5, 0.5], [0.5, 0.5]], ["a", "a"], "unique"),
        ([0, 0], [[1.0], [1.0]], ["a"], "at least 2 classes"),
        ([], np.zeros((0, 2)), ["a", "b"], "0 rows"),
        (["a", "b"], [[0.5, 0.5], [0.5, 0.5]], ["a", "b"], "integer class indices"),
    ],
)
def test_input_validation(y, probs, names, match):
    with pytest.raises(ValueError, match=match):
        compute_metrics(np.asarray(y), probs, names)


# ---------------------------------------------------------------- selection and seeds


def test_select_metric():
    m = {
        "auc": 0.9,
        "f1": float("nan"),
        "precision": None,
        "loss": 0.25,
        "val_loss": 1.5,
        "sensitivity": 0.7,
        "macro": {"f1": 0.6},
    }
    assert select_metric(m, "auc") == 0.9
    assert select_metric(m, "f1") == -math.inf
    assert select_metric(m, "precision") == -math.inf
    assert select_metric(m, "loss") == -0.25
    assert select_metric(m, "val_loss") == -1.5
    assert select_metric(m, "recall") == 0.7
    assert select_metric(m, "macro.f1") == 0.6
    with pytest.raises(KeyError, match="'specificity' not found"):
        select_metric(m, "specificity")


def test_select_metric_on_compute_metrics_output():
    y, probs = from_confusion([[3, 0], [0, 1]])
    m = compute_metrics(y, probs, ["Normal", "COVID"])
    assert select_metric(m, "accuracy") == 1.0
    assert select_metric(compute_metrics([0, 0], probs_for([0, 1], 2), ["a", "b"]), "auc") == (
        -math.inf
    )


def test_summarize_seeds():
    runs = [
        {"accuracy": 0.8, "f1": 0.5, "auc": None},
        {"accuracy": 0.9, "f1": 0.5, "auc": 0.6},
        {"accuracy": 1.0, "f1": 0.5, "auc": 0.8},
    ]
    s = summarize_seeds(runs, keys=("accuracy", "f1", "auc", "precision"))
    # mean 0.9; deviations -0.1, 0, 0.1 -> var = 0.02 / (3 - 1) = 0.01 -> std 0.1
    assert s["accuracy"].mean == pytest.approx(0.9)
    assert s["accuracy"].std == pytest.approx(0.1)
    assert s["accuracy"].n == 3
    assert tuple(s["f1"]) == pytest.approx((0.5, 0.0, 3))
    # None skipped: mean 0.7, var = (0.01 + 0.01) / 1 -> std sqrt(0.02)
    assert s["auc"] == pytest.approx((0.7, math.sqrt(0.02), 2))
    assert s["precision"] == (None, None, 0)  # key missing everywhere

    one = summarize_seeds([{"accuracy": 0.75}], keys=("accuracy",))
    mean, std, n = one["accuracy"]
    assert (mean, std, n) == (0.75, 0.0, 1)


# ---------------------------------------------------------------- plots


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def expected_px(size: tuple[float, float]) -> tuple[int, int]:
    return round(size[0] * plots.DPI), round(size[1] * plots.DPI)


def check_png(path: Path, size: tuple[float, float]) -> None:
    assert path.is_file() and path.stat().st_size > 1000
    assert png_size(path) == expected_px(size)
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def colour_pixels(path: Path, colour: str, tol: int = 40) -> int:
    """Pixels of the PNG within ``tol`` (per RGB channel) of a matplotlib colour."""
    from matplotlib.colors import to_rgb
    from PIL import Image

    img = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
    want = np.array([round(c * 255) for c in to_rgb(colour)], dtype=np.int16)
    return int((np.abs(img - want).max(axis=-1) <= tol).sum())


def test_plot_history(tmp_path):
    hist = [
        {
            "epoch": e,
            "train_loss": 1 / e,
            "val_loss": 1.2 / e,
            "val_auc": 1 - 0.5 / e,
            "val_f1": None if e == 2 else 0.5,
            "lr": 1e-3,
        }
        for e in range(1, 6)
    ]
    out = plots.plot_history(hist, tmp_path / "sub" / "history.png", best_epoch=4)
    assert out == tmp_path / "sub" / "history.png"
    check_png(out, plots.HISTORY_SIZE)
    # the curves are drawn: train and val lines of each panel in the cycle's first colours
    for colour in ("C0", "C1"):
        assert colour_pixels(out, colour, tol=25) > 1000, colour
    blank = plots.plot_history([{"lr": 1e-3}], tmp_path / "blank.png")
    assert colour_pixels(blank, "C0", tol=25) < 20  # nothing to draw: no line colour
    # losses only, no epoch column: still fine
    check_png(
        plots.plot_history([{"train_loss": 1.0}, {"train_loss": 0.5}], tmp_path / "h2.png"),
        plots.HISTORY_SIZE,
    )
    with pytest.raises(ValueError, match="empty"):
        plots.plot_history([], tmp_path / "h3.png")


def test_plot_confusion(tmp_path):
    out = plots.plot_confusion(
        [[5, 1, 0], [2, 3, 1], [0, 0, 0]], THREE, tmp_path / "cm.png", title="test"
    )
    check_png(out, plots.CONFUSION_SIZE)
    # the largest count's cell is painted in the darkest blue of the map (and the colour bar)
    dark = matplotlib.colormaps["Blues"](1.0)
    assert colour_pixels(out, dark, tol=20) > 10_000
    # overwrite in place works (atomic replace)
    check_png(
        plots.plot_confusion(np.zeros((2, 2)), ["a", "b"], out, "zeros"), plots.CONFUSION_SIZE
    )
    # all zeros: no cell reaches the dark end, only the colour bar's top holds it
    assert colour_pixels(out, dark, tol=20) < 2000
    with pytest.raises(ValueError, match="2x2"):
        plots.plot_confusion([[1, 2, 3]], ["a", "b"], tmp_path / "bad.png")


def test_plot_roc(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 40)
    probs = random_probs(rng, 40, 3)
    check_png(plots.plot_roc(y, probs, THREE, None, tmp_path / "roc3.png"), plots.ROC_SIZE)
    assert colour_pixels(tmp_path / "roc3.png", "C3", tol=25) > 1000  # the positive curve
    check_png(
        plots.plot_roc(
            y % 2,
            probs[:, :2] / probs[:, :2].sum(1, keepdims=True),
            ["Normal", "COVID"],
            "COVID",
            tmp_path / "roc2.png",
        ),
        plots.ROC_SIZE,
    )
    # undefined curve (no positives) is noted, not an error
    check_png(
        plots.plot_roc(
            np.zeros(4, int),
            probs_for([0, 1, 0, 1], 2),
            ["Normal", "COVID"],
            None,
            tmp_path / "roc0.png",
        ),
        plots.ROC_SIZE,
    )


def test_plot_scatter(tmp_path):
    pts = [
        {"label": "small", "x": 1e5, "y": 0.80, "yerr": 0.02},
        {"label": "large", "x": 1e7, "y": 0.90, "xerr": 1e6, "yerr": 0.01},
        {"label": "mid", "x": 1e6, "y": 0.85},
    ]
    out = plots.plot_scatter(pts, "parameters", "F1", tmp_path / "sc.png", "F1 vs size", logx=True)
    check_png(out, plots.SCATTER_SIZE)
    for colour in ("C0", "C1", "C2"):  # one marker colour per point
        assert colour_pixels(out, colour, tol=25) > 60, colour
    assert colour_pixels(out, "C3", tol=25) < 20  # no fourth point
    with pytest.raises(ValueError, match="x > 0"):
        plots.plot_scatter(
            [{"label": "z", "x": 0, "y": 1}], "x", "y", tmp_path / "z.png", logx=True
        )
    with pytest.raises(ValueError, match="lacks"):
        plots.plot_scatter([{"x": 1, "y": 1}], "x", "y", tmp_path / "z.png")
