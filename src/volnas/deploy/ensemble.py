"""Ensembles: several trained networks whose calibrated probabilities are averaged.

Members are run folders (a search folder's ``final/`` retrain) or bundles, with the same
classes, positive class and preprocessing (so one prepared scan is every member's input).
Each member keeps its own calibration: its test-time augmentation (chosen on its own
validation split) and then its temperature are applied to its softmax, and the ensemble's
probability is the mean of these calibrated probabilities. Beside it, per scan:

* **spread**: the standard deviation over members of their (calibrated) probability of the
  class the ensemble predicts; 0 when the members agree exactly;
* **entropy**: the entropy of the ensemble's probabilities divided by log K (K classes), so
  0 is certain and 1 is uniform;
* **review**: spread above ``flag_spread`` or entropy above ``flag_entropy``.

:func:`evaluate_ensemble` evaluates an ensemble on a split like a run (``volnas ensemble``);
:func:`export_ensemble` writes an ensemble bundle::

    bundle.json      format volnas-bundle, kind "ensemble": members (folder, sha256 of each
                     member's bundle.json and weights), classes, preprocessing, review
                     thresholds, the ensemble's metrics, sha256 of every other file
    members/00/ ...  one ordinary bundle per member (verified on every load)
    metrics.json     the ensemble's metrics on the split it was evaluated on

:func:`load_ensemble` verifies it as :func:`~volnas.deploy.bundle.load_bundle` verifies a
bundle, and every member bundle too.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn

from volnas import __version__
from volnas.core.files import atomic_path, atomic_write_text, sha256_file
from volnas.core.markup import make_console
from volnas.data.dataset import make_loader, open_source
from volnas.data.preprocess import PreprocessConfig
from volnas.deploy.bundle import (
    FORMAT,
    FORMAT_VERSION,
    WEIGHTS,
    Bundle,
    BundleError,
    content_digest,
    load_bundle,
    resolve_run_dir,
)
from volnas.training.config import TrainConfig
from volnas.training.device import resolve_device
from volnas.training.evaluate import read_temperature, read_tta
from volnas.training.metrics import (
    apply_temperature,
    brier,
    ci_record,
    compute_metrics,
    ece,
    nll,
)
from volnas.training.plots import plot_confusion, plot_reliability, plot_roc
from volnas.training.rundir import RunDirError, build_datasets, load_run
from volnas.training.trainer import Trainer
from volnas.training.tta import predict_tta

KIND = "ensemble"
MEMBERS = "members"
ENSEMBLE_JSON = "ensemble.json"
FLAG_SPREAD = 0.15
FLAG_ENTROPY = 0.8
MEMBER_METRICS = ("accuracy", "f1", "auc")


class EnsembleError(BundleError):
    """Members cannot form an ensemble, or an ensemble bundle is not valid; the message
    names the member or file and what is wrong."""


# --------------------------------------------------------------------------- uncertainty


def mean_probabilities(member_probs: Sequence[np.ndarray]) -> np.ndarray:
    """The ensemble's probabilities: the mean of the members' (N, K) calibrated ones."""
    return np.mean(np.stack([np.asarray(p, dtype=np.float64) for p in member_probs]), axis=0)


def spread(member_probs: Sequence[np.ndarray], predicted: np.ndarray) -> np.ndarray:
    """Per scan, the standard deviation over members of their probability of the
    ``predicted`` class (population std: 0 when all members give the same number)."""
    stacked = np.stack([np.asarray(p, dtype=np.float64) for p in member_probs])  # (M, N, K)
    idx = np.asarray(predicted, dtype=np.int64)
    return stacked[:, np.arange(stacked.shape[1]), idx].std(axis=0)


def normalised_entropy(probs: np.ndarray) -> np.ndarray:
    """Per scan, the entropy of ``probs`` (N, K) divided by log K: 0 certain, 1 uniform."""
    p = np.asarray(probs, dtype=np.float64)
    k = p.shape[1]
    if k < 2:
        return np.zeros(p.shape[0])
    logs = np.log(np.where(p > 0, p, 1.0))
    return -(p * logs).sum(axis=1) / math.log(k)


def review_flags(spreads: np.ndarray, entropies: np.ndarray, flag_spread: float,
                 flag_entropy: float) -> np.ndarray:
    """Scans to look at: spread above ``flag_spread`` or entropy above ``flag_entropy``."""
    return (np.asarray(spreads) > flag_spread) | (np.asarray(entropies) > flag_entropy)


def uncertainty(member_probs: Sequence[np.ndarray], flag_spread: float,
                flag_entropy: float) -> dict[str, np.ndarray]:
    """``probs`` (the mean), ``predicted``, ``spread``, ``entropy`` and ``review`` per scan."""
    probs = mean_probabilities(member_probs)
    predicted = probs.argmax(axis=1)
    s = spread(member_probs, predicted)
    h = normalised_entropy(probs)
    return {"probs": probs, "predicted": predicted, "spread": s, "entropy": h,
            "review": review_flags(s, h, flag_spread, flag_entropy)}


def check_flags(flag_spread: float, flag_entropy: float) -> None:
    """Refuse thresholds outside their range (spread in [0, 0.5], entropy in [0, 1])."""
    if not 0 <= flag_spread <= 0.5:
        raise ValueError(f"--flag-spread must be in [0, 0.5] (a std of probabilities), "
                         f"got {flag_spread}")
    if not 0 <= flag_entropy <= 1:
        raise ValueError(f"--flag-entropy must be in [0, 1] (entropy / log K), got {flag_entropy}")


# --------------------------------------------------------------------------- members


@dataclass
class Member:
    """One network of an ensemble, with the calibration it brings."""

    source: Path  # as given (a run, a search folder, or a bundle)
    folder: Path  # the run folder (a search's final/) or the bundle folder
    kind: str  # "run" or "bundle"
    model: nn.Module
    cfg: TrainConfig
    info: dict[str, Any]
    temperature: float | None
    tta: str

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.info["classes"]]

    @property
    def positive_class(self) -> str | None:
        return self.info.get("positive_class")

    @property
    def weights_sha256(self) -> str:
        return sha256_file(self.folder / WEIGHTS)

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        """The member's probabilities after its temperature (unchanged without one)."""
        return raw if self.temperature is None else apply_temperature(raw, self.temperature)


