"""The run folder: what a run writes where, and what a run is built from.

RUN_DIR layout::

    config.yaml            resolved configuration (defaults <- YAML <- flags)
    run.json               classes, positive class, split sizes, seed, versions, timings
    history.csv            one row per epoch
    model.safetensors      weights of the best validation epoch
    best_val_metrics.json  validation metrics of that epoch
    checkpoint/            last epoch's full state (resume)
    .volnas.lock           held by the process writing the run (a second one is refused)
    calibration.json       temperature fitted on the validation split with the best
                           checkpoint, validation ECE and NLL before/after
    metrics.json           test metrics of the best checkpoint (written once, at the end),
                           each with its 95 % bootstrap interval over patients (``ci``),
                           and raw and calibrated ECE/Brier (``calibration``)
    predictions_test.csv   per-scan probabilities on the test split (calibrated ``p_*``,
                           raw ``p_raw_*``)
    *.png                  curves, confusion matrix, ROC, reliability diagram
    genotype.json          a searched network's architecture (``model: genotype:genotype.json``)
    augment_policy.json    a fixed augmentation policy, copied in (``augment: augment_policy.json``)
    evaluations/NAME-NNN/  one folder per later ``volnas evaluate`` (never over the above)

A folder is never overwritten: a new run needs an absent or empty folder, ``--resume``
needs one with ``config.yaml``.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from volnas.core.distributed import broadcast_object
from volnas.core.distributed import info as dist_info
from volnas.core.files import LOCK_NAME, FolderInUse, run_dir_lock
from volnas.data.augment import Policy
from volnas.data.cache import StackCache
from volnas.data.dataset import DataSource, ScanDataset
from volnas.models.genotype import Genotype
from volnas.models.profile import count_flops, count_params, size_mb
from volnas.models.registry import check_model_name, create_model
from volnas.training.checkpoint import checkpoint_epoch, load_model_state
from volnas.training.config import TrainConfig, load_saved_config, resume_config


class RunDirError(RuntimeError):
    """The run folder cannot be used as asked (exists without --resume, or is not a run)."""


GENOTYPE_PREFIX = "genotype:"


def pin_genotype(cfg: TrainConfig, run_dir: Path) -> TrainConfig:
    """Copy a ``genotype:FILE`` model into the run folder so the run stands on its own."""
    if not cfg.model.startswith(GENOTYPE_PREFIX):
        return cfg
    src = Path(cfg.model[len(GENOTYPE_PREFIX):])
    local = run_dir / "genotype.json"
    if not src.is_absolute() and not src.exists() and (run_dir / src).exists():
        src = run_dir / src
    if src.resolve() != local.resolve():
        Genotype.load(src).save(local)
    return cfg.model_copy(update={"model": GENOTYPE_PREFIX + "genotype.json"})


def pin_augment(cfg: TrainConfig, run_dir: Path) -> TrainConfig:
    """Copy the training policy into the run folder: an --augment file, or with ``auto`` the
    policy a searched genotype carries. The run then names ``augment_policy.json``."""
    local = run_dir / "augment_policy.json"
    if cfg.augment == "auto" and cfg.model.startswith(GENOTYPE_PREFIX):
        geno = Genotype.load(run_dir / cfg.model[len(GENOTYPE_PREFIX):])
        policy = geno.extra.get("augment_policy")
        if policy is None:
            return cfg
        Policy.from_json(policy, source=cfg.model).save(local)
    elif cfg.augment not in ("auto", "none", "flip"):
        src = Path(cfg.augment)
        if not src.is_file() and (run_dir / src).is_file():
            src = run_dir / src
        if src.resolve() != local.resolve():
            Policy.load(src).save(local)
    else:
        return cfg
    return cfg.model_copy(update={"augment": local.name})


def build_model(name: str, num_classes: int, run_dir: Path | None = None) -> torch.nn.Module:
    """A registry model; ``genotype:FILE`` paths are looked up in ``run_dir`` first."""
    if name.startswith(GENOTYPE_PREFIX) and run_dir is not None:
        path = Path(name[len(GENOTYPE_PREFIX):])
        if not path.is_absolute() and (Path(run_dir) / path).exists():
            return Genotype.load(Path(run_dir) / path).build(1, num_classes)
    return create_model(name, in_channels=1, num_classes=num_classes)


def prepare_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse to overwrite an earlier run; ``resume`` requires one (rank 0 decides)."""
    error = None
    if dist_info().is_main:
        try:
            _prepare_run_dir(run_dir, resume)
        except RunDirError as e:
            error = str(e)
    error = broadcast_object(error)
    if error:
        raise RunDirError(error)


@contextmanager
def run_dir_held(run_dir: Path) -> Iterator[None]:
    """Rank 0 holds ``run_dir``'s lock (:func:`volnas.core.files.run_dir_lock`) meanwhile; a
    folder another process is writing raises :class:`RunDirError`."""
    try:
        with run_dir_lock(run_dir, enabled=dist_info().is_main):
            yield
    except FolderInUse as e:
        raise RunDirError(str(e)) from None


