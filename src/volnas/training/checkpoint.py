"""Checkpoints without pickle: tensors in safetensors, everything else in JSON, written atomically."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from volnas.faults import crash_point


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str] | None = None) -> str:
    """Save tensors atomically as safetensors; returns the file's sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        save_file(clean, tmp, metadata=meta)
        digest = sha256_file(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file; anything else (a pickle, a truncated file) is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    with open(path, "rb") as f:
        head = f.read(16)
    # safetensors: an 8-byte header length, then the JSON header. torch.save writes a zip
    # ("PK"), older pickles start with the PROTO opcode 0x80 and a protocol number.
    if head[8:9] != b"{" and (head[:2] == b"PK" or (head[:1] == b"\x80" and head[1:2] in
                                                     (b"\x02", b"\x03", b"\x04", b"\x05"))):
        raise ValueError(
            f"{path}: this is a pickle/zip (torch.save) file, not safetensors; "
            "volnas never unpickles files it is handed"
        )
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path}: not a valid safetensors file ({e})") from e


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


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
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


def _unflatten_optimizer(
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
    opt_tensors, opt_meta = _flatten_optimizer(optimizer)
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
    record = json.loads(record_path.read_text())
    weights = folder / record["file"]
    if sha256_file(weights) != record["sha256"]:
        raise ValueError(f"{weights}: checksum does not match {record_path}")
    tensors = load_tensors(weights)
    inner = getattr(model, "module", model)
    inner.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    optimizer.load_state_dict(_unflatten_optimizer(tensors, record["optimizer"]))
    if scheduler is not None and record.get("scheduler") is not None:
        scheduler.load_state_dict(record["scheduler"])
    extra_t = {k[6:]: v for k, v in tensors.items() if k.startswith("extra.")}
    return int(record["epoch"]), record["extra"], extra_t
