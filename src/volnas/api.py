"""volnas from Python (a notebook, a script): the calls the command line is made of.

    import volnas.api as vn

    net = vn.create_model("resnet3d_18", num_classes=2)            # or "genotype:g.json"
    metrics = vn.train({"data": "m.csv", "model": "resnet3d_18", "epochs": 30,
                        "slices": 32, "size": (128, 128)}, "runs/r18")
    result = vn.search({"data": "m.csv", "space": "covidnet3d-s", "search_epochs": 30},
                       "runs/s")
    bundle = vn.export("runs/r18", "models/r18")
    rows = vn.predict(bundle, ["scan.nii.gz", "dicom_series/"])
    vn.explain("models/r18", ["scan.nii.gz"], "expl")
    metrics = vn.ensemble(["runs/a", "runs/b", "runs/c"], "ens", export="models/ens")

Settings are the command line's (``volnas train --help``), as a mapping with the config
field names (``epochs``, ``batch_size``, ``slices``, ``size``...; preprocessing keys may
be given flat), a :class:`TrainConfig` / :class:`SearchConfig`, or a YAML file's path.
Runs never overwrite a folder; ``resume=True`` continues one with its saved settings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from torch import nn

from volnas.core.markup import make_console
from volnas.deploy.bundle import Bundle, export_bundle, load_bundle
from volnas.deploy.ensemble import Ensemble, evaluate_ensemble, load_any, search_ensemble
from volnas.deploy.predict import predict_scans
from volnas.explain.api import explain_scans
from volnas.explain.methods import DEFAULT_METHOD
from volnas.models.genotype import Genotype
from volnas.models.registry import create_model as _create
from volnas.models.registry import list_models
from volnas.search.config import SearchConfig
from volnas.search.run import run_search
from volnas.training.config import TrainConfig, load_config, merge_settings
from volnas.training.evaluate import evaluate_run
from volnas.training.run import run_training
from volnas.training.rundir import RunDirError

__all__ = ["Bundle", "Ensemble", "PredictionError", "RunDirError", "SearchConfig", "TrainConfig",
           "create_model", "ensemble", "evaluate", "explain", "export", "list_models",
           "load_bundle", "predict", "search", "train"]

C = TypeVar("C", bound=TrainConfig)
Settings = Mapping[str, Any] | TrainConfig | str | Path


class PredictionError(ValueError):
    """Some scans could not be predicted; ``failures`` says which and why."""

    def __init__(self, failures: list[Any], rows: list[dict[str, Any]]) -> None:
        self.failures, self.rows = failures, rows
        listed = "; ".join(f"{f.path}: {f.reason}" for f in failures[:5])
        super().__init__(f"{len(failures)} scan(s) could not be predicted: {listed}")


def create_model(name: str | Path | Genotype, num_classes: int = 2, in_channels: int = 1) -> nn.Module:
    """A network by registry name (``volnas models``), ``genotype:FILE``, a genotype JSON
    path or a :class:`~volnas.models.genotype.Genotype`; freshly initialised."""
    if isinstance(name, Genotype):
        return name.build(in_channels, num_classes)
    if isinstance(name, Path) or (str(name).endswith(".json") and ":" not in str(name)):
        return Genotype.load(Path(name)).build(in_channels, num_classes)
    return _create(str(name), in_channels=in_channels, num_classes=num_classes)


def _config(settings: Settings, cls: type[C]) -> tuple[C, dict[str, Any]]:
    """The validated config and the settings as given (what a resume may check)."""
    if isinstance(settings, TrainConfig):
        return cls.model_validate(settings.model_dump()), settings.model_dump()
    if isinstance(settings, str | Path):
        return load_config(Path(settings), {}, cls), merge_settings(Path(settings), {})
    given = merge_settings(None, dict(settings))
    return load_config(None, dict(settings), cls), given


def train(settings: Settings, out: str | Path, *, resume: bool = False,
          quiet: bool = False) -> dict[str, Any]:
    """Train a model into ``out`` (validation every epoch, test once); the test metrics."""
    cfg, given = _config(settings, TrainConfig)
    return run_training(cfg, Path(out), resume=resume, given=given if resume else None,
                        console=make_console(quiet=quiet))


def search(settings: Settings, out: str | Path, *, resume: bool = False,
           quiet: bool = False) -> dict[str, Any]:
    """Search, probe the top-k, retrain the best, test once; what ``result.json`` holds.
    With ``ensemble`` K > 1 in the settings the K best probed architectures are retrained
    and ``["ensemble"]`` holds their ensemble's test metrics (``OUT/ensemble/``)."""
    cfg, given = _config(settings, SearchConfig)
    console = make_console(quiet=quiet)
    result = run_search(cfg, Path(out), resume=resume, given=given if resume else None,
                        console=console)
    ensemble_metrics = search_ensemble(Path(out), result, console=console)
    return result if ensemble_metrics is None else result | {"ensemble": ensemble_metrics}


