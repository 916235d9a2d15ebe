"""Classification metrics for scan-level predictions (docs/design.md, section 3).

Rules:

* Predictions are ``argmax(probs, axis=1)`` (ties go to the lowest index, as numpy does).
* ``accuracy`` is micro over all scans.
* ``precision``, ``sensitivity`` (recall), ``specificity`` and ``f1`` are *binary*: the
  positive class against all other classes pooled (for NCP / CP / Normal: NCP vs CP + Normal).
* The positive class is chosen by the one rule of :mod:`volnas.data.classes` (the manifest
  records the same choice): ``positive_class`` when given (must be one of ``class_names``);
  otherwise a class called COVID; otherwise, of two classes where exactly one is called
  normal, the other one; otherwise the class at index 1.
* Any ratio whose denominator is zero is 0 (``zero_division=0``), e.g. precision when the
  positive class is never predicted. Macro averages run over all K classes, so a class absent
  from both ``y_true`` and the predictions counts as 0; ``balanced_accuracy`` averages recall
  over the classes present in ``y_true`` only (as scikit-learn does).
* ``auc`` is the ROC AUC of ``P(positive)`` against is-positive; it is ``None`` (with an entry
  in ``warnings``) when ``y_true`` holds only one side. ``auc_macro_ovr`` is the unweighted
  mean of one-vs-rest AUCs over the classes where it is defined (equal to ``auc`` for K == 2).
* Every value is a plain ``int``/``float``/``str``/``list``/``dict``/``None`` - never NaN - so
  the dict can go straight to ``json.dumps``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

from volnas.data.classes import positive_class as _positive_class

ROW_SUM_TOL = 1e-3

_ALIASES = {"recall": "sensitivity", "tpr": "sensitivity", "tnr": "specificity"}


def resolve_positive_class(class_names: Sequence[str], positive_class: str | None = None) -> int:
    """Index of the positive class (the rule of :mod:`volnas.data.classes`)."""
    names = list(class_names)
    if len(names) < 2:
        raise ValueError(f"need at least 2 classes, got class_names={names!r}")
    return names.index(_positive_class(names, positive_class))


def validate_inputs(
    y_true: Any, probs: Any, class_names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Check shapes, label range and row sums; return ``(y_true int64 (N,), probs float64 (N, K))``."""
    names = list(class_names)
    if len(names) < 2:
        raise ValueError(f"need at least 2 classes, got class_names={names!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names must be unique, got {names!r}")
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be 2-D (N, K), got shape {p.shape}")
    n, k = p.shape
    if k != len(names):
        raise ValueError(f"probs has {k} columns but there are {len(names)} class_names {names!r}")
    if n == 0:
        raise ValueError("no scans: probs has 0 rows")
    if not np.all(np.isfinite(p)):
        raise ValueError("probs contains NaN or inf")
    if p.min() < -ROW_SUM_TOL:
        raise ValueError(f"probs must be non-negative (min {p.min():.4g}); pass softmax outputs")
    sums = p.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > ROW_SUM_TOL)
    if bad.size:
        raise ValueError(
            f"probs rows must sum to 1 within {ROW_SUM_TOL} (softmax outputs, not logits); "
            f"{bad.size} row(s) do not, e.g. row {bad[0]} sums to {sums[bad[0]]:.6g}"
        )
    y = np.asarray(y_true)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"y_true must have shape ({n},) to match probs, got {y.shape}")
    if y.dtype.kind == "b" or y.dtype.kind not in "iuf":
        raise ValueError(f"y_true must hold integer class indices, got dtype {y.dtype}")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise ValueError("y_true must hold integer class indices, got non-integral values")
    yi = y.astype(np.int64)
    out = (yi < 0) | (yi >= k)
    if out.any():
        raise ValueError(
            f"y_true labels must be in [0, {k - 1}] for {k} classes; "
            f"found {sorted(set(yi[out].tolist()))}"
        )
    return yi, p


def _div(a: float, b: float) -> float:
    return float(a) / float(b) if b else 0.0


def _auc(is_pos: np.ndarray, score: np.ndarray) -> float | None:
    if is_pos.all() or not is_pos.any():
        return None
    return float(roc_auc_score(is_pos.astype(np.int64), score))


