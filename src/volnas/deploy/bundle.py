"""Model bundles: a trained network with everything needed to use it, and nothing pickled.

A bundle is a folder written once by :func:`export_bundle` from a finished run::

    bundle.json          format version, architecture, declared input, classes,
                         preprocessing, augmentation, metrics, and the sha256 of every file
    model.safetensors    the weights of the run's best validation epoch
    genotype.json        the architecture, for searched networks
    augment_policy.json  the fixed augmentation policy the run trained with, if any
    metrics.json         the run's test metrics
    calibration.json     the test-time augmentation chosen and the temperature fitted on
                         the run's validation split (predict applies both; also recorded
                         in bundle.json's ``inference``)
    config.yaml, run.json  the run's resolved configuration and info (so that the folder
                         also opens as a run, e.g. ``volnas explain MODEL_DIR``)
    model.onnx           only with ``onnx=True`` and when the network exports cleanly

:func:`load_bundle` trusts nothing in the folder: every listed file must match its sha256,
the weights must be safetensors (a pickle is refused without being unpickled), they must
fit the declared architecture exactly, and a forward pass at the declared input shape
must give one column per class.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from volnas import __version__
from volnas.core.files import atomic_path, atomic_write_text, load_tensors, sha256_file
from volnas.data.preprocess import PreprocessConfig
from volnas.data.volume import DataError
from volnas.models.genotype import Genotype
from volnas.models.registry import create_model
from volnas.training.config import TrainConfig, dump_config, load_saved_config
from volnas.training.evaluate import CALIBRATION, read_operating_point, read_temperature, read_tta
from volnas.training.rundir import GENOTYPE_PREFIX, load_run

FORMAT = "volnas-bundle"
FORMAT_VERSION = 2  # 2: content_sha256 of bundle.json, intensity_reference
WEIGHTS = "model.safetensors"
ONNX_FILE = "model.onnx"
# Keys of ``Genotype.extra`` under which a searched augmentation policy may be stored.
POLICY_KEYS = ("augment_policy", "policy", "augmentation")
METRIC_KEYS = ("n_scans", "accuracy", "precision", "sensitivity", "specificity", "f1", "auc",
               "positive_class", "best_epoch", "train_seconds")


class BundleError(ValueError):
    """A bundle cannot be written or loaded; the message names the file and the problem."""


@dataclass
class Bundle:
    """A loaded bundle: the model in eval mode on the CPU and what it needs to predict."""

    path: Path
    model: nn.Module
    preprocess: PreprocessConfig
    classes: list[str]
    positive_class: str | None
    input_shape: tuple[int, int, int, int]
    model_name: str  # registry name, or "genotype:<genotype string>"
    genotype: Genotype | None
    metrics: dict[str, Any] | None
    manifest: dict[str, Any] = field(repr=False)  # bundle.json as read

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels_last(self) -> bool:
        return bool(self.manifest.get("inference", {}).get("channels_last", True))

    @property
    def amp(self) -> bool:
        return bool(self.manifest.get("inference", {}).get("amp", True))

    @property
    def temperature(self) -> float | None:
        """The calibration temperature predict applies; None in bundles exported without
        one (their probabilities are the model's own)."""
        t = self.manifest.get("inference", {}).get("temperature")
        return None if t is None else float(t)

    @property
    def tta(self) -> str:
        """The test-time augmentation predict applies (``none`` in bundles exported
        without a recorded choice)."""
        return str(self.manifest.get("inference", {}).get("tta", "none"))

    @property
    def operating_point(self) -> dict[str, Any] | None:
        """The run's threshold on calibrated P(positive), chosen on its validation split
        (``rule``, ``threshold``); None in bundles exported without one."""
        return self.manifest.get("inference", {}).get("operating_point")

    @property
    def intensity_reference(self) -> dict[str, Any] | None:
        """The training scans' raw intensity statistics; None in bundles exported before
        volnas recorded them (predict then cannot check scans)."""
        return self.manifest.get("intensity_reference")


# --------------------------------------------------------------------------- export


def resolve_run_dir(run_dir: Path) -> Path:
    """A training run folder, or a search folder (its ``final/`` retrain is exported)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file() and (run_dir / "final" / "config.yaml").is_file():
        return run_dir / "final"
    return run_dir


def export_bundle(run_dir: Path, out: Path, onnx: bool = False) -> Path:
    """Write the bundle of a finished run into ``out`` (which must not exist or be empty).

    Args:
        run_dir: a training run folder, or a search run folder (its ``final/`` is used).
        out: the bundle folder; never overwritten. Written under a temporary name and
            renamed at the end, so an interrupted export leaves no half bundle.
        onnx: also write ``model.onnx`` if the network exports cleanly (needs ``onnx``);
            a failed ONNX export is recorded in bundle.json and warned about, not raised.

    Returns:
        ``out``.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(f"{out}: already exists and is not empty; choose another --out")
    run_dir = resolve_run_dir(run_dir)
    model, cfg, info = load_run(run_dir)
    classes = list(info["classes"])
    pre = cfg.preprocess
    input_shape = tuple(pre.input_shape)

    genotype: Genotype | None = None
    if cfg.model.startswith(GENOTYPE_PREFIX):
        path = Path(cfg.model[len(GENOTYPE_PREFIX):])
        genotype = Genotype.load(path if path.is_absolute() else run_dir / path)
        genotype.num_classes = len(classes)
        genotype.input_shape = input_shape
    policy = _run_policy(cfg.augment, run_dir, genotype)

    metrics = run_test_metrics(run_dir, cfg.data)
    temperature = read_temperature(run_dir)
    tta = _recorded_tta(run_dir) if temperature is not None else None
    operating = read_operating_point(run_dir) if temperature is not None else None
    intensity = training_intensity(cfg.data, pre)

    out.parent.mkdir(parents=True, exist_ok=True)
    # the folder appears complete or not at all (rename replaces an empty ``out``)
    with atomic_path(out, folder=True) as tmp:
        shutil.copyfile(run_dir / WEIGHTS, tmp / WEIGHTS)
        updates: dict[str, Any] = {}
        if genotype is not None:
            genotype.save(tmp / "genotype.json")
            updates["model"] = GENOTYPE_PREFIX + "genotype.json"
        if policy is not None and cfg.augment not in ("none", "flip", "auto"):
            atomic_write_text(tmp / "augment_policy.json", json.dumps(policy, indent=2))
            updates["augment"] = "augment_policy.json"
        atomic_write_text(tmp / "config.yaml", dump_config(cfg.model_copy(update=updates)))
        atomic_write_text(tmp / "run.json", json.dumps(info, indent=2))
        if metrics is not None:
            atomic_write_text(tmp / "metrics.json", json.dumps(metrics, indent=2))
        if temperature is not None:
            shutil.copyfile(run_dir / CALIBRATION, tmp / CALIBRATION)
        onnx_record = export_onnx(model, input_shape, tmp / ONNX_FILE) if onnx else None

        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "volnas_version": __version__,
            "torch_version": torch.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "source_run": str(run_dir.resolve()),
            "model": {
                "name": "genotype" if genotype is not None else cfg.model,
                "registry_name": None if genotype is not None else cfg.model,
                "genotype": genotype.to_dict() if genotype is not None else None,
                "in_channels": input_shape[0],
                "params": info.get("params"),
                "model_size_mb": info.get("model_size_mb"),
                "flops_per_scan": info.get("flops_per_scan"),
            },
            "input_shape": list(input_shape),
            "num_classes": len(classes),
            "classes": classes,
            "positive_class": info.get("positive_class"),
            "preprocess": pre.model_dump(mode="json") | {"sampling": "symmetrical"},
            "augmentation": {"train": cfg.augment if policy is None else "policy",
                             "policy": policy},
            "inference": _inference(cfg, temperature, tta, operating),
            "training": {k: getattr(cfg, k) for k in ("data", "epochs", "batch_size", "lr",
                                                      "optimizer", "seed", "select_metric")},
            "metrics": {k: metrics.get(k) for k in METRIC_KEYS} if metrics else None,
            "weights": {"file": WEIGHTS, "format": "safetensors",
                        "sha256": sha256_file(tmp / WEIGHTS)},
            "onnx": onnx_record,
            "files": {p.name: sha256_file(p) for p in sorted(tmp.iterdir())
                      if p.name != WEIGHTS and p.is_file()},
            "intensity_reference": intensity,
        }
        manifest["content_sha256"] = content_digest(manifest)
        atomic_write_text(tmp / "bundle.json", json.dumps(manifest, indent=2))
    return out