def load_member(source: Path) -> Member:
    """A run folder, a search folder or a verified bundle as an ensemble member."""
    source = Path(source)
    if is_ensemble_bundle(source):
        raise EnsembleError(f"{source}: an ensemble bundle; list its members instead")
    is_bundle = (source / "bundle.json").is_file()
    try:
        if is_bundle:
            load_bundle(source)  # verified before it is opened
            folder = source
        else:
            folder = resolve_run_dir(source)
        model, cfg, info = load_run(folder, bundle_verified=is_bundle)
        temperature, tta = read_temperature(folder), read_tta(folder)
    except (BundleError, RunDirError, FileNotFoundError, OSError, ValueError, KeyError) as e:
        raise EnsembleError(f"member {source}: {e}") from e
    return Member(source, folder, "bundle" if is_bundle else "run", model, cfg, info,
                  temperature, tta)


def load_members(sources: Sequence[str | Path]) -> list[Member]:
    """Members from run folders and bundles (an ensemble bundle adds all of its members),
    checked to be compatible (:func:`check_compatible`)."""
    members: list[Member] = []
    for s in sources:
        if is_ensemble_bundle(Path(s)):
            members += [_member_of(b, Path(s)) for b in load_ensemble(Path(s)).members]
        else:
            members.append(load_member(Path(s)))
    if len(members) < 2:
        raise EnsembleError(f"an ensemble needs at least two members, got {len(members)}")
    check_compatible(members)
    return members


def _member_of(bundle: Bundle, source: Path) -> Member:
    model, cfg, info = load_run(bundle.path, bundle_verified=True)
    return Member(source / bundle.path.relative_to(source), bundle.path, "bundle", model, cfg,
                  info, read_temperature(bundle.path), read_tta(bundle.path))


