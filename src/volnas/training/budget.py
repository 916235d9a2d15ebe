"""Wall-clock budgets: how many epochs fit in a number of seconds. A training run with
``time_budget`` sizes its epochs with these (so the cosine schedule ends with the budget);
a search splits its budget between stages (``volnas.search.budget``)."""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from volnas.training.config import TrainConfig
from volnas.training.device import autocast, prepare_model, resolve_device, to_device

# Share of a budget kept after the last training epoch, for calibration and the test pass.
RESERVE = 0.03
# Most of a budget that ``tta: auto`` may keep for trying flips after training
# (``volnas.training.run.plan_tta``): kept time that validation then does not use is lost.
TTA_SHARE = 0.10


def fit_epochs(epoch_seconds: float, seconds: float, cap: int) -> int:
    """Epochs of ``epoch_seconds`` each that fit ``seconds``: at least 1, at most ``cap``
    (``cap`` when the epoch time is unknown)."""
    if epoch_seconds <= 0:
        return cap
    return int(max(1, min(cap, seconds // epoch_seconds)))


def fill_plan(free: float, train_seconds: float, rest_seconds: float, batches: int,
              cap: int) -> tuple[int, int | None]:
    """Epochs (counting the one that ran) and the last one's training batches (None: whole)
    that fit ``free`` seconds after a first epoch of ``batches`` batches which trained in
    ``train_seconds`` and spent ``rest_seconds`` on BatchNorm re-estimation and validation;
    at most ``cap`` epochs."""
    full = train_seconds + rest_seconds
    more = max(int(free // full), 0) if full > 0 else cap
    if 1 + more >= cap:
        return cap, None
    last = int((free - more * full - rest_seconds) // (train_seconds / batches))
    return (2 + more, min(last, batches)) if last >= 1 else (1 + more, None)


def estimate_step_seconds(net: nn.Module, cfg: TrainConfig, timed_steps: int = 3) -> float:
    """Seconds of one training step of ``net`` with ``cfg``: ``timed_steps`` Adam steps on
    random batches at ``cfg``'s input, after one untimed. The step is the Trainer's (memory
    format, autocast). ``net``'s weights are stepped (lr 1e-6): pass a copy where that
    matters."""
    device = resolve_device(cfg.device)
    net = prepare_model(net, device, cfg.channels_last).train()
    bs = cfg.batch_size
    x = to_device(torch.randn((bs, *cfg.preprocess.input_shape)), device, cfg.channels_last)
    y = torch.zeros(bs, dtype=torch.long, device=device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-6)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(device, cfg.amp):
            logits = net(x)
        nn.functional.cross_entropy(logits.float(), y).backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step()
    t0 = time.perf_counter()
    for _ in range(timed_steps):
        step()
    return (time.perf_counter() - t0) / timed_steps


def epoch_seconds(per_step: float, cfg: TrainConfig, n_train: int, n_val: int) -> float:
    """An epoch of training steps of ``per_step`` seconds, plus the BatchNorm re-estimation
    and validation batches at a third of a step each. Data loading is not counted: the
    Trainer's deadline catches what this misses."""
    bs = cfg.batch_size
    steps = max(n_train // bs, 1)
    light = min(cfg.bn_recalibration, steps) + math.ceil(n_val / bs)
    return per_step * (steps + light / 3)


def estimate_epoch_seconds(net: nn.Module, cfg: TrainConfig, n_train: int, n_val: int,
                           timed_steps: int = 3) -> float:
    """Seconds of one training epoch of ``net`` with ``cfg`` (:func:`estimate_step_seconds`
    scaled by :func:`epoch_seconds`)."""
    return epoch_seconds(estimate_step_seconds(net, cfg, timed_steps), cfg, n_train, n_val)
