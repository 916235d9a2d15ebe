"""Bi-level single-path search on the shared Trainer.

The training split is divided by patient into a weight half and an architecture half.
Each step: an architecture step (Adam on the logits, loss on an architecture-half batch
through a freshly sampled path), then a weight step (the weight optimiser, loss on a
weight-half batch through another sampled path). The validation split only scores the
argmax architecture after each epoch; the test split is never read here.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from rich.console import Console
from rich.markup import escape
from torch import nn

from volnas.data.index import ManifestRow
from volnas.data.preprocess import PreprocessConfig
from volnas.models.profile import count_flops, count_params
from volnas.search.sampler import TemperatureSchedule
from volnas.search.supernet import SuperNet
from volnas.training.checkpoint import _flatten_optimizer, _unflatten_optimizer, atomic_write_text
from volnas.training.config import TrainConfig
from volnas.training.device import autocast, to_device
from volnas.training.distributed import average_gradients
from volnas.training.plots import plot_choice_probabilities
from volnas.training.trainer import Trainer


class SearchConfig(TrainConfig):
    """A search run: TrainConfig (used for the retrain) plus the search's own settings."""

    model: str = "supernet"
    space: str = "covidnet3d-s"
    search_epochs: int = Field(30, ge=1)
    search_batch_size: int | None = None  # default: batch_size
    search_slices: int | None = None  # reduced resolution for the search (default: retrain's)
    search_size: tuple[int, int] | None = None
    weight_optimizer: Literal["adam", "sgd"] = "adam"
    weight_lr: float = Field(3e-4, gt=0)  # MedPipe: Adam 3e-4 for the supernet weights
    arch_lr: float = Field(1e-3, gt=0)  # both papers: Adam 1e-3 for the logits
    arch_weight_decay: float = 1e-3
    warmup_epochs: int = Field(0, ge=0)  # weight-only epochs before logits start to move
    tau_start: float = Field(5.0, gt=0)
    tau_end: float = Field(0.5, gt=0)
    tau_schedule: Literal["exp", "linear", "constant"] = "exp"
    target_params: float | None = Field(None, gt=0)  # millions of parameters
    cost_weight: float = Field(0.0, ge=0)
    topk: int = Field(10, ge=1)
    probe_epochs: int = Field(3, ge=1)
    retrain_epochs: int = Field(200, ge=1)

    def search_preprocess(self) -> PreprocessConfig:
        return self.preprocess.model_copy(update={
            "slices": self.search_slices or self.preprocess.slices,
            "size": self.search_size or self.preprocess.size,
            "resize": None if self.search_size else self.preprocess.resize,
        })

    def search_train_config(self) -> TrainConfig:
        """The TrainConfig the search loop itself runs with (reduced input, search optimiser)."""
        base = {k: getattr(self, k) for k in TrainConfig.model_fields}
        base.update({
            "preprocess": self.search_preprocess(),
            "epochs": self.search_epochs,
            "batch_size": self.search_batch_size or self.batch_size,
            "optimizer": self.weight_optimizer,
            "lr": self.weight_lr,
            "augment": self.augment,
            "model": f"supernet:{self.space}",
        })
        return TrainConfig.model_validate(base)


def split_by_patient(rows: list[ManifestRow], seed: int) -> tuple[list[ManifestRow], list[ManifestRow]]:
    """Two halves of the training split with no patient in both, each class in both."""
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[str]] = {}
    patient_label: dict[str, str] = {}
    for r in rows:
        patient_label.setdefault(r.patient_id, r.label)
    for pid, label in sorted(patient_label.items()):
        by_label.setdefault(label, []).append(pid)
    weight_p, arch_p = set(), set()
    for label in sorted(by_label):
        pids = by_label[label]
        rng.shuffle(pids)
        half = (len(pids) + 1) // 2
        weight_p.update(pids[:half])
        arch_p.update(pids[half:])
    w = [r for r in rows if r.patient_id in weight_p]
    a = [r for r in rows if r.patient_id in arch_p]
    if not w or not a:
        raise ValueError(f"cannot split {len(patient_label)} training patients into two halves")
    return w, a