def _inference(cfg: TrainConfig, temperature: float | None,
               tta: str | None = None, operating: dict[str, Any] | None = None) -> dict[str, Any]:
    """bundle.json's ``inference``; ``temperature`` only when the run was calibrated,
    ``tta`` and ``operating_point`` only when its calibration record names them."""
    out: dict[str, Any] = {"channels_last": cfg.channels_last, "amp": cfg.amp}
    if temperature is not None:
        out["temperature"] = temperature
    if tta is not None:
        out["tta"] = tta
    if operating is not None:
        out["operating_point"] = operating
    return out


def _recorded_tta(folder: Path) -> str | None:
    """The ``tta`` of FOLDER/calibration.json, validated; None when the record has none
    (runs calibrated before volnas chose a test-time augmentation)."""
    try:
        has = "tta" in json.loads((folder / CALIBRATION).read_text())
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as e:
        raise BundleError(f"{folder / CALIBRATION}: not a calibration record ({e})") from e
    return read_tta(folder) if has else None


def training_intensity(data: str, pre: PreprocessConfig) -> dict[str, Any] | None:
    """Raw intensity statistics of (up to ``MAX_SCANS`` of) the run's training scans.

    None, with a warning, when the training data cannot be read any more: the bundle is
    then written without them and ``predict`` says that it cannot check scans.
    """
    from volnas.data.dataset import open_source
    from volnas.data.readers import read_scan
    from volnas.deploy.intensity import MAX_SCANS, reference, scan_stats

    try:
        rows = open_source(data).split("train")
        pick = sorted({round(i) for i in np.linspace(0, len(rows) - 1, min(MAX_SCANS, len(rows)))})
        return reference([scan_stats(read_scan(rows[i].path, rows[i].format), pre)
                          for i in pick], pre)
    except (DataError, OSError, ValueError) as e:
        warnings.warn(f"the training data {data} could not be read ({e}); the bundle is written "
                      "without training intensity statistics, so predict cannot warn about "
                      "scans unlike the training scans", stacklevel=2)
        return None


