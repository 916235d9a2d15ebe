"""Result plots as PNG files.

Figures are built with ``matplotlib.figure.Figure`` + ``FigureCanvasAgg`` so no global backend
or pyplot state is touched. Each figure has a fixed size (no tight bbox), so the pixel size of
a PNG is ``figsize * DPI``; files are written to a temp file beside ``out`` and moved into place
with ``os.replace``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import auc as area_under_curve
from sklearn.metrics import roc_curve

from volnas.core.files import atomic_path
from volnas.training.metrics import confidence_bins, ece, resolve_positive_class, validate_inputs

DPI = 120
HISTORY_SIZE = (11.0, 4.5)
CONFUSION_SIZE = (6.5, 5.5)
ROC_SIZE = (6.0, 5.5)
SCATTER_SIZE = (7.5, 5.5)
RELIABILITY_SIZE = (6.0, 5.5)

_TITLE, _LABEL, _TICK, _LEGEND = 13, 12, 10, 10
_SKIP_HISTORY = {"epoch", "lr", "learning_rate", "time", "seconds", "elapsed_s", "step"}


def _new_figure(size: tuple[float, float]) -> Figure:
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out: Path | str) -> Path:
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return out


def _style(ax: Any, title: str | None = None, xlabel: str = "", ylabel: str = "") -> None:
    if title:
        ax.set_title(title, fontsize=_TITLE)
    ax.set_xlabel(xlabel, fontsize=_LABEL)
    ax.set_ylabel(ylabel, fontsize=_LABEL)
    ax.tick_params(labelsize=_TICK)


def _number(v: Any) -> float | None:
    if v is None or isinstance(v, bool) or not isinstance(v, int | float | np.number):
        return None
    f = float(v)
    return None if math.isnan(f) else f


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, row in enumerate(history):
        y = _number(row.get(key))
        if y is None:
            continue
        x = _number(row.get("epoch"))
        xs.append(float(i + 1) if x is None else x)
        ys.append(y)
    return xs, ys


def plot_history(
    history: Sequence[Mapping[str, Any]],
    out: Path | str,
    title: str | None = None,
    best_epoch: int | None = None,
) -> Path:
    """Loss curves (left) and every other ``train_*``/``val_*``/``test_*`` metric (right).

    Rows without ``epoch`` use their 1-based position; ``None``/NaN entries are skipped.
    """
    if not history:
        raise ValueError("history is empty; nothing to plot")
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys and k not in _SKIP_HISTORY]
    loss_keys = [k for k in keys if k.endswith("loss")]
    metric_keys = [
        k for k in keys if not k.endswith("loss") and k.split("_", 1)[0] in ("train", "val", "test")
    ]

    fig = _new_figure(HISTORY_SIZE)
    ax_loss, ax_met = fig.subplots(1, 2)
    for ax, group, ylabel in ((ax_loss, loss_keys, "loss"), (ax_met, metric_keys, "metric")):
        drawn = 0
        for key in group:
            xs, ys = _series(history, key)
            if xs:
                style = "--" if key.startswith("train") else "-"
                ax.plot(xs, ys, style, marker="o" if len(xs) < 30 else None, ms=3, label=key)
                drawn += 1
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", ls=":", lw=1.2, label=f"best epoch {best_epoch}")
        if drawn:
            ax.legend(fontsize=_LEGEND)
        else:
            ax.text(
                0.5,
                0.5,
                f"no {ylabel} values",
                ha="center",
                va="center",
                transform=ax.transAxes,
                fontsize=_LABEL,
                color="grey",
            )
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _style(ax, "Loss" if ax is ax_loss else "Metrics", "epoch", ylabel)
    if title:
        fig.suptitle(title, fontsize=_TITLE + 1)
    return _save(fig, out)


def plot_confusion(
    cm: Any,
    class_names: Sequence[str],
    out: Path | str,
    title: str = "Confusion matrix",
) -> Path:
    """Confusion matrix (rows = true, columns = predicted) with counts and row percentages."""
    m = np.asarray(cm)
    k = len(class_names)
    if m.shape != (k, k):
        raise ValueError(f"cm must be {k}x{k} to match class_names, got shape {m.shape}")
    fig = _new_figure(CONFUSION_SIZE)
    ax = fig.subplots()
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=max(float(m.max()), 1.0))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=_TICK)
    rows = m.sum(axis=1)
    fs = max(7, 13 - k)
    thresh = m.max() / 2.0 if m.max() > 0 else 1.0
    for i in range(k):
        for j in range(k):
            count = m[i, j]
            text = f"{count:g}"
            if rows[i] > 0:
                text += f"\n{100.0 * count / rows[i]:.0f}%"
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=fs,
                color="white" if count > thresh else "black",
            )
    ax.set_xticks(
        range(k), list(class_names), rotation=30 if k > 3 else 0, ha="right" if k > 3 else "center"
    )
    ax.set_yticks(range(k), list(class_names))
    _style(ax, title, "predicted", "true")
    return _save(fig, out)


def plot_roc(
    y_true: Any,
    probs: Any,
    class_names: Sequence[str],
    positive_class: str | None,
    out: Path | str,
    title: str = "ROC",
) -> Path:
    """ROC of positive-vs-rest (thick line, AUC in legend); K > 2 adds one-vs-rest per class.

    Curves that are undefined (only one side present in ``y_true``) are left out and noted.
    """
    names = [str(c) for c in class_names]
    y, p = validate_inputs(y_true, probs, names)
    pos = resolve_positive_class(names, positive_class)
    fig = _new_figure(ROC_SIZE)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1, label="chance")

    def curve(is_pos: np.ndarray, score: np.ndarray, label: str, **kw: Any) -> bool:
        if is_pos.all() or not is_pos.any():
            return False
        fpr, tpr, _ = roc_curve(is_pos.astype(int), score)
        auc = float(area_under_curve(fpr, tpr))
        ax.plot(fpr, tpr, label=f"{label} (AUC {auc:.3f})", **kw)
        return True

    notes = []
    if not curve(y == pos, p[:, pos], f"{names[pos]} vs rest", lw=2.5, color="C3"):
        notes.append(f"{names[pos]} vs rest undefined")
    if len(names) > 2:
        colors = iter(f"C{i}" for i in range(10) if i != 3)
        for i, name in enumerate(names):
            if i == pos:
                continue
            if not curve(
                y == i, p[:, i], f"{name} vs rest", lw=1.2, ls="--", color=next(colors, None)
            ):
                notes.append(f"{name} vs rest undefined")
    if notes:
        ax.text(
            0.98,
            0.02,
            "\n".join(notes),
            ha="right",
            va="bottom",
            transform=ax.transAxes,
            fontsize=_LEGEND,
            color="grey",
        )
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right" if not notes else "center right", fontsize=_LEGEND)
    _style(ax, title, "false positive rate (1 - specificity)", "true positive rate (sensitivity)")
    return _save(fig, out)


def reliability_curve(labels: Any, probs: Any, bins: int = 15
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per non-empty confidence bin ``(lo, hi]``: mean top-label confidence, accuracy, count."""
    n, conf, correct = confidence_bins(labels, probs, bins)
    keep = n > 0
    return conf[keep] / n[keep], correct[keep] / n[keep], n[keep]