def check_compatible(members: Sequence[Member]) -> None:
    """Refuse members whose classes, positive class or preprocessing (input geometry,
    intensity handling) differ from the first member's; the error names both members."""
    first = members[0]
    for m in members[1:]:
        if m.classes != first.classes:
            raise EnsembleError(f"member {m.source}: classes {m.classes} differ from those of "
                                f"member {first.source} {first.classes}")
        if m.positive_class != first.positive_class:
            raise EnsembleError(
                f"member {m.source}: positive class {m.positive_class!r} differs from that "
                f"of member {first.source} ({first.positive_class!r})")
        a, b = first.cfg.preprocess.model_dump(), m.cfg.preprocess.model_dump()
        if a != b:
            diff = ", ".join(f"{k} {b[k]} vs {a[k]}" for k in a if a[k] != b[k])
            raise EnsembleError(
                f"member {m.source}: input geometry or preprocessing differs from member "
                f"{first.source} ({diff}); ensemble members must see the same input")


def member_record(m: Member) -> dict[str, Any]:
    """What ensemble.json says of a member."""
    return {"path": str(m.source.resolve()), "kind": m.kind,
            "weights_sha256": m.weights_sha256, "model": m.cfg.model,
            "temperature": m.temperature, "tta": m.tta}


# --------------------------------------------------------------------------- evaluate


def _free_folder(out: Path, what: str) -> Path:
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise EnsembleError(f"{out}: already exists and is not empty; choose another {what}")
    return out