def compute_metrics(
    y_true: Any,
    probs: Any,
    class_names: Sequence[str],
    positive_class: str | None = None,
) -> dict[str, Any]:
    """All scan-level metrics as a JSON-serialisable dict (rules in the module docstring)."""
    names = [str(c) for c in class_names]
    y, p = validate_inputs(y_true, probs, names)
    k = len(names)
    pos = resolve_positive_class(names, positive_class)
    pred = p.argmax(axis=1)
    labels = list(range(k))
    warnings: list[str] = []

    cm = confusion_matrix(y, pred, labels=labels)
    is_pos, pred_pos = y == pos, pred == pos
    tp = int(np.sum(is_pos & pred_pos))
    fp = int(np.sum(~is_pos & pred_pos))
    fn = int(np.sum(is_pos & ~pred_pos))
    tn = int(np.sum(~is_pos & ~pred_pos))

    prec, rec, f1, sup = precision_recall_fscore_support(
        y, pred, labels=labels, average=None, zero_division=0
    )
    per_class = {
        names[i]: {
            "precision": float(prec[i]),
            "recall": float(rec[i]),
            "f1": float(f1[i]),
            "support": int(sup[i]),
        }
        for i in labels
    }
    averages = {}
    for avg in ("macro", "weighted"):
        ap, ar, af, _ = precision_recall_fscore_support(
            y, pred, labels=labels, average=avg, zero_division=0
        )
        averages[avg] = {"precision": float(ap), "recall": float(ar), "f1": float(af)}

    present = sup > 0
    for i in labels:
        if not present[i]:
            warnings.append(f"class {names[i]!r} has no scans in y_true; its recall is set to 0")
        if cm[:, i].sum() == 0:
            warnings.append(f"class {names[i]!r} is never predicted; its precision is set to 0")

    auc = _auc(is_pos, p[:, pos])
    if auc is None:
        side = "positive" if is_pos.all() else "negative"
        warnings.append(f"auc undefined: y_true has no {side} scans (positive={names[pos]!r})")
    if k == 2:
        auc_macro = auc
    else:
        per_auc = [_auc(y == i, p[:, i]) for i in labels]
        defined = [a for a in per_auc if a is not None]
        auc_macro = float(np.mean(defined)) if defined else None
        skipped = [names[i] for i, a in enumerate(per_auc) if a is None]
        if skipped:
            warnings.append(
                f"auc_macro_ovr skips classes with undefined one-vs-rest AUC: {skipped}"
            )

    precision = _div(tp, tp + fp)
    sensitivity = _div(tp, tp + fn)
    return {
        "n_scans": int(y.shape[0]),
        "class_names": names,
        "positive_class": names[pos],
        "positive_index": int(pos),
        "accuracy": _div(int(np.sum(pred == y)), y.shape[0]),
        "precision": precision,
        "sensitivity": sensitivity,
        "specificity": _div(tn, tn + fp),
        "f1": _div(2 * tp, 2 * tp + fp + fn),
        "auc": auc,
        "auc_macro_ovr": auc_macro,
        "balanced_accuracy": float(np.mean(rec[present])),
        "binary_counts": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
        "confusion_matrix": cm.astype(int).tolist(),
        "per_class": per_class,
        "macro": averages["macro"],
        "weighted": averages["weighted"],
        "warnings": warnings,
    }


def _lookup(metrics: Mapping[str, Any], name: str) -> Any:
    """Value at ``name``; dotted names reach into nested dicts (``macro.f1``)."""
    cur: Any = metrics
    for part in name.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            raise KeyError(f"metric {name!r} not found; top-level keys: {sorted(metrics)}")
        cur = cur[part]
    return cur


def select_metric(metrics: Mapping[str, Any], name: str) -> float:
    """Score for checkpoint selection, larger is better.

    ``name`` is any numeric key (``auc``, ``f1``, ``accuracy``, ``balanced_accuracy`` ...,
    aliases ``recall``/``tpr`` -> sensitivity, ``tnr`` -> specificity), a dotted path into
    nested dicts (``macro.f1``), or a name ending in ``loss`` which is returned negated.
    ``None``/NaN map to ``-inf``; an unknown name raises ``KeyError``.
    """
    key = _ALIASES.get(name, name)
    value = _lookup(metrics, key)
    if value is None:
        return -math.inf
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"metric {name!r} is not a number: {value!r}")
    v = float(value)
    if math.isnan(v):
        return -math.inf
    return -v if key.rsplit(".", 1)[-1].endswith("loss") else v


class SeedSummary(NamedTuple):
    """Mean and spread of one metric across seeds; ``n`` counts the non-missing values."""

    mean: float | None
    std: float | None
    n: int


def summarize_seeds(
    runs: Iterable[Mapping[str, Any]],
    keys: Sequence[str] = ("accuracy", "precision", "sensitivity", "f1", "auc"),
) -> dict[str, SeedSummary]:
    """``{key: SeedSummary(mean, std, n)}`` over runs; std uses ddof=1 (0.0 when n == 1).

    ``None``/NaN/missing values are skipped; with none left, mean and std are ``None``.
    """
    runs = list(runs)
    out: dict[str, SeedSummary] = {}
    for key in keys:
        vals = []
        for run in runs:
            try:
                v = _lookup(run, key)
            except KeyError:
                continue
            if v is not None and not math.isnan(float(v)):
                vals.append(float(v))
        if not vals:
            out[key] = SeedSummary(None, None, 0)
            continue
        arr = np.asarray(vals)
        std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
        out[key] = SeedSummary(float(arr.mean()), std, int(arr.size))
    return out
