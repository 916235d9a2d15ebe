"""The one trainer: baseline training, search and retraining all run through it.

Subclasses change behaviour through the hook methods (``train_step``, ``augment``,
``on_epoch_end``, ``extra_state``/``load_extra_state``) rather than by copying the loop.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from volnas.core.distributed import all_gather_objects, barrier, broadcast_object
from volnas.core.distributed import info as dist_info
from volnas.core.faults import crash_point
from volnas.core.files import atomic_write_text, save_tensors
from volnas.core.markup import make_console
from volnas.data.augment import Policy
from volnas.training.budget import fill_plan
from volnas.training.checkpoint import load_training_state, model_state, save_training_state
from volnas.training.config import TrainConfig
from volnas.training.device import autocast, eval_mode, prepare_model, to_device
from volnas.training.metrics import compute_metrics, select_metric

HISTORY_FIELDS = ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_accuracy",
                  "val_f1", "val_auc", "seconds"]


def make_progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=True,
        disable=not console.is_terminal,  # a log gets the epoch lines, not bar redraws
    )


def load_policy(augment: str, run_dir: Path) -> Policy | None:
    """The fixed policy named by ``augment`` (a JSON file, looked up in ``run_dir`` first)."""
    if augment in ("auto", "none", "flip"):
        return None
    path = Path(augment)
    if not path.is_absolute() and (run_dir / path).exists():
        path = run_dir / path
    if not path.is_file():
        raise ValueError(f"--augment {augment!r}: expected none, flip or a policy JSON file")
    return Policy.load(path)


def build_optimizer(params: Iterable[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam (papers' default), AdamW or SGD with the configured lr and weight decay."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def balanced_class_weights(counts: Sequence[int], class_names: Sequence[str]) -> torch.Tensor:
    """``n / (k * n_c)`` per class (scikit-learn's "balanced"); a class with no training scan
    is an error rather than an infinite weight."""
    if len(counts) != len(class_names):
        raise ValueError(f"{len(counts)} class counts for {len(class_names)} classes")
    missing = [c for c, n in zip(class_names, counts, strict=True) if n == 0]
    if missing:
        raise ValueError(f"class_weight: balanced: no training scan of class {missing}")
    c = torch.tensor([float(n) for n in counts])
    return c.sum() / (len(counts) * c)


class Trainer:
    """Epoch loop with validation every epoch, best-checkpoint choice and atomic resume.

    Args:
        model: the network (moved to ``device`` here).
        cfg: the run configuration (optimiser, epochs, selection metric...).
        class_names: class names in label order.
        positive_class: the class binary metrics are computed for.
        device: where to train.
        run_dir: folder for history.csv, model.safetensors and checkpoint/.
        console: where progress and per-epoch lines go.
        class_counts: training scans per class (label order); needed by
            ``class_weight: balanced``.
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        *,
        class_names: list[str],
        positive_class: str | None,
        device: torch.device,
        run_dir: Path,
        console: Console | None = None,
        class_counts: Sequence[int] | None = None,
    ) -> None:
        self.cfg = cfg
        self.class_weight = balanced_class_weights(class_counts, class_names).to(device) if (
            cfg.class_weight == "balanced" and class_counts is not None) else None
        self.device = device
        self.channels_last = cfg.channels_last
        self.dist = dist_info()
        if cfg.sync_bn and self.dist.enabled:
            if device.type != "cuda":
                raise ValueError("--sync-bn needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel)")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        # self.net: the network itself; self.model: what the training step calls (DDP-wrapped
        # under torchrun, else the same object).
        self.net = prepare_model(model, device, self.channels_last)
        self.model = self.net
        if self.dist.enabled:
            self.model = DistributedDataParallel(
                self.net, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=self.find_unused_parameters
                or getattr(self.net, "find_unused_parameters", False))
        self.class_names = class_names
        self.positive_class = positive_class
        self.run_dir = Path(run_dir)
        quiet = console is None or not self.dist.is_main
        self.console = make_console(quiet=True) if quiet else console
        self.optimizer = build_optimizer(self.weight_parameters(), cfg)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=cfg.epochs, eta_min=cfg.min_lr
        )
        self.history: list[dict[str, Any]] = []
        self.best_score = -math.inf
        self.best_epoch = -1
        self.epoch = 0  # epochs finished
        self.stale = 0  # epochs since the best validation score
        self.amp = cfg.amp and device.type == "cuda"
        self.policy = load_policy(cfg.augment, self.run_dir)
        # a wall-clock time (time.time()): no epoch is started that would end after it,
        # judged by the mean epoch so far; at least one epoch always runs (--time-budget)
        self.deadline: float | None = None
        # with a deadline: after the first epoch, re-plan the epochs (at most this many, the
        # last one possibly partial) from its measured time so the training ends at the
        # deadline less ``post_passes`` validation passes (calibration and the test pass)
        self.fill_epochs: int | None = None
        self.post_passes = 0.0
        # seconds kept after training for calibration and the test pass (set by the plan, or
        # by the caller on resume); a filled run whose next epoch would end later than the
        # deadline less these runs the training batches that fit instead, then stops
        self.post_seconds: float | None = None
        # with ``tta: auto``: the mode, validation passes after training and record that a
        # measured validation pass of that many seconds allows (volnas.training.run.plan_tta)
        self.plan_tta: Callable[[float], tuple[str, float, dict[str, Any]]] | None = None
        # called with the configuration, "fill_plan" or "deadline_cut", and its record
        self.on_plan: Callable[[TrainConfig, str, dict[str, Any]], None] | None = None
        self._timing: list[tuple[float, int, float]] = []  # (train s, batches, rest s) per epoch

    find_unused_parameters = False  # the supernet runs one path per step: True there

    # ---- hooks -------------------------------------------------------------------------

    def weight_parameters(self) -> Iterable[nn.Parameter]:
        """Parameters the weight optimiser updates (search subclasses exclude logits)."""
        return self.net.parameters()

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """Training-time augmentation on the device batch (evaluation never calls this)."""
        if self.policy is not None:
            return self.policy.apply(x)
        if self.cfg.augment in ("flip", "auto"):
            # CovidNet3D: random horizontal or vertical flip, decided per scan.
            b = x.shape[0]
            coin = torch.rand(b, device=x.device)
            flip_h = (coin < 1 / 3).view(b, 1, 1, 1, 1)
            flip_v = ((coin >= 1 / 3) & (coin < 2 / 3)).view(b, 1, 1, 1, 1)
            x = torch.where(flip_h, x.flip(-1), x)
            x = torch.where(flip_v, x.flip(-2), x)
        return x

    def loss_fn(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss: cross-entropy, class-weighted with ``class_weight: balanced``."""
        if self.cfg.class_weight == "balanced" and self.class_weight is None:
            raise ValueError("class_weight: balanced needs the training split's class counts")
        return F.cross_entropy(logits.float(), y, weight=self.class_weight)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """One optimisation step on a batch; returns loss and number correct."""
        x = self.augment(x)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.amp):
            logits = self.model(x)
        loss = self.loss_fn(logits, y)
        loss.backward()
        self.optimizer.step()
        correct = (logits.argmax(1) == y).sum().item()
        return {"loss": loss.item() * len(y), "correct": correct, "n": len(y)}

    def train_batch(self, batch: Any) -> dict[str, float]:
        """Move a loader item to the device and take a step (search overrides this)."""
        x, y = batch
        return self.train_step(to_device(x, self.device, self.channels_last), y.to(self.device))

    def on_epoch_end(self, epoch: int, row: dict[str, Any]) -> None:
        """Called after validation of each epoch, before its checkpoint is written."""

    def extra_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """Subclass state to save with each checkpoint (JSON part, tensor part)."""
        return {}, {}

    def load_extra_state(self, extra: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """Restore what ``extra_state`` saved."""

    # ---- loop --------------------------------------------------------------------------

    def _seed_epoch(self, epoch: int) -> None:
        # Reseeding per epoch makes a resumed run draw the same numbers as an unbroken one.
        torch.manual_seed(self.cfg.seed * 100_003 + epoch)
        np.random.seed((self.cfg.seed * 100_003 + epoch) % 2**32)

    def train_epoch(self, loader: Iterable, epoch: int, total: int | None = None,
                    limit: int | None = None) -> dict[str, float]:
        """One pass over ``loader`` (its first ``limit`` batches when given)."""
        self.model.train()
        sums = {"loss": 0.0, "correct": 0.0, "n": 0.0}
        if limit is not None and total is not None:
            total = min(total, limit)
        with make_progress(self.console) as progress:
            task = progress.add_task(f"epoch {epoch}", total=total, info="")
            for i, batch in enumerate(loader):
                if limit is not None and i >= limit:
                    break
                out = self.train_batch(batch)
                crash_point("train.step")
                for k in sums:
                    sums[k] += out[k]
                progress.update(task, advance=1, info=f"loss {sums['loss'] / max(sums['n'], 1):.4f}")
        n = max(sums["n"], 1)
        return {"train_loss": sums["loss"] / n, "train_acc": sums["correct"] / n}

    def bn_modules(self) -> list[nn.modules.batchnorm._BatchNorm]:
        """The BatchNorm layers that validation runs."""
        return [m for m in self.net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def bn_inputs(self, loader: Iterable) -> Iterable[torch.Tensor]:
        """Clean training inputs for :meth:`recalibrate_bn` (one tensor per batch)."""
        return (batch[0] for batch in loader)

    @torch.no_grad()
    def recalibrate_bn(self, loader: Iterable) -> int:
        """Re-estimate every BatchNorm's running mean and variance as the plain average over
        ``cfg.bn_recalibration`` training batches (no augmentation, no gradient; averaged
        over ranks under torchrun). Returns the number of batches used (0: no BatchNorm)."""
        bns = [m for m in self.bn_modules() if m.track_running_stats]
        if not bns or self.cfg.bn_recalibration == 0:
            return 0
        momenta = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        was_training = self.net.training
        self.net.train()
        n = 0
        try:
            for x in self.bn_inputs(loader):
                if n >= self.cfg.bn_recalibration:
                    break
                with autocast(self.device, self.amp):
                    self.net(to_device(x, self.device, self.channels_last))
                n += 1
        finally:
            for m, mom in zip(bns, momenta, strict=True):
                m.momentum = mom
            self.net.train(was_training)
        if self.dist.enabled:
            import torch.distributed as tdist

            for m in bns:
                for buf in (m.running_mean, m.running_var):
                    tdist.all_reduce(buf)
                    buf /= self.dist.world_size
        return n

    @torch.no_grad()
    def predict(
        self, loader: Iterable,
        transform: Callable[[torch.Tensor], list[torch.Tensor]] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """Softmax probabilities, labels and mean loss over a loader (eval mode, no training
        augmentation). ``transform`` (test-time augmentation, :mod:`volnas.training.tta`)
        maps a device batch to several views; the probabilities are then the mean of the
        views' softmax and the loss the negative log of that mean."""
        probs, labels, loss_sum = [], [], 0.0
        with eval_mode(self.net):
            for x, y in loader:
                x = to_device(x, self.device, self.channels_last)
                y = y.to(self.device)
                xs = [x] if transform is None else [
                    to_device(v, self.device, self.channels_last) for v in transform(x)]
                outs = []
                for v in xs:
                    with autocast(self.device, self.amp):
                        outs.append(self.net(v).float())
                if len(outs) == 1:
                    loss_sum += F.cross_entropy(outs[0], y, reduction="sum").item()
                    p = torch.softmax(outs[0], 1)
                else:
                    p = torch.stack([torch.softmax(z, 1) for z in outs]).mean(0)
                    loss_sum += F.nll_loss(p.clamp_min(1e-12).log(), y, reduction="sum").item()
                probs.append(p.cpu().numpy())
                labels.append(y.cpu().numpy())
        k = len(self.class_names)
        p = np.concatenate(probs) if probs else np.zeros((0, k), np.float32)
        lab = np.concatenate(labels) if labels else np.zeros(0, np.int64)
        if self.dist.enabled:
            # Each rank scored its shard: gather, and put scans back in dataset order.
            idx = [i for batch in loader.batch_sampler for i in batch]
            parts = all_gather_objects((idx, p, lab, loss_sum))
            order = np.argsort(np.concatenate([np.asarray(q[0], dtype=np.int64) for q in parts]))
            p = np.concatenate([q[1] for q in parts])[order]
            lab = np.concatenate([q[2] for q in parts])[order]
            loss_sum = sum(q[3] for q in parts)
        if len(lab) == 0:
            raise ValueError("cannot evaluate on an empty split")
        return p, lab, loss_sum / len(lab)

    def evaluate(self, loader: Iterable) -> dict[str, Any]:
        probs, labels, loss = self.predict(loader)
        metrics = compute_metrics(labels, probs, self.class_names, self.positive_class)
        metrics["loss"] = loss
        return metrics

    def _score(self, metrics: dict[str, Any]) -> float:
        return select_metric(metrics, self.cfg.select_metric)

    def fit(self, train_loader: Any, val_loader: Any, resume: bool = False) -> list[dict[str, Any]]:
        """Train for ``cfg.epochs`` epochs (continuing a checkpoint when ``resume``)."""
        ckpt_dir = self.run_dir / "checkpoint"
        if resume and (ckpt_dir / "last.json").exists():
            self._resume(ckpt_dir)
            self.console.print(f"resumed after epoch {self.epoch} (best epoch {self.best_epoch})")
        total = len(train_loader) if hasattr(train_loader, "__len__") else None
        cut: int | None = None
        while self.epoch < self.cfg.epochs and cut is None:  # the plan may change the end
            epoch = self.epoch + 1
            cut = self._deadline_cut(total)
            if cut == 0 or (cut is None and self._out_of_time()):
                self.console.print(f"time budget: stopped after epoch {self.epoch} of "
                                   f"{self.cfg.epochs}")
                break
            t0 = time.perf_counter()
            self._seed_epoch(epoch)
            for ds in (getattr(train_loader, "dataset", None),):
                if hasattr(ds, "set_epoch"):
                    ds.set_epoch(epoch)
            sampler_gen = getattr(getattr(train_loader, "batch_sampler", None), "generator", None)
            if sampler_gen is not None:
                sampler_gen.manual_seed(self.cfg.seed * 100_003 + epoch)
            lr = self.optimizer.param_groups[0]["lr"]
            row: dict[str, Any] = {"epoch": epoch, "lr": lr}
            limit = self.cfg.last_epoch_batches if epoch == self.cfg.epochs else None
            limit = cut if cut is not None else limit
            row.update(self.train_epoch(train_loader, epoch, total, limit))
            t_train = time.perf_counter() - t0
            self.scheduler.step()
            self.recalibrate_bn(train_loader)
            t_val = time.perf_counter()
            val = self.evaluate(val_loader)
            t_val = time.perf_counter() - t_val
            row.update({"val_loss": val["loss"], "val_accuracy": val["accuracy"],
                        "val_f1": val["f1"], "val_auc": val["auc"]})
            row["seconds"] = time.perf_counter() - t0
            score = self._score(val)
            improved = score > self.best_score or self.best_epoch < 0
            main = self.dist.is_main
            if improved:
                self.best_score, self.best_epoch, self.stale = score, epoch, 0
                if main:
                    save_tensors(self.run_dir / "model.safetensors", model_state(self.net))
                    atomic_write_text(self.run_dir / "best_val_metrics.json",
                                      _json(val | {"epoch": epoch}))
            else:
                self.stale += 1
            self.history.append(row)
            self.epoch = epoch
            if main:
                self._write_history()
            self.console.print(_epoch_line(row, self.cfg.epochs, improved))
            if total:
                batches = total if limit is None else min(total, limit)
                self._timing.append((t_train, batches, row["seconds"] - t_train))
                if epoch == 1 and self.fill_epochs is not None and self.deadline is not None:
                    self._fill(t_val, total)
            self.on_epoch_end(epoch, row)
            extra, tensors = self.extra_state()
            if main:
                save_training_state(
                    ckpt_dir, epoch, self.net, self.optimizer, self.scheduler,
                    {"history": self.history, "best_score": self.best_score,
                     "best_epoch": self.best_epoch, "stale": self.stale, "sub": extra},
                    tensors,
                )
            barrier()  # no rank runs ahead of the checkpoint (resume sees a consistent state)
            if self.cfg.patience is not None and self.stale >= self.cfg.patience:
                self.console.print(f"early stop: no validation gain for {self.stale} epochs")
                break
        return self.history

    def _fill(self, val_seconds: float, batches: int) -> None:
        """Re-plan the epochs after the first from its measured time: as many as end by the
        deadline less the work after training (at most :attr:`fill_epochs`), the last one cut
        to the training batches that still fit. Epoch 1's learning rate is the same for any
        length of the cosine schedule, so the run equals one planned this way from the start.
        A first epoch cut by the budget (planned as the only one) is timed per batch: when it
        ran faster than its estimate, the batches that fit after it are trained too."""
        t_train, timed, rest = self._timing[-1]  # epoch 1: ``timed`` of ``batches`` batches
        t_train *= batches / timed  # a whole epoch's training
        tta: dict[str, Any] = {}
        if self.plan_tta is not None and self.cfg.tta == "auto":
            # every rank runs the same plan (each timed its own validation pass)
            mode, passes, tta = broadcast_object(self.plan_tta(val_seconds))
            if mode != self.cfg.tta:
                self.cfg = self.cfg.model_copy(update={"tta": mode})
                self.post_passes = passes
                self.console.print(f"time budget: {tta['why']}")
        post = self.post_passes * val_seconds
        free = self.deadline - time.time() - post  # type: ignore[operator]
        epochs, partial = fill_plan(free, t_train, rest, batches, self.fill_epochs)  # type: ignore[arg-type]
        if epochs == 1 and timed < batches:
            partial = timed  # the cut first epoch stays the last, as run
        epochs, partial = broadcast_object((epochs, partial))  # every rank runs the same plan
        assert epochs is not None
        if epochs != self.cfg.epochs:
            self._anneal_over(epochs)
        self.cfg = self.cfg.model_copy(update={"epochs": epochs, "last_epoch_batches": partial})
        record = {"after_epoch": 1, "epochs": epochs, "last_epoch_batches": partial,
                  "batches_per_epoch": batches, "epoch_seconds": round(t_train + rest, 2),
                  "after_training_seconds_estimate": round(post, 2),
                  **({"tta_plan": tta} if tta else {})}
        self.console.print(f"time budget: {epochs} epoch(s) fit, measured on epoch 1"
                           + (f", the last one {partial} of {batches} batches" if partial else ""))
        self.post_seconds = post
        if self.on_plan is not None:
            self.on_plan(self.cfg, "fill_plan", record)

    def _anneal_over(self, epochs: int) -> None:
        """Make the cosine schedule end after ``epochs`` epochs from where it is now."""
        sched = self.scheduler
        if not isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR):
            return
        sched.T_max = epochs
        for group, base in zip(self.optimizer.param_groups, sched.base_lrs, strict=True):
            group["lr"] = sched.eta_min + (base - sched.eta_min) * (
                1 + math.cos(math.pi * sched.last_epoch / epochs)) / 2
        sched._last_lr = [g["lr"] for g in self.optimizer.param_groups]  # noqa: SLF001

    def _pace(self) -> tuple[float, float]:
        """Seconds per training batch and per epoch's BatchNorm re-estimation and validation,
        over this process's timed epochs."""
        per_batch = sum(t for t, _, _ in self._timing) / sum(b for _, b, _ in self._timing)
        return per_batch, sum(r for _, _, r in self._timing) / len(self._timing)

    def _next_epoch_seconds(self) -> float:
        """The expected wall time of the next epoch: this process's timed epochs (a partial
        last epoch scaled by its batches), else the mean of the history's."""
        nxt = self.epoch + 1
        limit = self.cfg.last_epoch_batches if nxt == self.cfg.epochs else None
        if not self._timing:
            return epochs_mean_seconds(self.history)
        per_batch, rest = self._pace()
        batches = max(b for _, b, _ in self._timing)
        return per_batch * (batches if limit is None else min(limit, batches)) + rest

    def _deadline_cut(self, batches: int | None) -> int | None:
        """The training batches of the next epoch of a filled run (:attr:`fill_epochs`) as
        the deadline less :attr:`post_seconds` sets them: an epoch that would end later is
        cut to the batches that fit (0: none) and is the last; the planned last epoch gets
        the batches that fit, up to a whole epoch, more or fewer than planned (the epochs
        after the first may run faster or slower than it). None: as planned (also for a run
        that is not filled or has no epoch timed yet). Recorded as ``deadline_cut``; the
        schedule is not changed."""
        if (self.fill_epochs is None or self.deadline is None or not self._timing
                or not batches):
            return None
        end = self.deadline - (self.post_seconds or 0.0)
        now = time.time()
        per_batch, rest = self._pace()
        last = self.epoch + 1 == self.cfg.epochs
        planned = min((self.cfg.last_epoch_batches if last else None) or batches, batches)
        fit = min(max(int((end - now - rest) // per_batch), 0), batches)
        cut = None if fit == planned or (fit > planned and not last) else fit
        if self.dist.enabled:  # every rank runs the same batches
            cuts = [c for c in all_gather_objects(cut) if c is not None]
            cut = min(cuts) if cuts else None
        if cut:
            record = {"epoch": self.epoch + 1, "batches": cut, "planned": planned,
                      "planned_epochs": self.cfg.epochs}
            self.console.print(f"time budget: epoch {self.epoch + 1} trains {cut} of {batches} "
                               f"batches (planned {planned}) to end on time; the last epoch")
            if self.on_plan is not None:
                self.on_plan(self.cfg, "deadline_cut", record)
        return cut

    def _out_of_time(self) -> bool:
        """Would the next epoch end after :attr:`deadline`? (Never before one epoch ran.)"""
        if self.deadline is None or not self.history:
            return False
        out = time.time() + self._next_epoch_seconds() > self.deadline
        if self.dist.enabled:  # every rank stops at the same epoch
            out = any(all_gather_objects(out))
        return out

    def _resume(self, ckpt_dir: Path) -> None:
        epoch, extra, tensors = load_training_state(ckpt_dir, self.net, self.optimizer, self.scheduler)
        self.epoch = epoch
        self.history = extra["history"]
        self.best_score = float(extra["best_score"])
        self.best_epoch = int(extra["best_epoch"])
        self.stale = int(extra.get("stale", 0))
        # An extended run (more epochs on resume) anneals over the new length.
        self.scheduler.T_max = self.cfg.epochs
        self.load_extra_state(extra.get("sub", {}), tensors)

    def _write_history(self) -> None:
        fields = list(dict.fromkeys(HISTORY_FIELDS + [k for r in self.history for k in r]))
        lines: list[str] = []

        class _Buf:
            def write(self, s: str) -> None:
                lines.append(s)

        w = csv.DictWriter(_Buf(), fieldnames=fields)
        w.writeheader()
        w.writerows(self.history)
        atomic_write_text(self.run_dir / "history.csv", "".join(lines))


def epochs_mean_seconds(history: list[dict[str, Any]]) -> float:
    """Mean wall time of the epochs of a history (0 without one)."""
    times = [float(r["seconds"]) for r in history if r.get("seconds") not in (None, "")]
    return sum(times) / len(times) if times else 0.0


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _epoch_line(row: dict[str, Any], epochs: int, improved: bool) -> str:
    mark = " [green]*best[/]" if improved else ""
    return (
        f"epoch {row['epoch']:>3}/{epochs}  lr {row['lr']:.2e}  train loss {row['train_loss']:.4f}"
        f"  val loss {row['val_loss']:.4f}  acc {_fmt(row['val_accuracy'])}  f1 {_fmt(row['val_f1'])}"
        f"  auc {_fmt(row['val_auc'])}  {row['seconds']:.1f}s{mark}"
    )


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=lambda o: o.item() if hasattr(o, "item") else str(o))