def plot_reliability(
    labels: Any,
    probs: Any,
    out: Path | str,
    title: str = "Reliability",
    calibrated: Any | None = None,
    bins: int = 15,
    names: tuple[str, str] = ("raw", "temperature-scaled"),
) -> Path:
    """Reliability diagram: accuracy against top-label confidence per bin, for the raw
    probabilities (blue) and, when given, the temperature-scaled ones (orange), named in
    the legend by ``names``; the diagonal is perfect calibration. The legend gives each
    curve's ECE."""
    fig = _new_figure(RELIABILITY_SIZE)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1, label="perfect calibration")
    curves = [(names[0], probs, "C0")]
    if calibrated is not None:
        curves.append((names[1], calibrated, "C1"))
    for name, p, colour in curves:
        conf, acc, _ = reliability_curve(labels, p, bins)
        ax.plot(conf, acc, marker="o", lw=2, ms=5, color=colour,
                label=f"{name} (ECE {ece(labels, p, bins):.3f})")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=_LEGEND)
    _style(ax, title, "confidence (top-class probability)", "accuracy")
    return _save(fig, out)


def plot_scatter(
    points: Sequence[Mapping[str, Any]],
    xlabel: str,
    ylabel: str,
    out: Path | str,
    title: str = "",
    logx: bool = False,
) -> Path:
    """Labelled scatter; each point is ``{label, x, y, xerr?, yerr?}`` (errors symmetric)."""
    if not points:
        raise ValueError("points is empty; nothing to plot")
    for pt in points:
        missing = {"label", "x", "y"} - set(pt)
        if missing:
            raise ValueError(f"point {dict(pt)!r} lacks {sorted(missing)}")
        if logx and not float(pt["x"]) > 0:
            raise ValueError(f"logx needs x > 0, point {pt['label']!r} has x={pt['x']}")
    fig = _new_figure(SCATTER_SIZE)
    ax = fig.subplots()
    for i, pt in enumerate(points):
        ax.errorbar(
            float(pt["x"]),
            float(pt["y"]),
            xerr=pt.get("xerr"),
            yerr=pt.get("yerr"),
            fmt="o",
            ms=7,
            capsize=4,
            color=f"C{i % 10}",
            elinewidth=1.2,
        )
        ax.annotate(
            str(pt["label"]),
            (float(pt["x"]), float(pt["y"])),
            xytext=(6, 6),
            textcoords="offset points",
            fontsize=_LEGEND,
        )
    if logx:
        ax.set_xscale("log")
    ax.margins(0.12)
    ax.grid(alpha=0.3, which="both" if logx else "major")
    _style(ax, title, xlabel, ylabel)
    return _save(fig, out)


def plot_choice_probabilities(
    history: Sequence[Sequence[Sequence[float]]],
    layer_names: Sequence[str],
    candidate_names: Sequence[Sequence[str]],
    out: Path | str,
    title: str = "Search: candidate probabilities per layer",
) -> Path:
    """One small panel per searchable choice: each candidate's probability over epochs.

    Args:
        history: per epoch, per layer, the candidates' probabilities.
        layer_names: one name per layer.
        candidate_names: per layer, its candidates' names (legend of the first panel of
            each distinct candidate set).
        out: PNG path.
    """
    n = len(layer_names)
    cols = min(6, max(n, 1))
    rows = max(1, math.ceil(n / cols))
    fig = _new_figure((2.6 * cols, 2.0 * rows + 0.8))
    epochs = np.arange(1, len(history) + 1)
    seen: set[tuple[str, ...]] = set()
    for i, name in enumerate(layer_names):
        ax = fig.add_subplot(rows, cols, i + 1)
        probs = np.array([h[i] for h in history]) if history else np.zeros((0, 1))
        for j, cand in enumerate(candidate_names[i]):
            ax.plot(epochs, probs[:, j] if len(probs) else [], label=cand, lw=1.2)
        ax.set_ylim(0, 1)
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=6)
        key = tuple(candidate_names[i])
        if key not in seen:
            seen.add(key)
            ax.legend(fontsize=5, loc="upper left", ncol=2)
    fig.suptitle(title, fontsize=_TITLE)
    return _save(fig, out)