def content_digest(manifest: dict[str, Any]) -> str:
    """sha256 of bundle.json's content (canonical JSON, without ``content_sha256``)."""
    body = {k: v for k, v in manifest.items() if k != "content_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def run_test_metrics(run_dir: Path, run_data: str) -> dict[str, Any] | None:
    """The run's own test metrics (RUN_DIR/metrics.json as training wrote it), or None.

    Older versions of ``volnas evaluate`` wrote their result over metrics.json; such a file
    (it names its ``data`` and has no ``best_epoch``) is used only when it is the run's own
    data and test split, otherwise it is left out with a warning.
    """
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from e
    if "data" in metrics and "best_epoch" not in metrics:
        same = str(metrics["data"]) == str(run_data)
        if not same or metrics.get("split") != "test":
            warnings.warn(
                f"{path}: holds an evaluation of {metrics['data']} ({metrics.get('split')} "
                f"split) that an older `volnas evaluate` wrote over the run's test metrics; "
                "the bundle is written without test metrics", stacklevel=2)
            return None
    return metrics


def _run_policy(augment: str, run_dir: Path, genotype: Genotype | None) -> list[Any] | None:
    """The run's fixed augmentation policy as JSON data (a policy file, or the genotype's)."""
    if augment not in ("none", "flip", "auto"):
        from volnas.training.trainer import load_policy

        policy = load_policy(augment, run_dir)
        if policy is not None:
            return policy.to_list()
    if augment == "auto" and genotype is not None:  # what the trainer applies with "auto"
        for key in POLICY_KEYS:
            if genotype.extra.get(key):
                return genotype.extra[key]
    return None


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: Path) -> dict[str, Any]:
    """Export ``model`` to ONNX with a dynamic batch axis; a dict saying what happened.

    The TorchScript exporter (needs only ``onnx``) is tried first, then the
    ``torch.export`` one (needs ``onnx`` and ``onnxscript``).
    """
    model = model.cpu().eval()
    x = torch.zeros(2, *input_shape)  # batch 2: a batch of 1 would be specialised as static
    errors = []
    for dynamo in (False, True):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                kwargs: dict[str, Any] = {"input_names": ["scan"], "output_names": ["logits"],
                                          "dynamo": dynamo}
                if dynamo:
                    kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
                else:
                    kwargs["dynamic_axes"] = {"scan": {0: "batch"}, "logits": {0: "batch"}}
                with torch.no_grad():
                    torch.onnx.export(model, (x,), str(path), **kwargs)
            if not path.is_file():
                raise RuntimeError("the exporter wrote no file")
            return {"file": path.name, "exporter": "dynamo" if dynamo else "torchscript",
                    "input": "scan", "output": "logits (apply softmax for probabilities)",
                    "sha256": sha256_file(path)}
        except Exception as e:  # noqa: BLE001 - any exporter failure means "no ONNX file"
            path.unlink(missing_ok=True)
            for extra in path.parent.glob(path.name + ".*"):  # external data, if any
                extra.unlink(missing_ok=True)
            errors.append(f"{'dynamo' if dynamo else 'torchscript'}: {type(e).__name__}: {e}")
    reason = "; ".join(errors)
    if "onnx" in reason.lower() and ("not installed" in reason or "No module named" in reason):
        reason = "the `onnx` package is not installed (pip install onnx onnxscript); " + reason
    warnings.warn(f"ONNX export failed, bundle written without {path.name}: {reason}",
                  stacklevel=2)
    return {"file": None, "error": reason}