class PairedLoader:
    """Zip a weight loader with an architecture loader; the shorter one is cycled."""

    def __init__(self, weight_loader: Any, arch_loader: Any) -> None:
        self.weight_loader = weight_loader
        self.arch_loader = arch_loader
        self.dataset = weight_loader.dataset
        self.batch_sampler = weight_loader.batch_sampler

    def __len__(self) -> int:
        return max(len(self.weight_loader), len(self.arch_loader))

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        if hasattr(self.arch_loader.dataset, "set_epoch"):
            self.arch_loader.dataset.set_epoch(self.dataset.epoch)
        gen = getattr(self.arch_loader.batch_sampler, "generator", None)
        if gen is not None:
            gen.manual_seed(int(torch.randint(0, 2**31, (1,)).item()))
        w_it, a_it = iter(self.weight_loader), iter(self.arch_loader)
        for _ in range(len(self)):
            try:
                wb = next(w_it)
            except StopIteration:
                w_it = iter(self.weight_loader)
                wb = next(w_it)
            try:
                ab = next(a_it)
            except StopIteration:
                a_it = iter(self.arch_loader)
                ab = next(a_it)
            yield wb, ab


class SearchTrainer(Trainer):
    """Trainer whose step is the bi-level architecture + weight step on a SuperNet.

    Paths are drawn from a generator seeded identically on every rank, so under torchrun
    all ranks run the same path each step (a consistent DDP graph).
    """

    find_unused_parameters = True

    def __init__(self, model: SuperNet, cfg: TrainConfig, search: SearchConfig,
                 retrain_shape: tuple[int, ...], **kwargs: Any) -> None:
        self.search = search
        model.generator = torch.Generator().manual_seed(cfg.seed * 7919 + 17)
        super().__init__(model, cfg, **kwargs)
        self.supernet: SuperNet = model
        self.arch_optimizer = torch.optim.Adam(
            self.supernet.arch_parameters(), lr=search.arch_lr, betas=(0.5, 0.999),
            weight_decay=search.arch_weight_decay)
        self.schedule = TemperatureSchedule(search.tau_start, search.tau_end, search.tau_schedule)
        self.retrain_shape = retrain_shape
        self.steps_per_epoch = 1
        self.step_in_epoch = 0
        self.log: list[dict[str, Any]] = []
        self.probs_history: list[list[list[float]]] = []

    def weight_parameters(self) -> list[nn.Parameter]:
        return self.supernet_of().weight_parameters()

    def supernet_of(self) -> SuperNet:
        return self.net  # type: ignore[return-value]

    def cost_penalty(self) -> torch.Tensor | None:
        s = self.search
        if s.target_params is None and s.cost_weight == 0:
            return None
        expected = self.supernet.expected_params()
        if s.target_params is not None:
            w = s.cost_weight if s.cost_weight > 0 else 1.0
            return w * torch.log(expected / (s.target_params * 1e6)) ** 2
        return s.cost_weight * expected / 1e6

    def arch_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One Adam step on the logits; only their gradients are computed (autograd.grad)."""
        # The unwrapped net: DDP's reducer expects weight gradients, this step computes none.
        with autocast(self.device, self.amp):
            logits = self.net(x)
        loss = self.loss_fn(logits, y)
        penalty = self.cost_penalty()
        total = loss if penalty is None else loss + penalty
        params = self.supernet.arch_parameters()
        grads = torch.autograd.grad(total, params, allow_unused=True)
        self.arch_optimizer.zero_grad(set_to_none=True)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        average_gradients(params)  # every rank keeps identical logits
        self.arch_optimizer.step()
        return loss.item()

    def train_batch(self, batch: Any) -> dict[str, float]:
        (xw, yw), (xa, ya) = batch
        progress = ((self.epoch + self.step_in_epoch / max(self.steps_per_epoch, 1))
                    / max(self.cfg.epochs, 1))
        self.supernet.alpha.tau = self.schedule(progress)
        self.step_in_epoch += 1
        if self.epoch >= self.search.warmup_epochs:
            self.arch_step(self.augment(to_device(xa, self.device, self.channels_last)),
                           ya.to(self.device))
        out = self.train_step(to_device(xw, self.device, self.channels_last), yw.to(self.device))
        self.supernet.alpha.zero_grad(set_to_none=True)  # the weight step must not move logits
        return out

    def train_epoch(self, loader: Any, epoch: int, total: int | None = None) -> dict[str, float]:
        self.steps_per_epoch = total or 1
        self.step_in_epoch = 0
        return super().train_epoch(loader, epoch, total)

    def on_epoch_end(self, epoch: int, row: dict[str, Any]) -> None:
        """Record the argmax architecture, its validation score, entropies and cost."""
        geno = self.supernet.genotype(input_shape=self.retrain_shape)
        net = geno.build()
        entropies = self.supernet.alpha.entropy()
        probs = [p.tolist() for p in self.supernet.alpha.probs()]
        self.probs_history.append(probs)
        rec = {
            "epoch": epoch,
            "genotype": geno.to_string(),
            "val_accuracy": row["val_accuracy"],
            "val_f1": row["val_f1"],
            "val_auc": row["val_auc"],
            "val_loss": row["val_loss"],
            "tau": self.supernet.alpha.tau,
            "mean_entropy": float(np.mean(entropies)),
            "params": count_params(net),
            "flops": count_flops(net, self.retrain_shape),
            "expected_params": self.supernet.expected_params().item(),
            "seconds": row["seconds"],
        }
        rec["score"] = self._score({"loss": row["val_loss"], "accuracy": row["val_accuracy"],
                                    "f1": row["val_f1"], "auc": row["val_auc"]})
        self.log.append(rec | {"entropies": entropies})
        if not self.dist.is_main:
            return
        gdir = self.run_dir / "genotypes"
        gdir.mkdir(exist_ok=True)
        geno.extra = {"epoch": epoch, "val": {k: row[k] for k in ("val_accuracy", "val_f1", "val_auc")}}
        geno.save(gdir / f"epoch_{epoch:03d}.json")
        self._write_log()
        plot_choice_probabilities(
            self.probs_history, self.supernet.alpha.names,
            [layer.names for layer in self.supernet.choice_layers], self.run_dir / "search_probs.png")
        self.console.print(f"  argmax {escape(geno.to_string())}  ({rec['params'] / 1e6:.2f} M params, "
                           f"entropy {rec['mean_entropy']:.3f}, tau {rec['tau']:.2f})")

    def _write_log(self) -> None:
        buf = io.StringIO()
        names = self.supernet.alpha.names
        fields = [k for k in self.log[0] if k != "entropies"] + [f"H[{n}]" for n in names]
        w = csv.writer(buf)
        w.writerow(fields)
        for rec in self.log:
            w.writerow([_cell(rec[k]) for k in fields[: -len(names)]]
                       + [f"{h:.4f}" for h in rec["entropies"]])
        atomic_write_text(self.run_dir / "search_log.csv", buf.getvalue())

    def extra_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        tensors, meta = _flatten_optimizer(self.arch_optimizer)
        return ({"arch_optimizer": meta, "log": self.log, "probs_history": self.probs_history},
                {f"arch.{k}": v for k, v in tensors.items()})

    def load_extra_state(self, extra: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        if "arch_optimizer" in extra:
            arch_t = {k[5:]: v for k, v in tensors.items() if k.startswith("arch.")}
            self.arch_optimizer.load_state_dict(_unflatten_optimizer(arch_t, extra["arch_optimizer"]))
        self.log = extra.get("log", [])
        self.probs_history = extra.get("probs_history", [])


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return "" if v is None else str(v)


def read_search_log(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def make_console(console: Console | None) -> Console:
    return console or Console()