def evaluate_ensemble(
    sources: Sequence[str | Path],
    out: Path,
    *,
    data: str | None = None,
    split: str = "test",
    export: Path | None = None,
    flag_spread: float | None = None,
    flag_entropy: float | None = None,
    device: str = "auto",
    console: Console | None = None,
) -> dict[str, Any]:
    """Evaluate the ensemble of ``sources`` on ``split`` of ``data``, like a run.

    Writes into ``out`` (absent or empty; written under a temporary name and renamed when
    complete): ``metrics.json`` (the metrics of the averaged calibrated probabilities, each
    with its patient-bootstrap interval; calibration; each member's figures; the review
    counts), ``predictions_<split>.csv`` (probabilities, spread, entropy, review, and each
    member's calibrated probabilities), the confusion, ROC and reliability plots, and
    ``ensemble.json`` (members with the sha256 of their weights). With ``export`` it then
    writes an ensemble bundle there (:func:`export_ensemble`).

    ``data`` defaults to the members' own data (which must then be the same for all);
    ``flag_spread`` / ``flag_entropy`` default to :data:`FLAG_SPREAD` / :data:`FLAG_ENTROPY`,
    or to the stored ones when the only source is an ensemble bundle.
    """
    console = console or make_console()
    out = _free_folder(Path(out), "--out")
    if export is not None:
        export = _free_folder(Path(export), "--export")
        if Path(export).resolve() == out.resolve():
            raise EnsembleError(f"{export}: --export and --out must be different folders")
    if split not in ("train", "val", "test"):
        raise ValueError(f"unknown split {split!r}; choose train, val or test")
    flag_spread, flag_entropy = _flags(sources, flag_spread, flag_entropy)
    members = load_members(sources)
    if data is None:
        datas = {str(m.cfg.data) for m in members}
        if len(datas) != 1:
            raise EnsembleError(f"the members were trained on different data ({sorted(datas)}); "
                                "name the data to evaluate on with --data")
        data = datas.pop()
    source = open_source(data)
    classes = members[0].classes
    if source.class_names != classes:
        raise ValueError(f"{data}: classes {source.class_names} differ from the members' "
                         f"{classes}")
    cfg0 = members[0].cfg.model_copy(update={"data": str(data)})
    ds = build_datasets(cfg0, source, (split,))[split]
    if len(ds) == 0:
        raise ValueError(f"{data}: no scans in the {split} split")
    ds.train = False
    loader = make_loader(ds, cfg0.batch_size, train=False, num_workers=cfg0.num_workers)
    dev = resolve_device(device)

    raws, cals = [], []
    labels = np.zeros(0)
    for m in members:
        trainer = Trainer(m.model, m.cfg, class_names=classes, positive_class=m.positive_class,
                          device=dev, run_dir=m.folder)
        raw, labels, _ = predict_tta(trainer, loader, m.tta)
        raws.append(raw.astype(np.float64))
        cals.append(m.calibrate(raw.astype(np.float64)))
    u = uncertainty(cals, flag_spread, flag_entropy)
    probs = u["probs"]
    positive = members[0].positive_class
    metrics = compute_metrics(labels, probs, classes, positive)
    groups = [row.patient_id for row in ds.rows]
    metrics.update(ci_record(labels, probs, classes, metrics["positive_class"], groups))
    raw_mean = mean_probabilities(raws)
    metrics.update({
        "split": split, "data": str(data), "n_members": len(members),
        "probabilities": "mean of the members' calibrated probabilities (each member's "
                         "test-time augmentation, then its temperature)",
        "calibration": {
            "ece": ece(labels, raw_mean), "brier": brier(labels, raw_mean),
            "nll": nll(labels, raw_mean), "ece_calibrated": ece(labels, probs),
            "brier_calibrated": brier(labels, probs), "nll_calibrated": nll(labels, probs),
            "note": "raw: the mean of the members' uncalibrated probabilities; calibrated: "
                    "the ensemble's (the mean of the members' temperature-scaled ones)"},
        "members": [member_record(m) | _member_figures(labels, p, classes, positive)
                    for m, p in zip(members, cals, strict=True)],
        "review": _review_summary(labels, u, flag_spread, flag_entropy),
    })
    record = {"members": [member_record(m) for m in members], "data": str(data),
              "split": split, "n_scans": int(len(labels)),
              "review": {"flag_spread": flag_spread, "flag_entropy": flag_entropy},
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "volnas_version": __version__}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, folder=True) as tmp:
        _write_predictions(tmp / f"predictions_{split}.csv", ds, labels, u, cals, classes)
        plot_confusion(np.array(metrics["confusion_matrix"]), classes,
                       tmp / f"confusion_{split}.png", title=f"{split} confusion matrix (ensemble)")
        plot_roc(labels, probs, classes, metrics["positive_class"], tmp / f"roc_{split}.png")
        plot_reliability(labels, raw_mean, tmp / f"reliability_{split}.png",
                         title=f"{split} reliability (ensemble of {len(members)})",
                         calibrated=probs, names=("members uncalibrated, averaged",
                                                  "ensemble (calibrated members)"))
        atomic_write_text(tmp / "metrics.json", json.dumps(metrics, indent=2))
        atomic_write_text(tmp / ENSEMBLE_JSON, json.dumps(record, indent=2))
    metrics["evaluation_dir"] = str(out)
    if export is not None:
        export_ensemble(members, export, metrics=metrics, flag_spread=flag_spread,
                        flag_entropy=flag_entropy)
        metrics["bundle"] = str(export)
    return metrics


def _flags(sources: Sequence[str | Path], flag_spread: float | None,
           flag_entropy: float | None) -> tuple[float, float]:
    stored = {"flag_spread": FLAG_SPREAD, "flag_entropy": FLAG_ENTROPY}
    if len(sources) == 1 and is_ensemble_bundle(Path(sources[0])):
        stored = _read_manifest(Path(sources[0]))[0].get("review") or stored
    s = float(stored["flag_spread"] if flag_spread is None else flag_spread)
    h = float(stored["flag_entropy"] if flag_entropy is None else flag_entropy)
    check_flags(s, h)
    return s, h


def _member_figures(labels: np.ndarray, probs: np.ndarray, classes: list[str],
                    positive: str | None) -> dict[str, Any]:
    m = compute_metrics(labels, probs, classes, positive)
    return {k: m.get(k) for k in MEMBER_METRICS} | {"ece_calibrated": ece(labels, probs)}


