"""Bi-level single-path search on the shared Trainer.

The training split is divided by patient into a weight half and an architecture half,
recorded in the search folder (``halves.json``) so that a resumed search keeps them.
Each step: an architecture step (Adam on the logits, loss on an architecture-half batch
through a freshly sampled path), then a weight step (the weight optimiser, loss on a
weight-half batch through another sampled path). The validation split only scores the
argmax architecture after each epoch; the test split is never read here.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.markup import escape
from torch import nn

from volnas.core.distributed import average_gradients
from volnas.core.faults import crash_point
from volnas.core.files import atomic_write_text
from volnas.data.manifest import ManifestRow
from volnas.data.splits import split_patients
from volnas.models.profile import count_flops, count_params
from volnas.models.spaces import REFERENCE_STRIDES
from volnas.search.augment_search import AugmentSearch
from volnas.search.config import SearchConfig
from volnas.search.sampler import TemperatureSchedule
from volnas.search.supernet import SuperNet
from volnas.training.checkpoint import flatten_optimizer, unflatten_optimizer
from volnas.training.config import TrainConfig
from volnas.training.device import autocast, to_device
from volnas.training.plots import plot_choice_probabilities
from volnas.training.trainer import Trainer

# The random streams of a search epoch, each seeded from (seed, epoch, stream).
PATH_STREAM, AUGMENT_STREAM, ARCH_BATCH_STREAM = 1, 2, 3


def epoch_seed(seed: int, epoch: int, stream: int) -> int:
    """The seed of one random stream in one epoch: the same on every rank and in a resumed
    run, so no generator state needs saving."""
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0])


def fixed_path(supernet: SuperNet, search: SearchConfig) -> list[int]:
    """The network held fixed while only augmentation is searched: --fixed-genotype, or
    k3e3 everywhere with MedPipe's Clean-CC-CCII strides [1, 2, 2, 2, 2, 2, 1]."""
    from volnas.models.genotype import Genotype

    if search.fixed_genotype:
        ops = Genotype.load(search.fixed_genotype).ops
    else:
        strides = iter(REFERENCE_STRIDES)
        ops = [("k3e3" if s.kind == "normal" else f"conv_s{next(strides)}")
               if s.searchable else s.candidates[0] for s in supernet.specs]
        if supernet.space != "medpipe":
            ops = ["k3e3" if s.kind == "normal" else s.candidates[0] for s in supernet.specs]
    return [s.candidates.index(op) for s, op in zip(supernet.specs, ops, strict=True)
            if s.searchable]


HALVES_FILE = "halves.json"  # in the search folder: the patient ids of each half
HALF_NAMES = ("weight", "architecture")


def split_by_patient(rows: list[ManifestRow], seed: int) -> tuple[list[ManifestRow], list[ManifestRow]]:
    """Weight and architecture halves of the training split: the one patient splitter
    (:func:`volnas.data.splits.split_patients`) with fractions 0.5 / 0.5, so no patient is
    in both and each class with two or more patients is in both."""
    try:
        where = split_patients([r.patient_id for r in rows], [r.label for r in rows],
                               (0.5, 0.5), seed, HALF_NAMES)
    except ValueError as e:
        raise ValueError(f"cannot split the training patients into two halves: {e}") from e
    return ([r for r in rows if where[r.patient_id] == 0],
            [r for r in rows if where[r.patient_id] == 1])


def _split_by_patient_before_halves_file(
    rows: list[ManifestRow], seed: int
) -> tuple[list[ManifestRow], list[ManifestRow]]:
    """The halves of searches started before the halves were recorded in HALVES_FILE.

    Kept only so that such a search resumes on the halves it started with; new searches use
    :func:`split_by_patient`.
    """
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