# --------------------------------------------------------------------------- load


def load_bundle(model_dir: Path) -> Bundle:
    """Load and verify a bundle; :class:`BundleError` says what is wrong and where.

    Checks, in order: bundle.json format and version; the sha256 of every listed file
    (a replaced or modified file is refused); the weights are safetensors (a pickle is
    refused, never unpickled); the architecture from the registry name or the genotype in
    bundle.json; the weights load strictly; one forward pass at the declared input shape
    gives ``num_classes`` columns.
    """
    model_dir = Path(model_dir)
    manifest_path = model_dir / "bundle.json"
    if not manifest_path.is_file():
        what = "a run folder; export it first with `volnas export`" if (
            model_dir / "config.yaml").is_file() else "a volnas bundle"
        raise BundleError(f"{model_dir}: no bundle.json; not {what}")
    try:
        m = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{manifest_path}: not valid JSON ({e})") from e
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise BundleError(f"{manifest_path}: not a volnas bundle manifest (format != {FORMAT!r})")
    if m.get("kind", "model") != "model":
        raise BundleError(f"{manifest_path}: a bundle of kind {m.get('kind')!r} (several "
                          "networks); `volnas predict` and `volnas explain` open it, and "
                          "`volnas ensemble` re-evaluates it (volnas.deploy.ensemble."
                          "load_ensemble from Python)")
    version = m.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise BundleError(f"{manifest_path}: bundle format version {version!r} is not supported "
                          f"by volnas {__version__} (reads up to {FORMAT_VERSION})")
    try:
        classes = [str(c) for c in m["classes"]]
        num_classes = int(m["num_classes"])
        input_shape = tuple(int(v) for v in m["input_shape"])
        pre = PreprocessConfig.model_validate(
            {k: v for k, v in m["preprocess"].items() if k != "sampling"})
        weights = m["weights"]
        model_info = m["model"]
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{manifest_path}: incomplete or invalid bundle manifest ({e})") from e
    if num_classes != len(classes):
        raise BundleError(f"{manifest_path}: num_classes {num_classes} but {len(classes)} "
                          f"class names {classes}")
    if len(input_shape) != 4 or min(input_shape) < 1:
        raise BundleError(f"{manifest_path}: declared input {input_shape} is not (C, D, H, W)")
    if input_shape[1:] != pre.input_shape[1:]:
        raise BundleError(f"{manifest_path}: declared input {input_shape} disagrees with the "
                          f"preprocessing ({pre.slices} slices of {pre.size[0]}x{pre.size[1]})")

    _verify_files(model_dir, m)
    _verify_manifest(model_dir, m, version)
    weights_path = model_dir / str(weights.get("file", WEIGHTS))
    tensors = _verified_tensors(weights_path, str(weights.get("sha256", "")))

    genotype = None
    try:
        in_channels = int(model_info.get("in_channels") or 1)
        if model_info.get("genotype"):
            genotype = Genotype.from_dict(model_info["genotype"])
            model = genotype.build(in_channels, num_classes)
            name = GENOTYPE_PREFIX + genotype.to_string()
        else:
            name = str(model_info["registry_name"])
            model = create_model(name, in_channels=in_channels, num_classes=num_classes)
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{manifest_path}: cannot build the architecture ({e})") from e
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise BundleError(f"{weights_path}: weights do not fit the declared architecture "
                          f"{name}: {e}") from e
    model.eval()
    try:
        with torch.no_grad():
            y = model(torch.zeros(1, *input_shape))
    except RuntimeError as e:
        raise BundleError(f"{manifest_path}: declared input {input_shape} does not fit the "
                          f"weights: {e}") from e
    if tuple(y.shape) != (1, num_classes):
        raise BundleError(f"{manifest_path}: the model gives outputs of shape {tuple(y.shape)} "
                          f"for one scan; the bundle declares {num_classes} classes")
    return Bundle(
        path=model_dir, model=model, preprocess=pre, classes=classes,
        positive_class=m.get("positive_class"), input_shape=input_shape,  # type: ignore[arg-type]
        model_name=name, genotype=genotype, metrics=m.get("metrics"), manifest=m)