def _review_summary(labels: np.ndarray, u: dict[str, np.ndarray], flag_spread: float,
                    flag_entropy: float) -> dict[str, Any]:
    """How many scans the flag picks, and how often the ensemble is right on each side."""
    correct = u["predicted"] == np.asarray(labels).astype(np.int64)
    flagged = u["review"]

    def acc(mask: np.ndarray) -> float | None:
        return float(correct[mask].mean()) if mask.any() else None

    return {"flag_spread": flag_spread, "flag_entropy": flag_entropy,
            "n_flagged": int(flagged.sum()), "n_scans": int(len(flagged)),
            "accuracy_flagged": acc(flagged), "accuracy_not_flagged": acc(~flagged),
            "mean_spread": float(u["spread"].mean()), "mean_entropy": float(u["entropy"].mean())}


def _write_predictions(path: Path, ds: Any, labels: np.ndarray, u: dict[str, np.ndarray],
                       member_probs: Sequence[np.ndarray], classes: list[str]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["scan_id", "patient_id", "label", "predicted", *[f"p_{c}" for c in classes],
                "spread", "entropy", "review",
                *[f"m{i:02d}_p_{c}" for i in range(len(member_probs)) for c in classes]])
    for i, (row, y) in enumerate(zip(ds.rows, labels, strict=True)):
        w.writerow([row.scan_id, row.patient_id, classes[int(y)], classes[int(u["predicted"][i])],
                    *[f"{v:.6f}" for v in u["probs"][i]], f"{u['spread'][i]:.6f}",
                    f"{u['entropy'][i]:.6f}", "yes" if u["review"][i] else "",
                    *[f"{v:.6f}" for p in member_probs for v in p[i]]])
    atomic_write_text(path, buf.getvalue())


# --------------------------------------------------------------------------- bundle


@dataclass
class Ensemble:
    """A loaded ensemble bundle: verified member bundles and what predict needs."""

    path: Path
    members: list[Bundle]
    classes: list[str]
    positive_class: str | None
    input_shape: tuple[int, int, int, int]
    preprocess: PreprocessConfig
    flag_spread: float
    flag_entropy: float
    metrics: dict[str, Any] | None
    manifest: dict[str, Any] = field(repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def model_name(self) -> str:
        return f"ensemble of {len(self.members)}: " + ", ".join(
            b.model_name if b.genotype is None else f"searched {b.genotype.space}"
            for b in self.members)

    @property
    def flags(self) -> tuple[float, float]:
        """The stored review thresholds (spread, entropy)."""
        return self.flag_spread, self.flag_entropy

    @property
    def intensity_reference(self) -> dict[str, Any] | None:
        """The first member's training intensity statistics (None if it has none)."""
        return self.members[0].intensity_reference


def is_ensemble_bundle(folder: Path) -> bool:
    """Whether FOLDER/bundle.json declares an ensemble (an unreadable one: False, and the
    loader that opens it says what is wrong)."""
    path = Path(folder) / "bundle.json"
    if not path.is_file():
        return False
    try:
        m = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(m, dict) and m.get("kind") == KIND


def export_ensemble(
    members: Sequence[Member],
    out: Path,
    *,
    metrics: dict[str, Any] | None = None,
    flag_spread: float = FLAG_SPREAD,
    flag_entropy: float = FLAG_ENTROPY,
) -> Path:
    """Write an ensemble bundle of ``members`` into ``out`` (absent or empty; appears whole
    or not at all). A run member is exported as a bundle (:func:`export_bundle`), a bundle
    member copied and verified again; ``metrics`` (from :func:`evaluate_ensemble`) go to
    ``metrics.json``."""
    from volnas.deploy.bundle import export_bundle

    out = _free_folder(Path(out), "--export")
    check_flags(flag_spread, flag_entropy)
    if len(members) < 2:
        raise EnsembleError(f"an ensemble needs at least two members, got {len(members)}")
    check_compatible(members)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, folder=True) as tmp:
        records = []
        for i, m in enumerate(members):
            rel = f"{MEMBERS}/{i:02d}"
            dst = tmp / rel
            if m.kind == "bundle":
                shutil.copytree(m.folder, dst)
            else:
                dst.parent.mkdir(parents=True, exist_ok=True)
                export_bundle(m.folder, dst)
            b = load_bundle(dst)
            records.append({"dir": rel, "source": str(m.source.resolve()),
                            "bundle_sha256": sha256_file(dst / "bundle.json"),
                            "weights_sha256": sha256_file(dst / WEIGHTS),
                            "model": b.model_name, "temperature": b.temperature, "tta": b.tta})
        files = {}
        if metrics is not None:
            kept = {k: v for k, v in metrics.items() if k not in ("evaluation_dir", "bundle")}
            atomic_write_text(tmp / "metrics.json", json.dumps(kept, indent=2))
            files["metrics.json"] = sha256_file(tmp / "metrics.json")
        first = members[0]
        pre = first.cfg.preprocess
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": KIND,
            "volnas_version": __version__,
            "torch_version": torch.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "members": records,
            "classes": first.classes,
            "num_classes": len(first.classes),
            "positive_class": first.positive_class,
            "input_shape": list(pre.input_shape),
            "preprocess": pre.model_dump(mode="json") | {"sampling": "symmetrical"},
            "probabilities": "mean of the members' calibrated probabilities",
            "review": {"flag_spread": flag_spread, "flag_entropy": flag_entropy},
            "metrics": _metric_summary(metrics),
            "files": files,
        }
        manifest["content_sha256"] = content_digest(manifest)
        atomic_write_text(tmp / "bundle.json", json.dumps(manifest, indent=2))
    return out


