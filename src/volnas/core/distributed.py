"""Data-parallel training with PyTorch's own engine (torchrun + DistributedDataParallel).

``torchrun --nproc_per_node N -m volnas train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK;
``init_distributed`` picks the backend (nccl on CUDA, gloo on CPU). Every rank reads its
slice of each global batch (``ShardedBatchSampler``), so N ranks with batch B see exactly
the batches one process with batch N*B would see. Only rank 0 writes files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_INFO = DistInfo()


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun; a no-op for a single process."""
    global _INFO
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _INFO
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
        backend = "nccl" if use_cuda else "gloo"
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    _INFO = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return _INFO


def info() -> DistInfo:
    return _INFO


def barrier() -> None:
    if _INFO.enabled:
        dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (one element without distribution)."""
    if not _INFO.enabled:
        return [obj]
    out: list[Any] = [None] * _INFO.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not _INFO.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """All-reduce (mean) the gradients of ``params`` that have one (e.g. search logits)."""
    if not _INFO.enabled:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= _INFO.world_size


class ShardedBatchSampler(Sampler[list[int]]):
    """Global batches of ``batch_size * world_size`` from a seeded permutation; each rank
    takes its contiguous ``batch_size`` slice. Incomplete global batches are dropped when
    ``drop_last`` (training), so every rank takes the same number of steps.
    """

    def __init__(self, n: int, batch_size: int, *, shuffle: bool, seed: int, rank: int,
                 world_size: int, drop_last: bool) -> None:
        self.n = n
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.rank = rank
        self.world = world_size
        self.drop_last = drop_last
        self.generator = torch.Generator().manual_seed(seed)

    def _global_batches(self) -> list[list[int]]:
        order = (torch.randperm(self.n, generator=self.generator).tolist() if self.shuffle
                 else list(range(self.n)))
        g = self.batch_size * self.world
        batches = [order[i:i + g] for i in range(0, self.n, g)]
        if self.drop_last and len(batches) > 1 and len(batches[-1]) < g:
            batches.pop()
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._global_batches():
            per = -(-len(batch) // self.world)  # ceil: the last batch may be uneven
            part = batch[self.rank * per:(self.rank + 1) * per]
            if part:
                yield part

    def __len__(self) -> int:
        g = self.batch_size * self.world
        full, rest = divmod(self.n, g)
        if self.drop_last and full >= 1:
            return full
        return full + (1 if rest else 0)