def search_halves(
    search_dir: Path, rows: list[ManifestRow], seed: int, *, write: bool = True
) -> tuple[list[ManifestRow], list[ManifestRow]]:
    """The weight and architecture halves of the search in ``search_dir``.

    A search keeps the halves it started with: they are read from ``search_dir/halves.json``
    when it exists. Otherwise a search that has already trained (a checkpoint or done.json,
    from a version that did not record the halves) gets the halves of that version, and a
    new one gets :func:`split_by_patient`'s; either is then recorded (when ``write``).
    """
    path = Path(search_dir) / HALVES_FILE
    if path.is_file():
        return _read_halves(path, rows)
    started = (path.parent / "checkpoint" / "last.json").exists() or (
        path.parent / "done.json").exists()
    halves = (_split_by_patient_before_halves_file if started else split_by_patient)(rows, seed)
    if write:
        record = {name: sorted({r.patient_id for r in half})
                  for name, half in zip(HALF_NAMES, halves, strict=True)}
        atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return halves


def _read_halves(path: Path, rows: list[ManifestRow]) -> tuple[list[ManifestRow], list[ManifestRow]]:
    """The halves recorded in ``path``; they must hold exactly the training split's patients."""
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable ({type(e).__name__}: {e})") from e
    if not isinstance(record, dict) or not all(
        isinstance(record.get(n), list) and all(isinstance(p, str) for p in record[n])
        for n in HALF_NAMES
    ):
        raise ValueError(f"{path}: expected an object with lists of patient ids under "
                         f"{list(HALF_NAMES)}")
    weight, arch = set(record[HALF_NAMES[0]]), set(record[HALF_NAMES[1]])
    patients = {r.patient_id for r in rows}
    problems = []
    if weight & arch:
        problems.append(f"patients in both halves: {sorted(weight & arch)[:5]}")
    if patients - weight - arch:
        problems.append(f"training patients in neither half: {sorted(patients - weight - arch)[:5]}")
    if (weight | arch) - patients:
        problems.append(f"patients not in the training split: {sorted((weight | arch) - patients)[:5]}")
    if problems:
        raise ValueError(f"{path}: does not match the training split ({'; '.join(problems)}); "
                         "the data changed since the search started")
    return ([r for r in rows if r.patient_id in weight], [r for r in rows if r.patient_id in arch])


