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


# --------------------------------------------------------------------------- uncertainty

CI_METRICS = ("accuracy", "precision", "sensitivity", "specificity", "f1", "f1_weighted", "auc")


def _group_index(groups: Any, n: int) -> tuple[np.ndarray, int]:
    """Each scan's group number (0..G-1) and G; ``None`` makes every scan its own group."""
    if groups is None:
        return np.arange(n), n
    g = list(groups)
    if len(g) != n:
        raise ValueError(f"groups has {len(g)} entries for {n} scans")
    if any(x is None or (isinstance(x, float) and math.isnan(x)) or str(x) == "" for x in g):
        raise ValueError("groups (patient ids) must not be empty or missing")
    _, inv = np.unique(np.asarray([str(x) for x in g]), return_inverse=True)
    return inv.astype(np.int64), int(inv.max()) + 1


def resample_weights(groups: Any, n: int, n_boot: int, seed: int) -> np.ndarray:
    """``(n_boot, n)`` multiplicities of each scan in bootstrap resamples of its groups:
    the groups (patients) are drawn with replacement, and a drawn patient brings all of
    their scans, as often as it was drawn."""
    gidx, n_groups = _group_index(groups, n)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_groups, size=(n_boot, n_groups))
    flat = (draws + np.arange(n_boot)[:, None] * n_groups).ravel()
    counts = np.bincount(flat, minlength=n_boot * n_groups).reshape(n_boot, n_groups)
    return counts[:, gidx].astype(np.float64)


def weighted_auc(is_pos: np.ndarray, score: np.ndarray, w: np.ndarray) -> np.ndarray:
    """ROC AUC (ties count one half) of each row of scan weights ``w`` (B, N); NaN where a
    row has no positive or no negative weight."""
    levels, lvl = np.unique(score, return_inverse=True)
    onehot = np.zeros((len(score), len(levels)))
    onehot[np.arange(len(score)), lvl] = 1.0
    neg = w * (~is_pos)
    pos = w * is_pos
    neg_at = neg @ onehot  # (B, L): negative weight at each score level
    below = np.cumsum(neg_at, axis=1) - neg_at
    wins = (below + 0.5 * neg_at)[:, lvl]  # (B, N)
    num = (pos * wins).sum(axis=1)
    den = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _rates(cm: np.ndarray, pos: int) -> dict[str, np.ndarray]:
    """Argmax metrics from (B, K, K) weighted confusion matrices (rows true, columns predicted)."""

    def div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.where(b > 0, a / np.where(b > 0, b, 1.0), 0.0)

    total = cm.sum(axis=(1, 2))
    diag = np.diagonal(cm, axis1=1, axis2=2)
    tp = cm[:, pos, pos]
    fp = cm[:, :, pos].sum(axis=1) - tp
    fn = cm[:, pos, :].sum(axis=1) - tp
    tn = total - tp - fp - fn
    true_k, pred_k = cm.sum(axis=2), cm.sum(axis=1)
    f1_k = div(2 * diag, true_k + pred_k)
    return {
        "accuracy": div(diag.sum(axis=1), total),
        "precision": div(tp, tp + fp),
        "sensitivity": div(tp, tp + fn),
        "specificity": div(tn, tn + fp),
        "f1": div(2 * tp, 2 * tp + fp + fn),
        "f1_weighted": div((true_k * f1_k).sum(axis=1), true_k.sum(axis=1)),
    }


def bootstrap_samples(
    labels: Any,
    probs: Any,
    class_names: Sequence[str],
    positive_class: str | None,
    weights: np.ndarray,
) -> dict[str, np.ndarray]:
    """Every metric of :data:`CI_METRICS` for each row of scan ``weights`` (B, N)."""
    names = [str(c) for c in class_names]
    y, p = validate_inputs(labels, probs, names)
    k = len(names)
    pos = resolve_positive_class(names, positive_class)
    pred = p.argmax(axis=1)
    pair = np.zeros((len(y), k * k))
    pair[np.arange(len(y)), y * k + pred] = 1.0
    cm = (weights @ pair).reshape(-1, k, k)
    out = _rates(cm, pos)
    out["auc"] = weighted_auc(y == pos, p[:, pos], weights)
    return out


