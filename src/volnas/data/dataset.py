"""From a manifest (or a MedMNIST npz) to batches: the data source and the torch Dataset."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from volnas.core.distributed import ShardedBatchSampler
from volnas.core.distributed import info as dist_info
from volnas.data.cache import StackCache
from volnas.data.index import build_index
from volnas.data.manifest import ManifestRow, read_manifest, read_manifest_info
from volnas.data.preprocess import PreprocessConfig, StackGeometry, take_slices
from volnas.data.splits import split_patients
from volnas.data.volume import DataError

SPLITS = ("train", "val", "test")


@dataclass
class DataSource:
    """All scans of a dataset with their labels, patients and splits."""

    rows: list[ManifestRow]
    class_names: list[str]
    positive_class: str | None
    origin: Path

    def split(self, name: str) -> list[ManifestRow]:
        rows = [r for r in self.rows if r.split == name]
        if not rows:
            raise DataError(self.origin, f"the {name!r} split is empty")
        return rows

    def label_index(self, label: str) -> int:
        return self.class_names.index(label)

    def fold(self, folds: int, index: int, seed: int = 0) -> DataSource:
        """The training split as fold ``index`` (0-based) of ``folds``-fold cross-validation:
        its patients, grouped and stratified by label (:func:`split_patients`, ``seed``),
        are the ``val`` split, the other folds' the ``train`` split. The source's own
        validation and test scans are not in it, so nothing run on a fold can read them."""
        if not 2 <= folds or not 0 <= index < folds:
            raise ValueError(f"fold {index} of {folds}: need folds >= 2 and 0 <= fold < folds")
        train = self.split("train")
        where = split_patients([r.patient_id for r in train], [r.label for r in train],
                               [1 / folds] * folds, seed,
                               names=[f"fold {i + 1}" for i in range(folds)])
        rows = [replace(r, split="val" if where[r.patient_id] == index else "train")
                for r in train]
        return DataSource(rows, self.class_names, self.positive_class, self.origin)


def open_source(path: str | Path) -> DataSource:
    """Open a manifest CSV (from ``volnas data index``) or a MedMNIST-3D ``.npz``."""
    p = Path(path)
    if not p.exists():
        raise DataError(p, "no such file")
    if p.suffix == ".npz":
        res = build_index(p)
        return DataSource(res.rows, res.classes, res.positive_class, p)
    rows = read_manifest(p)
    meta = read_manifest_info(p, rows)
    classes = list(meta.get("classes") or sorted({r.label for r in rows}))
    positive = meta.get("positive_class")
    unknown = {r.label for r in rows} - set(classes)
    if unknown:
        raise DataError(p, f"labels {sorted(unknown)} are not among the classes {classes}")
    return DataSource(rows, classes, positive, p)


class ScanDataset(Dataset):
    """Scans as model inputs (1, T, H, W) with integer labels.

    Training uses random slice sampling (a fresh draw per epoch, reproducible from the
    seed, epoch and index); evaluation uses the deterministic symmetrical sampling.
    """

    def __init__(
        self,
        rows: list[ManifestRow],
        class_names: list[str],
        cfg: PreprocessConfig,
        *,
        train: bool,
        cache: StackCache,
        seed: int = 0,
    ) -> None:
        self.rows = rows
        self.labels = [class_names.index(r.label) for r in rows]
        self.cfg = cfg
        self.train = train
        self.cache = cache
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray, StackGeometry]:
        """Model input, chosen slice indices and stack geometry of scan ``i``."""
        row = self.rows[i]
        stack, geom = self.cache.get(row.path, row.format)
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            x, idx = take_slices(stack, self.cfg, "random", rng)
        else:
            x, idx = take_slices(stack, self.cfg, "symmetrical", None)
        return x, idx, geom

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, _, _ = self.load(i)
        return torch.from_numpy(x), self.labels[i]


def make_loader(
    dataset: ScanDataset, batch_size: int, *, train: bool, num_workers: int = 0, seed: int = 0
) -> DataLoader:
    """Seeded shuffled batches (complete ones only) for training; ordered for evaluation.

    Under torchrun each rank takes its slice of every global batch (see
    ``ShardedBatchSampler``), so N ranks with ``batch_size`` see what one process with
    ``N * batch_size`` sees. Workers are not persistent, so each epoch's workers see the
    dataset's current epoch.
    """
    d = dist_info()
    sampler = ShardedBatchSampler(
        len(dataset), batch_size, shuffle=train, seed=seed, rank=d.rank,
        world_size=d.world_size, drop_last=train and len(dataset) > batch_size * d.world_size)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers)