class PairedLoader:
    """Zip a weight loader with an architecture loader; the shorter one is cycled.

    The weight loader is seeded per epoch by the trainer; the architecture loader's order
    is seeded here from ``seed`` and the weight dataset's epoch.
    """

    def __init__(self, weight_loader: Any, arch_loader: Any, seed: int = 0) -> None:
        self.weight_loader = weight_loader
        self.arch_loader = arch_loader
        self.seed = seed
        self.dataset = weight_loader.dataset
        self.batch_sampler = weight_loader.batch_sampler

    def __len__(self) -> int:
        return max(len(self.weight_loader), len(self.arch_loader))

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        epoch = getattr(self.dataset, "epoch", 0)
        if hasattr(self.arch_loader.dataset, "set_epoch"):
            self.arch_loader.dataset.set_epoch(epoch)
        gen = getattr(self.arch_loader.batch_sampler, "generator", None)
        if gen is not None:
            gen.manual_seed(epoch_seed(self.seed, epoch, ARCH_BATCH_STREAM))
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

    Paths and augmentations are drawn from generators reseeded from (seed, epoch) at the
    start of every epoch: under torchrun all ranks run the same path each step (a
    consistent DDP graph), and a run resumed from an epoch's checkpoint draws what an
    unbroken run draws.
    """

    find_unused_parameters = True

    def __init__(self, model: SuperNet, cfg: TrainConfig, search: SearchConfig,
                 retrain_shape: tuple[int, ...], **kwargs: Any) -> None:
        self.search = search
        self.mode = search.aug_mode
        model.generator = torch.Generator()
        if self.mode != "off":
            model.aug = AugmentSearch(prior=search.aug_prior)
        super().__init__(model, cfg, **kwargs)
        self.supernet: SuperNet = model
        self.aug: AugmentSearch | None = getattr(model, "aug", None)
        # augmentation draws come from their own generator, identical on every rank
        self.aug_generator = torch.Generator()
        # the logits' lr is set per epoch when it follows from the steps (SearchConfig.logit_lr)
        groups = [{"params": self.supernet.arch_parameters(), "lr": search.logit_lr(1)}]
        if self.aug is not None:
            groups.append({"params": list(self.aug.parameters()),
                           "lr": search.aug_lr or search.logit_lr(1)})
        model.branch_gradient = search.branch_gradient
        # weight decay pulls each logit towards its start (the prior), not towards 0; for
        # a uniform start the two are the same, Adam's own L2 term, added in _apply_logit_grads
        self.arch_optimizer = torch.optim.Adam(groups, betas=(0.5, 0.999), weight_decay=0.0)
        self.fixed_path = fixed_path(self.supernet, search) if self.mode in ("only", "decoupled") else None
        self.path_generator = model.generator
        self._seed_streams(0)
        self.schedule = TemperatureSchedule(search.tau_start, search.tau_end, search.tau_schedule)
        self.retrain_shape = retrain_shape
        self.steps_per_epoch = 1
        self.step_in_epoch = 0
        self.log: list[dict[str, Any]] = []
        self.probs_history: list[list[list[float]]] = []

    def weight_parameters(self) -> list[nn.Parameter]:
        return self.supernet_of().weight_parameters()

    def _seed_streams(self, epoch: int) -> None:
        seed = self.cfg.seed
        self.path_generator.manual_seed(epoch_seed(seed, epoch, PATH_STREAM))
        self.aug_generator.manual_seed(epoch_seed(seed, epoch, AUGMENT_STREAM))
        self.supernet.generator = self.path_generator

    def _seed_epoch(self, epoch: int) -> None:
        super()._seed_epoch(epoch)
        self._seed_streams(epoch)

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

    # ---- which logits move in this phase ------------------------------------------------

    def phase(self) -> tuple[bool, bool]:
        """(architecture logits move, augmentation logits move) in the current epoch."""
        if self.mode == "off":
            return True, False
        if self.mode == "joint":
            return True, True
        if self.mode == "only":
            return False, True
        first_half = self.epoch < max(1, self.cfg.epochs // 2)  # decoupled: aug, then arch
        return (not first_half), first_half

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """Training batches: the sampled searchable policy, the fixed argmax one, or flips."""
        if self.aug is None:
            return super().augment(x)
        _, aug_moves = self.phase()
        if aug_moves:
            return self.aug(x, self.aug_generator)
        return self.aug.policy().apply(x, self.aug_generator)  # decoupled, second half

    def _install_path(self) -> None:
        arch_moves, _ = self.phase()
        self.supernet.fixed_path = None if arch_moves else self.fixed_path

    def _logit_params(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        arch_moves, aug_moves = self.phase()
        arch = self.supernet.arch_parameters() if arch_moves else []
        aug = list(self.aug.parameters()) if (self.aug is not None and aug_moves) else []
        return arch, aug

    def _apply_logit_grads(self, params: list[nn.Parameter], grads: tuple) -> None:
        self.arch_optimizer.zero_grad(set_to_none=True)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        wd = self.search.arch_weight_decay
        rows = [self.supernet.alpha] + ([self.aug.alpha] if self.aug is not None else [])
        for row in rows if wd > 0 else []:
            for p, start in zip(row.logits, row.start_logits(), strict=True):
                if p.grad is not None:  # only the logits this step moves
                    p.grad = p.grad + wd * (p.detach() - start)
        average_gradients(params)  # every rank keeps identical logits
        self.arch_optimizer.step()

    def arch_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One Adam step on the logits (MedPipe's objective: the architecture-half batch is
        augmented by the sampled policy). Only logit gradients are computed."""
        arch, aug = self._logit_params()
        if aug:
            x = self.aug(x, self.aug_generator)
        # The unwrapped net: DDP's reducer expects weight gradients, this step computes none.
        with autocast(self.device, self.amp):
            logits = self.net(x)
        loss = self.loss_fn(logits, y)
        penalty = self.cost_penalty() if arch else None
        total = loss if penalty is None else loss + penalty
        params = arch + aug
        if params:
            self._apply_logit_grads(params, torch.autograd.grad(total, params, allow_unused=True))
        return loss.item()

    def unrolled_step(self, xw: torch.Tensor, yw: torch.Tensor, xa: torch.Tensor,
                      ya: torch.Tensor) -> float:
        """Clean architecture-half batch; augmentation logits get their gradient through a
        one-step unrolled weight update (DARTS/DADA first-order finite difference):

        w' = w - xi * grad_w L_train(aug(xw); w);  v = grad_w' L_val(xa; w')
        grad_aug = -xi * (grad_aug L_train(w + eps v) - grad_aug L_train(w - eps v)) / (2 eps)
        """
        arch, aug = self._logit_params()
        weights = [p for p in self.supernet.weight_parameters() if p.requires_grad]
        xi = self.search.unrolled_xi or self.search.weight_lr
        seed = int(torch.randint(0, 2**31, (1,), generator=self.aug_generator))

        def train_loss() -> torch.Tensor:
            gen = torch.Generator().manual_seed(seed)  # the same augmented batch each time
            with autocast(self.device, self.amp):
                return self.loss_fn(self.net(self.aug(xw, gen) if aug else xw), yw)

        path_seed = int(torch.randint(0, 2**31, (1,), generator=self.aug_generator))
        self.supernet.generator = torch.Generator().manual_seed(path_seed)
        g_w = torch.autograd.grad(train_loss(), weights, allow_unused=True)
        backup = [w.detach().clone() for w in weights]
        with torch.no_grad():
            for w, g in zip(weights, g_w, strict=True):
                if g is not None:
                    w.sub_(xi * g)
        with autocast(self.device, self.amp):
            val_loss = self.loss_fn(self.net(xa), ya)
        grads_val = torch.autograd.grad(val_loss, weights + arch, allow_unused=True)
        v, arch_grads = grads_val[:len(weights)], grads_val[len(weights):]
        aug_grads: list = []
        if aug:
            norm = torch.sqrt(sum((g.float() ** 2).sum() for g in v if g is not None))
            eps = 0.01 / max(float(norm), 1e-12)
            fd: list[tuple] = []
            for sign in (1.0, -1.0):
                with torch.no_grad():
                    for w, b, g in zip(weights, backup, v, strict=True):
                        w.copy_(b if g is None else b + sign * eps * g)
                self.supernet.generator = torch.Generator().manual_seed(path_seed)
                fd.append(torch.autograd.grad(train_loss(), aug, allow_unused=True))
            aug_grads = [None if gp is None else -xi * (gp - gm) / (2 * eps)
                         for gp, gm in zip(fd[0], fd[1], strict=True)]
        with torch.no_grad():
            for w, b in zip(weights, backup, strict=True):
                w.copy_(b)
        self.supernet.generator = self.path_generator
        params = arch + aug
        if params:
            self._apply_logit_grads(params, tuple(arch_grads) + tuple(aug_grads))
        return val_loss.item()

    def train_batch(self, batch: Any) -> dict[str, float]:
        (xw, yw), (xa, ya) = batch
        progress = ((self.epoch + self.step_in_epoch / max(self.steps_per_epoch, 1))
                    / max(self.cfg.epochs, 1))
        self.supernet.alpha.tau = self.schedule(progress)
        if self.aug is not None:
            self.aug.alpha.tau = self.supernet.alpha.tau
        self.step_in_epoch += 1
        self._install_path()
        xw = to_device(xw, self.device, self.channels_last)
        yw = yw.to(self.device)
        if self.epoch >= self.search.warmup:
            xa = to_device(xa, self.device, self.channels_last)
            ya = ya.to(self.device)
            if self.search.objective == "unrolled" and self.aug is not None:
                self.unrolled_step(xw, yw, xa, ya)
            else:
                self.arch_step(xa, ya)
        out = self.train_step(xw, yw)
        self.supernet.alpha.zero_grad(set_to_none=True)  # the weight step must not move logits
        if self.aug is not None:
            self.aug.zero_grad(set_to_none=True)
        crash_point("search.step")
        return out

    def bn_inputs(self, loader: Any) -> Any:
        return (x for x, _ in loader.weight_loader)

    def bn_modules(self) -> list[nn.Module]:
        """Only the validated path's BatchNorms (the other candidates keep their statistics)."""
        from volnas.search.supernet import ChoiceLayer

        path = iter(self.supernet.fixed_path or self.supernet.argmax_path())
        mods: list[nn.Module] = []
        for layer in self.supernet.net.layers:
            mods.append(layer.candidates[next(path)] if isinstance(layer, ChoiceLayer) else layer)
        return [m for mod in mods for m in mod.modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def recalibrate_bn(self, loader: Any) -> int:
        """BatchNorm statistics of the path that validation scores (argmax or the fixed one)."""
        saved = self.supernet.fixed_path
        self.supernet.fixed_path = saved if saved is not None else self.supernet.argmax_path()
        try:
            return super().recalibrate_bn(loader)
        finally:
            self.supernet.fixed_path = saved

    def train_epoch(self, loader: Any, epoch: int, total: int | None = None,
                    limit: int | None = None) -> dict[str, float]:
        self.steps_per_epoch = total or 1
        self.step_in_epoch = 0
        lr = self.search.logit_lr(self.steps_per_epoch)
        self.arch_optimizer.param_groups[0]["lr"] = lr
        if self.aug is not None:
            self.arch_optimizer.param_groups[1]["lr"] = self.search.aug_lr or lr
        return super().train_epoch(loader, epoch, total, limit)

    def on_epoch_end(self, epoch: int, row: dict[str, Any]) -> None:
        """Record the argmax architecture, its validation score, entropies and cost."""
        geno = self.supernet.genotype(input_shape=self.retrain_shape)
        if self.fixed_path is not None and not self.phase()[0] and self.mode == "only":
            geno = self.supernet.genotype(self.fixed_path, input_shape=self.retrain_shape)
        policy = self.aug.policy() if self.aug is not None else None
        if policy is not None:
            geno.extra["augment_policy"] = policy.to_list()
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
            "policy": "; ".join(policy.describe()) if policy is not None else "",
            "policy_json": policy.to_json() if policy is not None else "",
            "aug_strength": self.aug.expected_strength() if self.aug is not None else "",
            "aug_entropy": float(np.mean(self.aug.alpha.entropy())) if self.aug is not None else "",
            "seconds": row["seconds"],
        }
        rec["score"] = self._score({"loss": row["val_loss"], "accuracy": row["val_accuracy"],
                                    "f1": row["val_f1"], "auc": row["val_auc"]})
        self.log.append(rec | {"entropies": entropies})
        if not self.dist.is_main:
            return
        gdir = self.run_dir / "genotypes"
        gdir.mkdir(exist_ok=True)
        geno.extra.update({"epoch": epoch,
                           "val": {k: row[k] for k in ("val_accuracy", "val_f1", "val_auc")}})
        geno.save(gdir / f"epoch_{epoch:03d}.json")
        self._write_log()
        plot_choice_probabilities(
            self.probs_history, self.supernet.alpha.names,
            [layer.names for layer in self.supernet.choice_layers], self.run_dir / "search_probs.png")
        if policy is not None:
            self.console.print(f"  policy {escape('; '.join(policy.describe()) or 'identity')}")
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
        tensors, meta = flatten_optimizer(self.arch_optimizer)
        return ({"arch_optimizer": meta, "log": self.log, "probs_history": self.probs_history},
                {f"arch.{k}": v for k, v in tensors.items()})

    def load_extra_state(self, extra: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        if "arch_optimizer" in extra:
            arch_t = {k[5:]: v for k, v in tensors.items() if k.startswith("arch.")}
            self.arch_optimizer.load_state_dict(unflatten_optimizer(arch_t, extra["arch_optimizer"]))
            for group in self.arch_optimizer.param_groups:
                group["weight_decay"] = 0.0  # older checkpoints: the decay is ours now
        self.log = extra.get("log", [])
        self.probs_history = extra.get("probs_history", [])


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return "" if v is None else str(v)


def read_search_log(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))