def _verify_files(model_dir: Path, m: dict[str, Any]) -> None:
    files = m.get("files") or {}
    if not isinstance(files, dict):
        raise BundleError(f"{model_dir / 'bundle.json'}: 'files' must map names to sha256")
    for name, digest in files.items():
        p = model_dir / name
        if Path(name).name != name:
            raise BundleError(f"{model_dir / 'bundle.json'}: bad file name {name!r}")
        if not p.is_file():
            raise BundleError(f"{p}: listed in bundle.json but missing")
        if sha256_file(p) != digest:
            raise BundleError(f"{p}: sha256 differs from bundle.json; the file was modified "
                              "or replaced after export")


def _verify_manifest(model_dir: Path, m: dict[str, Any], version: int) -> None:
    """Refuse a bundle.json whose content was edited after export.

    Every field that changes a prediction (classes, positive class, preprocessing, declared
    input, architecture, augmentation, inference settings, weights file, test metrics) must
    equal what the checksummed files (config.yaml, run.json, genotype.json,
    augment_policy.json, metrics.json) say; since format version 2, the whole content must
    also match its ``content_sha256`` (so the intensity statistics cannot change either).
    """

    manifest_path = model_dir / "bundle.json"
    files = m.get("files") or {}

    def listed(name: str) -> Path:
        if name not in files:
            raise BundleError(f"{manifest_path}: does not list {name} with its sha256; the "
                              "bundle is incomplete or bundle.json was edited")
        return model_dir / name

    try:
        cfg = load_saved_config(listed("config.yaml"))
        info = json.loads(listed("run.json").read_text())
        genotype = None
        if cfg.model.startswith(GENOTYPE_PREFIX):
            genotype = Genotype.load(listed(cfg.model[len(GENOTYPE_PREFIX):]))
        if cfg.augment not in ("none", "flip", "auto"):
            listed(cfg.augment)
        policy = _run_policy(cfg.augment, model_dir, genotype)
        metrics = (json.loads(listed("metrics.json").read_text()) if "metrics.json" in files
                   else None)
        temperature = read_temperature(model_dir) if CALIBRATION in files else None
        tta = _recorded_tta(model_dir) if temperature is not None else None
        operating = read_operating_point(model_dir) if temperature is not None else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError, KeyError,
            RuntimeError) as e:
        if isinstance(e, BundleError):
            raise
        raise BundleError(f"{model_dir}: cannot read the bundle's run files ({e})") from e
    expected: dict[str, tuple[Any, str]] = {
        "classes": (info.get("classes"), "run.json"),
        "num_classes": (len(info.get("classes") or []), "run.json"),
        "positive_class": (info.get("positive_class"), "run.json"),
        "input_shape": (list(cfg.preprocess.input_shape), "config.yaml"),
        "preprocess": (cfg.preprocess.model_dump(mode="json") | {"sampling": "symmetrical"},
                       "config.yaml"),
        "inference": (_inference(cfg, temperature, tta, operating),
                      "config.yaml and calibration.json" if temperature is not None
                      else "config.yaml (no calibration.json listed)"),
        "augmentation": ({"train": cfg.augment if policy is None else "policy",
                          "policy": policy}, "config.yaml and the augmentation policy"),
        "metrics": ({k: metrics.get(k) for k in METRIC_KEYS} if metrics else None,
                    "metrics.json"),
    }
    model = m.get("model") or {}
    got = {k: m.get(k) for k in expected} | {
        "model.genotype": model.get("genotype"), "model.registry_name": model.get("registry_name"),
        "weights.file": (m.get("weights") or {}).get("file")}
    if genotype is not None:
        expected["model.genotype"] = (genotype.to_dict(), "genotype.json")
        expected["model.registry_name"] = (None, "config.yaml")
    else:
        expected["model.genotype"] = (None, "config.yaml")
        expected["model.registry_name"] = (cfg.model, "config.yaml")
    expected["weights.file"] = (WEIGHTS, "the bundle layout")
    for key, (want, source) in expected.items():
        if _canonical(got[key]) != _canonical(want):
            raise BundleError(
                f"{manifest_path}: {key} is {_short(got[key])} but {source} says "
                f"{_short(want)}; bundle.json was edited after export")
    if version >= 2:
        recorded = m.get("content_sha256")
        if recorded != content_digest(m):
            what = ("has no content_sha256" if recorded is None
                    else "content differs from its content_sha256")
            raise BundleError(f"{manifest_path}: {what}; bundle.json was edited after export "
                              "(re-export the run instead of editing a bundle)")


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _verified_tensors(path: Path, expected: str) -> dict[str, torch.Tensor]:
    """Weights whose sha256 matches bundle.json and that are safetensors (never unpickled)."""
    if not path.is_file():
        raise BundleError(f"{path}: weights file missing")
    if sha256_file(path) != expected:
        try:
            load_tensors(path)  # only to say what the file is; refuses pickles unread
        except (ValueError, OSError) as e:
            raise BundleError(f"refused: {e} (its sha256 also differs from bundle.json)") from e
        raise BundleError(f"{path}: sha256 differs from bundle.json; the weights were modified "
                          "or replaced after export")
    try:
        return load_tensors(path)
    except (ValueError, OSError) as e:
        raise BundleError(f"refused: {e}") from e


def bundle_summary(bundle: Bundle) -> dict[str, Any]:
    """A few lines of what a bundle holds (for the CLI)."""
    m = bundle.manifest
    return {
        "model": bundle.model_name,
        "input": "x".join(map(str, bundle.input_shape)),
        "classes": bundle.classes,
        "positive_class": bundle.positive_class,
        "size_mb": m.get("model", {}).get("model_size_mb"),
        "test": {k: (bundle.metrics or {}).get(k) for k in ("accuracy", "f1", "auc")},
    }


__all__ = ["Bundle", "BundleError", "bundle_summary", "export_bundle", "export_onnx",
           "load_bundle", "load_run_or_bundle", "resolve_run_dir"]


def load_run_or_bundle(folder: Path) -> tuple[nn.Module, TrainConfig, dict[str, Any]]:
    """A run folder's or a verified bundle's model, config and run.json info (a bundle
    holds the same files as a run, and is refused if any was edited or swapped)."""
    folder = Path(folder)
    is_bundle = (folder / "bundle.json").is_file()
    if is_bundle:
        load_bundle(folder)
    return load_run(folder, bundle_verified=is_bundle)