def evaluate(run_dir: str | Path, data: str | Path | None = None, split: str = "test",
             out: str | Path | None = None, *, tta: str | None = None,
             quiet: bool = False) -> dict[str, Any]:
    """Metrics of a finished run on a split of any compatible data, in their own folder
    (``RUN/evaluations/...`` or ``out``); the run's own record is never changed. ``tta``
    (``none`` / ``flips``) overrides the test-time augmentation the run chose."""
    is_bundle = (Path(run_dir) / "bundle.json").is_file()
    if is_bundle:
        load_bundle(Path(run_dir))  # verified before it is opened
    return evaluate_run(Path(run_dir), None if data is None else str(data), split,
                        console=make_console(quiet=quiet),
                        out=None if out is None else Path(out), bundle_verified=is_bundle,
                        tta=tta)


def export(run_dir: str | Path, out: str | Path, *, onnx: bool = False) -> Bundle:
    """Export a finished run (or a search's retrained network) as a verified bundle."""
    return load_bundle(export_bundle(Path(run_dir), Path(out), onnx=onnx))


def ensemble(members: Sequence[str | Path], out: str | Path, *, data: str | Path | None = None,
             split: str = "test", export: str | Path | None = None,
             flag_spread: float | None = None, flag_entropy: float | None = None,
             device: str = "auto", quiet: bool = False) -> dict[str, Any]:
    """Evaluate the ensemble of several runs or bundles (the mean of their calibrated
    probabilities) on a split, into ``out`` (never overwritten); ``export``: also write an
    ensemble bundle that :func:`predict` and :func:`explain` accept. The metrics."""
    return evaluate_ensemble([Path(m) for m in members], Path(out),
                             data=None if data is None else str(data), split=split,
                             export=None if export is None else Path(export),
                             flag_spread=flag_spread, flag_entropy=flag_entropy, device=device,
                             console=make_console(quiet=quiet))


def predict(bundle: Bundle | Ensemble | str | Path, scans: Sequence[str | Path], *,
            batch_size: int = 4, device: str = "auto", tta: str | None = None,
            strict: bool = True, flag_spread: float | None = None,
            flag_entropy: float | None = None) -> list[dict[str, Any]]:
    """One dict per scan: ``predicted``, ``probability``, ``probabilities`` per class,
    ``warning`` (``tta``: the bundle's test-time augmentation unless given); with an
    ensemble bundle also ``spread``, ``entropy`` and ``review`` (thresholds: the bundle's
    unless given). A scan that cannot be read raises :class:`PredictionError` (with every
    failure listed) unless ``strict=False``, which returns the predicted ones."""
    b = bundle if isinstance(bundle, Bundle | Ensemble) else load_any(Path(bundle))
    rows, failures = predict_scans(b, [str(s) for s in scans], console=make_console(quiet=True),
                                   batch_size=batch_size, device=device, tta=tta,
                                   flag_spread=flag_spread, flag_entropy=flag_entropy)
    if failures and strict:
        raise PredictionError(failures, rows)
    return rows


def explain(run_or_bundle: str | Path, scans: Sequence[str | Path], out: str | Path, *,
            method: str = DEFAULT_METHOD, target_class: str | None = None,
            masks: str | Path | None = None, quiet: bool = False) -> list[dict[str, Any]]:
    """Heatmaps of ``scans`` (montage PNG, NIfTI on the scan's grid, JSON) under ``out``;
    ``method``: a name of :func:`volnas.explain.methods.list_methods`."""
    return explain_scans(Path(run_or_bundle), [str(s) for s in scans], Path(out), method=method,
                         target_class=target_class,
                         masks=None if masks is None else Path(masks),
                         console=make_console(quiet=quiet))