def _prepare_run_dir(run_dir: Path, resume: bool) -> None:
    if resume:
        if not (run_dir / "config.yaml").exists():
            raise RunDirError(f"{run_dir}: nothing to resume (no config.yaml)")
        return
    if run_dir.exists() and any(p.name != LOCK_NAME for p in run_dir.iterdir()):
        raise RunDirError(
            f"{run_dir}: already holds a run; choose another --out or pass --resume"
        )
    run_dir.mkdir(parents=True, exist_ok=True)


def build_datasets(
    cfg: TrainConfig, source: DataSource, splits: tuple[str, ...]
) -> dict[str, ScanDataset]:
    cache = StackCache(cfg.preprocess, Path(cfg.cache_dir) if cfg.cache_dir else None)
    return {
        s: ScanDataset(source.split(s), source.class_names, cfg.preprocess,
                       train=(s == "train"), cache=cache, seed=cfg.seed)
        for s in splits
    }


def positive_of(cfg: TrainConfig, source: DataSource) -> str | None:
    pos = cfg.positive_class or source.positive_class
    if pos is not None and pos not in source.class_names:
        raise ValueError(f"positive class {pos!r} is not one of {source.class_names}")
    return pos


def model_profile(model: torch.nn.Module, cfg: TrainConfig) -> dict[str, Any]:
    return {
        "params": count_params(model),
        "model_size_mb": size_mb(model),
        "flops_per_scan": count_flops(model, cfg.preprocess.input_shape),
    }


def epochs_seconds(history: list[dict[str, Any]]) -> float:
    """Sum of the epochs' wall times (training, BN recalibration, validation) in a history."""
    return float(sum(float(r["seconds"]) for r in history if r.get("seconds") not in (None, "")))


def history_seconds(run_dir: Path) -> float | None:
    """``epochs_seconds`` of RUN_DIR/history.csv, summed over resumes; None without one."""
    path = Path(run_dir) / "history.csv"
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        return epochs_seconds(list(csv.DictReader(f)))


def check_model(name: str) -> None:
    """Refuse an unknown model name, or a ``genotype:FILE`` that is missing or does not
    parse, before any data is loaded or folder made; the error lists the valid names."""
    if name.startswith(GENOTYPE_PREFIX):
        Genotype.load(Path(name[len(GENOTYPE_PREFIX):]))  # its errors name the file
        return
    check_model_name(name)


def check_augment(augment: str) -> None:
    """Refuse an ``--augment`` that is neither a mode nor a readable policy file."""
    if augment in ("auto", "none", "flip"):
        return
    path = Path(augment)
    if not path.is_file():
        raise ValueError(f"{path}: augmentation policy file not found "
                         "(--augment takes auto, none, flip or a policy JSON file)")
    Policy.load(path)


def check_start(cfg: TrainConfig, *, model_given: bool = False) -> None:
    """Everything about a new run that can be checked before its folder is made."""
    if not cfg.data:
        raise ValueError("no data: pass --data (or set `data:` in --config)")
    if not model_given:
        check_model(cfg.model)
    check_augment(cfg.augment)


def resumed_config(run_dir: Path, given: dict[str, Any] | None) -> TrainConfig:
    """The saved configuration of ``run_dir``, with what ``given`` may change at resume
    (see :func:`volnas.training.config.resume_config`); writes nothing."""
    path = Path(run_dir) / "config.yaml"
    saved = load_saved_config(path)
    finished = checkpoint_epoch(Path(run_dir) / "checkpoint")
    return resume_config(saved, given or {}, path, finished_epochs=finished)


def remove_failed_start(run_dir: Path, existed: bool) -> None:
    """Delete what a new run made before it failed: the folder if this start created it,
    else its contents (a new run starts only in an empty folder, so all of it is this run's)."""
    if not existed:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    for child in run_dir.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def load_run(run_dir: Path, *, bundle_verified: bool = False
             ) -> tuple[torch.nn.Module, TrainConfig, dict[str, Any]]:
    """A finished run's best model (eval mode, CPU), its config and run.json info.

    An exported bundle holds the same files, but its bundle.json must be checked first
    (:func:`volnas.deploy.bundle.load_run_or_bundle` does, then passes ``bundle_verified``);
    an unchecked bundle is refused here rather than trusted.
    """
    run_dir = Path(run_dir)
    if (run_dir / "bundle.json").is_file() and not bundle_verified:
        raise RunDirError(f"{run_dir}: an exported bundle; it is opened only after its "
                          "bundle.json and checksums are verified (volnas.deploy.bundle."
                          "load_run_or_bundle; predict, explain and evaluate do this)")
    for name in ("config.yaml", "run.json", "model.safetensors"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir}: not a finished run folder (no {name})")
    cfg = load_saved_config(run_dir / "config.yaml")
    info = json.loads((run_dir / "run.json").read_text())
    model = build_model(cfg.model, len(info["classes"]), run_dir)
    load_model_state(model, run_dir / "model.safetensors")
    return model.eval(), cfg, info
