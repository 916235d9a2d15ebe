"""Checkpoints without pickle: tensors in safetensors, everything else in JSON, written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from volnas.core.faults import crash_point
from volnas.core.files import atomic_write_text, load_tensors, save_tensors, sha256_file


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict of the underlying model (unwrapping DDP), contiguous and on CPU."""
    inner = getattr(model, "module", model)
    return {k: v for k, v in inner.state_dict().items()}


def load_model_state(model: nn.Module, path: Path) -> None:
    """Load safetensors weights into ``model``; a shape/name mismatch names the file."""
    tensors = load_tensors(path)
    inner = getattr(model, "module", model)
    try:
        inner.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not match the model: {e}") from e


def flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"opt.{idx}.{name}"] = value
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def unflatten_optimizer(
    tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, extra in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(extra)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_training_state(
    folder: Path,
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    extra: dict[str, Any],
    extra_tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Save everything needed to resume after ``epoch``; ``last.json`` is written last."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v for k, v in model_state(model).items()}
    opt_tensors, opt_meta = flatten_optimizer(optimizer)
    tensors.update(opt_tensors)
    for k, v in (extra_tensors or {}).items():
        tensors[f"extra.{k}"] = v
    weights = folder / f"epoch_{epoch:04d}.safetensors"
    digest = save_tensors(weights, tensors)
    crash_point("checkpoint.record")
    record = {
        "epoch": epoch,
        "file": weights.name,
        "sha256": digest,
        "optimizer": opt_meta,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "extra": extra,
    }
    atomic_write_text(folder / "last.json", json.dumps(record, indent=1, default=float))
    for old in folder.glob("epoch_*.safetensors"):
        if old.name != weights.name:
            old.unlink(missing_ok=True)
    return weights


def load_training_state(
    folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> tuple[int, dict[str, Any], dict[str, torch.Tensor]]:
    """Restore from ``folder/last.json``; returns (epoch, extra, extra_tensors)."""
    record_path = folder / "last.json"
    if not record_path.exists():
        raise FileNotFoundError(f"{record_path}: no checkpoint to resume from")
    record = read_checkpoint_record(folder)
    weights = folder / record["file"]
    if not weights.is_file():
        raise ValueError(f"{weights}: weights file named by {record_path} is missing")
    if sha256_file(weights) != record["sha256"]:
        raise ValueError(f"{weights}: checksum does not match {record_path}")
    tensors = load_tensors(weights)
    inner = getattr(model, "module", model)
    inner.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    optimizer.load_state_dict(unflatten_optimizer(tensors, record["optimizer"]))
    if scheduler is not None and record.get("scheduler") is not None:
        scheduler.load_state_dict(record["scheduler"])
    extra_t = {k[6:]: v for k, v in tensors.items() if k.startswith("extra.")}
    return int(record["epoch"]), record["extra"], extra_t


_RECORD_KEYS = {"epoch": int, "file": str, "sha256": str, "optimizer": dict, "extra": dict}


def read_checkpoint_record(folder: Path) -> dict[str, Any]:
    """``folder/last.json``, checked: a truncated or edited record is a clear error naming it."""
    path = Path(folder) / "last.json"
    try:
        record = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: checkpoint record is damaged (not valid JSON: {e}); "
                         "delete the checkpoint folder to restart the run from scratch") from e
    wrong = [k for k, t in _RECORD_KEYS.items()
             if not isinstance(record, dict) or not isinstance(record.get(k), t)]
    if wrong:
        raise ValueError(f"{path}: checkpoint record is damaged (missing or invalid: "
                         f"{', '.join(wrong)})")
    return record


def checkpoint_epoch(folder: Path) -> int:
    """The last epoch whose full state ``folder`` holds (0 without a checkpoint)."""
    if not (Path(folder) / "last.json").exists():
        return 0
    return int(read_checkpoint_record(folder)["epoch"])