def _metric_summary(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    if not metrics:
        return None
    return {k: metrics.get(k) for k in ("split", "data", "n_scans", "accuracy", "f1", "auc",
                                        "positive_class", "ci")}


def _read_manifest(folder: Path) -> tuple[dict[str, Any], Path]:
    path = Path(folder) / "bundle.json"
    try:
        m = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise EnsembleError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(m, dict) or m.get("format") != FORMAT or m.get("kind") != KIND:
        raise EnsembleError(f"{path}: not an ensemble bundle manifest")
    return m, path


def load_ensemble(folder: Path) -> Ensemble:
    """Load and verify an ensemble bundle; :class:`EnsembleError` says what and where.

    Checks: the manifest's format, version and ``content_sha256``; every listed file's
    sha256; every member folder against the sha256 of its bundle.json and weights, then as a
    bundle (:func:`load_bundle`); the members' classes and preprocessing against each other
    and against the manifest; metrics.json against the manifest's metrics.
    """
    folder = Path(folder)
    m, path = _read_manifest(folder)
    version = m.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise EnsembleError(f"{path}: bundle format version {version!r} is not supported by "
                            f"volnas {__version__} (reads up to {FORMAT_VERSION})")
    if m.get("content_sha256") != content_digest(m):
        raise EnsembleError(f"{path}: content differs from its content_sha256; bundle.json "
                            "was edited after export")
    files = m.get("files") or {}
    for name, digest in files.items():
        p = folder / str(name)
        if Path(str(name)).name != name:
            raise EnsembleError(f"{path}: bad file name {name!r}")
        if not p.is_file():
            raise EnsembleError(f"{p}: listed in bundle.json but missing")
        if sha256_file(p) != digest:
            raise EnsembleError(f"{p}: sha256 differs from bundle.json; the file was modified "
                                "or replaced after export")
    records = m.get("members")
    if not isinstance(records, list) or len(records) < 2:
        raise EnsembleError(f"{path}: 'members' must list at least two member bundles")
    bundles = []
    for i, r in enumerate(records):
        rel = str((r or {}).get("dir", ""))
        if rel != f"{MEMBERS}/{i:02d}":
            raise EnsembleError(f"{path}: member {i} is in {rel!r}, expected {MEMBERS}/{i:02d}")
        mdir = folder / rel
        for name, key in (("bundle.json", "bundle_sha256"), (WEIGHTS, "weights_sha256")):
            p = mdir / name
            if not p.is_file():
                raise EnsembleError(f"{p}: member {i}'s {name} is missing")
            if sha256_file(p) != r.get(key):
                raise EnsembleError(f"{p}: sha256 differs from {path}; member {i} was modified "
                                    "or replaced after export")
        try:
            bundles.append(load_bundle(mdir))
        except BundleError as e:
            raise EnsembleError(f"member {i} ({mdir}): {e}") from e
    first = bundles[0]
    for i, b in enumerate(bundles):
        if b.classes != first.classes or b.positive_class != first.positive_class:
            raise EnsembleError(f"{b.path}: member {i}'s classes differ from member 0's")
        if b.preprocess != first.preprocess:
            raise EnsembleError(f"{b.path}: member {i}'s preprocessing differs from member 0's")
    expected = {"classes": first.classes, "num_classes": len(first.classes),
                "positive_class": first.positive_class, "input_shape": list(first.input_shape),
                "preprocess": first.preprocess.model_dump(mode="json")
                | {"sampling": "symmetrical"}}
    for key, want in expected.items():
        if json.dumps(m.get(key), sort_keys=True) != json.dumps(want, sort_keys=True):
            raise EnsembleError(f"{path}: {key} is {m.get(key)!r} but the members say {want!r}")
    metrics = None
    if "metrics.json" in files:
        metrics = json.loads((folder / "metrics.json").read_text())
        if json.dumps(_metric_summary(metrics), sort_keys=True) != json.dumps(
                m.get("metrics"), sort_keys=True):
            raise EnsembleError(f"{path}: metrics differ from metrics.json")
    review = m.get("review") or {}
    try:
        flag_spread = float(review["flag_spread"])
        flag_entropy = float(review["flag_entropy"])
        check_flags(flag_spread, flag_entropy)
    except (KeyError, TypeError, ValueError) as e:
        raise EnsembleError(f"{path}: invalid review thresholds ({e})") from e
    return Ensemble(folder, bundles, first.classes, first.positive_class, first.input_shape,
                    first.preprocess, flag_spread, flag_entropy, metrics, m)


SEARCH_EVALUATION = "evaluation"
SEARCH_BUNDLE = "bundle"


def search_ensemble(run_dir: Path, result: dict[str, Any],
                    console: Console | None = None) -> dict[str, Any] | None:
    """After ``volnas search --ensemble K``: the ensemble of the retrained members that
    ``result`` (the search's result) lists, evaluated on the test split into
    RUN_DIR/ensemble/evaluation and exported to RUN_DIR/ensemble/bundle. None when there
    are fewer than two members (and on ranks other than 0 under torchrun). Idempotent: a finished evaluation is read back (a resumed
    search does not evaluate again) and only a missing bundle is written."""
    from volnas.core.distributed import info as dist_info
    from volnas.search.evaluation import ENSEMBLE_DIR

    members = [Path(run_dir) / m for m in result.get("ensemble_members") or []]
    if len(members) < 2 or not dist_info().is_main:
        return None
    folder = Path(run_dir) / ENSEMBLE_DIR
    out, bundle = folder / SEARCH_EVALUATION, folder / SEARCH_BUNDLE
    if (out / "metrics.json").is_file():
        metrics = json.loads((out / "metrics.json").read_text())
        if not (bundle / "bundle.json").is_file():
            export_ensemble(load_members(members), bundle, metrics=metrics,
                            flag_spread=metrics["review"]["flag_spread"],
                            flag_entropy=metrics["review"]["flag_entropy"])
        return metrics | {"evaluation_dir": str(out), "bundle": str(bundle)}
    return evaluate_ensemble(members, out, export=bundle, console=console)


def load_any(folder: Path) -> Bundle | Ensemble:
    """A verified bundle or ensemble bundle, whichever FOLDER holds."""
    return load_ensemble(folder) if is_ensemble_bundle(folder) else load_bundle(folder)


__all__ = ["FLAG_ENTROPY", "FLAG_SPREAD", "Ensemble", "EnsembleError", "Member",
           "check_compatible", "evaluate_ensemble", "export_ensemble", "is_ensemble_bundle",
           "load_any", "load_ensemble", "load_member", "load_members", "mean_probabilities",
           "normalised_entropy", "review_flags", "search_ensemble", "spread", "uncertainty"]