def bootstrap_ci(
    labels: Any,
    probs: Any,
    class_names: Sequence[str],
    positive_class: str | None,
    groups: Any,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Percentile bootstrap intervals of the test metrics, resampling patients.

    ``groups`` holds each scan's patient id: patients are drawn with replacement and carry
    all their scans, so scans of one patient never count as independent evidence (``None``
    resamples scans). Returns ``{metric: [low, high]}`` for :data:`CI_METRICS` (``None``
    when no resample defines the metric) and ``resamples_used``: per metric, the resamples
    the interval is built from (a resample without positives or negatives has no AUC and
    is skipped for it; the argmax metrics use all).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    n = np.asarray(probs).shape[0]
    w = resample_weights(groups, n, n_boot, seed)
    samples = bootstrap_samples(labels, probs, class_names, positive_class, w)
    tail = 100 * (1 - level) / 2
    out: dict[str, Any] = {}
    used: dict[str, int] = {}
    for key in CI_METRICS:
        s = samples[key]
        s = s[np.isfinite(s)]
        used[key] = int(s.size)
        out[key] = (None if s.size == 0
                    else [float(np.percentile(s, tail)), float(np.percentile(s, 100 - tail))])
    out["resamples_used"] = used
    return out


def ci_record(
    labels: Any, probs: Any, class_names: Sequence[str], positive_class: str | None,
    groups: Any, n_boot: int = 1000, level: float = 0.95, seed: int = 0,
) -> dict[str, Any]:
    """The fields metrics.json carries about the intervals (``ci``, level, resamples, unit)."""
    ci = bootstrap_ci(labels, probs, class_names, positive_class, groups, n_boot, level, seed)
    used = ci.pop("resamples_used")
    return {"ci": ci, "ci_level": level, "ci_resamples": n_boot, "ci_resamples_used": used,
            "ci_unit": "scan" if groups is None else "patient", "ci_seed": seed}


def paired_bootstrap_auc(
    labels: Any,
    probs_a: Any,
    probs_b: Any,
    class_names: Sequence[str],
    positive_class: str | None,
    groups: Any,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """AUC of A minus AUC of B on the same scans, with a patient-grouped paired bootstrap
    interval: both are scored on each resample. ``probs_a``/``probs_b`` are one (N, K)
    array each, or a list of them (runs of several seeds: the difference of their mean
    AUCs). ``within_noise`` when the interval contains 0 (or no resample defines the AUC)."""
    y = np.asarray(labels)
    n = y.shape[0]
    names = [str(c) for c in class_names]
    pos = resolve_positive_class(names, positive_class)

    def runs(probs: Any) -> list[np.ndarray]:
        arr = [probs] if np.asarray(probs[0]).ndim == 1 else list(probs)
        return [validate_inputs(y, p, names)[1][:, pos] for p in arr]

    a, b = runs(probs_a), runs(probs_b)  # labels are checked here
    is_pos = y.astype(np.int64) == pos

    def mean_auc(scores: list[np.ndarray], w: np.ndarray) -> np.ndarray:
        return np.mean([weighted_auc(is_pos, s, w) for s in scores], axis=0)

    full = np.ones((1, n))
    diff = float((mean_auc(a, full) - mean_auc(b, full))[0])
    w = resample_weights(groups, n, n_boot, seed)
    d = mean_auc(a, w) - mean_auc(b, w)
    d = d[np.isfinite(d)]
    tail = 100 * (1 - level) / 2
    ci = None if d.size == 0 else [float(np.percentile(d, tail)),
                                   float(np.percentile(d, 100 - tail))]
    return {"diff": None if math.isnan(diff) else diff, "ci": ci, "level": level,
            "resamples_used": int(d.size), "n_scans": int(n), "unit": "patient",
            "within_noise": ci is None or ci[0] <= 0 <= ci[1]}


# --------------------------------------------------------------------------- calibration

_TINY = 1e-12
T_BOUNDS = (0.05, 20.0)


def confidence_bins(labels: Any, probs: Any, bins: int = 15
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin ``(lo, hi]`` of top-label confidence: the number of scans, the
    sum of their confidences and the number of them predicted correctly."""
    y = np.asarray(labels).astype(np.int64)
    p = np.asarray(probs, dtype=np.float64)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    b = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    return (np.bincount(b, minlength=bins), np.bincount(b, conf, bins),
            np.bincount(b, correct, bins))


def ece(labels: Any, probs: Any, bins: int = 15) -> float:
    """Expected calibration error of the top-label confidence: over ``bins`` equal-width
    confidence bins ``(lo, hi]``, the scan-weighted mean of |accuracy - mean confidence|."""
    n, conf, correct = confidence_bins(labels, probs, bins)
    return float(np.abs(correct - conf).sum() / max(n.sum(), 1))


def brier(labels: Any, probs: Any) -> float:
    """Multi-class Brier score: mean over scans of sum_k (p_k - [y == k])^2 (0 is perfect,
    2 the worst)."""
    y = np.asarray(labels).astype(np.int64)
    p = np.asarray(probs, dtype=np.float64)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1.0
    return float(((p - onehot) ** 2).sum(axis=1).mean())


def nll(labels: Any, probs: Any) -> float:
    """Mean negative log-likelihood of the true class."""
    y = np.asarray(labels).astype(np.int64)
    p = np.asarray(probs, dtype=np.float64)
    return float(-np.log(np.maximum(p[np.arange(len(y)), y], _TINY)).mean())


def _log_probs(probs: Any) -> np.ndarray:
    return np.log(np.maximum(np.asarray(probs, dtype=np.float64), _TINY))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def apply_temperature(probs: Any, temperature: float) -> np.ndarray:
    """``softmax(log p / T)``: the same as ``softmax(logits / T)``; T > 1 softens, T < 1
    sharpens, and the order of the classes in each row (so the argmax) is kept."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return _softmax(_log_probs(probs) / float(temperature))


def fit_temperature(probs: Any, labels: Any, *, logits: bool = False) -> float:
    """The temperature minimising the NLL of ``labels`` (validation data, never test),
    searched over log T within :data:`T_BOUNDS`. ``probs`` are softmax outputs, or raw
    logits with ``logits=True``."""
    from scipy.optimize import minimize_scalar

    z = np.asarray(probs, dtype=np.float64) if logits else _log_probs(probs)
    y = np.asarray(labels).astype(np.int64)
    if z.ndim != 2 or z.shape[0] != y.shape[0] or z.shape[0] == 0:
        raise ValueError(f"fit_temperature: {z.shape} scores for {y.shape} labels")

    def loss(log_t: float) -> float:
        s = z / math.exp(log_t)
        s = s - s.max(axis=1, keepdims=True)
        lse = np.log(np.exp(s).sum(axis=1))
        return float((lse - s[np.arange(len(y)), y]).mean())

    lo, hi = (math.log(b) for b in T_BOUNDS)
    res = minimize_scalar(loss, bounds=(lo, hi), method="bounded", options={"xatol": 1e-4})
    return float(math.exp(res.x))


def calibration_summary(labels: Any, probs: Any, temperature: float | None) -> dict[str, Any]:
    """Raw and (with a temperature) calibrated ECE, Brier and NLL of one split."""
    out: dict[str, Any] = {"temperature": temperature, "ece": ece(labels, probs),
                           "brier": brier(labels, probs), "nll": nll(labels, probs)}
    if temperature is not None:
        cal = apply_temperature(probs, temperature)
        out.update({"ece_calibrated": ece(labels, cal), "brier_calibrated": brier(labels, cal),
                    "nll_calibrated": nll(labels, cal)})
    return out


# ----------------------------------------------------------------------- operating point

OPERATING_RULES = ("youden", "sensitivity:S", "specificity:S")


def parse_operating_rule(rule: str) -> tuple[str, float | None]:
    """``youden`` | ``sensitivity:S`` | ``specificity:S`` (S in (0, 1]) -> (kind, target)."""
    kind, _, value = str(rule).strip().lower().partition(":")
    if kind == "youden" and not value:
        return "youden", None
    if kind in ("sensitivity", "specificity") and value:
        try:
            target = float(value)
        except ValueError:
            target = float("nan")
        if 0 < target <= 1:
            return kind, target
    raise ValueError(f"operating point {rule!r}: choose youden, sensitivity:S or "
                     "specificity:S with 0 < S <= 1 (e.g. sensitivity:0.9)")


def choose_threshold(
    labels: Any, probs: Any, class_names: Sequence[str], positive_class: str | None, rule: str,
) -> dict[str, Any]:
    """The threshold on P(positive) that ``rule`` picks on these (validation) scans.

    ``youden`` maximises sensitivity + specificity - 1; ``sensitivity:S`` is the highest
    threshold whose sensitivity is at least S, ``specificity:S`` the lowest whose
    specificity is at least S. A scan is called positive when P(positive) >= threshold; the
    threshold is placed halfway between the chosen score and the next lower one, so that
    it does not sit on a validation scan's own score.
    """
    from sklearn.metrics import roc_curve

    names = [str(c) for c in class_names]
    y, p = validate_inputs(labels, probs, names)
    pos = resolve_positive_class(names, positive_class)
    kind, target = parse_operating_rule(rule)
    is_pos, score = y == pos, p[:, pos]
    if is_pos.all() or not is_pos.any():
        raise ValueError(f"cannot choose an operating point: the scans hold only one side "
                         f"(positive={names[pos]!r})")
    fpr, tpr, thr = roc_curve(is_pos, score, drop_intermediate=False)
    if kind == "youden":
        i = int(np.argmax(tpr - fpr))
    elif kind == "sensitivity":
        i = int(np.flatnonzero(tpr >= target - 1e-12)[0])
    else:
        i = int(np.flatnonzero(1 - fpr >= target - 1e-12)[-1])
    i = max(i, 1)  # index 0 is roc_curve's +inf: nothing called positive
    lower = thr[i + 1] if i + 1 < len(thr) else 0.0
    threshold = float((thr[i] + lower) / 2)
    return {"rule": str(rule), "threshold": threshold, "chosen_on_n": int(len(y)),
            "sensitivity": float(tpr[i]), "specificity": float(1 - fpr[i])}


def operating_point_metrics(
    labels: Any, probs: Any, class_names: Sequence[str], positive_class: str | None,
    threshold: float, groups: Any = None, n_boot: int = 1000, level: float = 0.95, seed: int = 0,
) -> dict[str, Any]:
    """Sensitivity, specificity, PPV, NPV, accuracy and F1 of P(positive) >= ``threshold``
    (the positive class against the rest), each with a percentile bootstrap interval over
    patients (``groups``; None: scans), as :func:`bootstrap_ci` draws them."""
    names = [str(c) for c in class_names]
    y, p = validate_inputs(labels, probs, names)
    pos = resolve_positive_class(names, positive_class)
    truth, called = (y == pos).astype(int), (p[:, pos] >= threshold).astype(int)
    cells = np.zeros((len(y), 4))  # tn, fp, fn, tp
    cells[np.arange(len(y)), truth * 2 + called] = 1.0
    w = np.vstack([np.ones(len(y)), resample_weights(groups, len(y), n_boot, seed)])
    tn, fp, fn, tp = (w @ cells).T

    def ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # NaN where undefined
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(b > 0, a / np.where(b > 0, b, 1.0), np.nan)

    rates = {"sensitivity": ratio(tp, tp + fn), "specificity": ratio(tn, tn + fp),
             "ppv": ratio(tp, tp + fp), "npv": ratio(tn, tn + fn),
             "accuracy": ratio(tp + tn, tp + tn + fp + fn), "f1": ratio(2 * tp, 2 * tp + fp + fn)}
    tail = 100 * (1 - level) / 2

    def interval(v: np.ndarray) -> list[float] | None:
        v = v[np.isfinite(v)]
        return None if v.size == 0 else [float(np.percentile(v, tail)),
                                         float(np.percentile(v, 100 - tail))]

    return {
        "threshold": float(threshold),
        **{k: (None if not np.isfinite(v[0]) else float(v[0])) for k, v in rates.items()},
        "binary_counts": {"tp": int(tp[0]), "fp": int(fp[0]), "fn": int(fn[0]), "tn": int(tn[0])},
        "ci": {k: interval(v[1:]) for k, v in rates.items()},
        "ci_level": level, "ci_resamples": n_boot,
        "ci_unit": "scan" if groups is None else "patient", "ci_seed": seed,
    }
