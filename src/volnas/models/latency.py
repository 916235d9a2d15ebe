"""A per-layer latency lookup table: what each candidate operation costs at each position.

Each entry is the measured forward time (batch of one scan, eval mode, no gradient) of one
operation at one layer of a space, for the input shape that reaches it. A network's latency
is predicted as the sum of its layers' entries plus the head (pooling + linear); a skip
costs nothing. Entries are measured the first time they are needed and cached as JSON,
one file per space, input shape, device and thread count, under
``$VOLNAS_CACHE_DIR/latency`` (the preprocessing cache's root). ``calibrate`` fits
``measured = a * sum + b`` on a few whole networks: the sum of parts misses what a whole
network pays once (the call overhead, caches going cold between layers).

On CUDA the timer synchronises the device before and after each timed run, so the time
is the kernels' and not their launch.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from volnas.core.files import atomic_write_text
from volnas.data.cache import default_cache_dir
from volnas.models.genotype import build_layer
from volnas.models.spaces import layer_specs

Timer = Callable[[nn.Module, torch.Tensor], float]  # seconds of one forward pass
TABLE_VERSION = 1


def device_name(device: torch.device) -> str:
    """A readable name of the processor that runs ``device`` (CPU model or GPU name)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


_FLUSH: list[torch.Tensor] = []
FLUSH_MB = 64  # more than the last-level cache of the CPUs this runs on


def flush_cpu_caches() -> None:
    """Write a buffer larger than the CPU caches, so the next run reads its weights from
    memory as it does inside a whole network (where the other layers evicted them)."""
    if not _FLUSH:
        _FLUSH.append(torch.zeros(FLUSH_MB * 2**20 // 4))
    _FLUSH[0].add_(1.0)


def time_forward(module: nn.Module, x: torch.Tensor, *, warmup: int = 2, repeats: int = 7,
                 cold: bool = True) -> float:
    """Median seconds of ``module(x)`` over ``repeats`` runs after ``warmup`` (no gradient;
    CUDA synchronised around each run). ``cold`` (CPU): the caches are flushed before each
    run, untimed: a layer timed alone with warm caches runs several times faster than the
    same layer inside a network, whose weights do not stay in cache from run to run."""
    cuda = x.device.type == "cuda"
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            if cold and not cuda:
                flush_cpu_caches()
            if cuda:
                torch.cuda.synchronize(x.device)
            t0 = time.perf_counter()
            module(x)
            if cuda:
                torch.cuda.synchronize(x.device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _shape_key(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


class LatencyTable:
    """Latency of every (layer, operation, input shape) of ``space`` on one device.

    Args:
        space: the search space.
        input_shape: one scan ``(C, D, H, W)`` as the network sees it.
        num_classes: outputs of the head.
        device: where latency is measured (and will be paid).
        threads: CPU threads (default: ``torch.get_num_threads()``); part of the cache key.
        cache_dir: root of the cache (default: ``$VOLNAS_CACHE_DIR`` or ``~/.cache/volnas``).
        timer: measures one module on one input in seconds (default :func:`time_forward`);
            tests give a mock.
    """

    def __init__(
        self,
        space: str,
        input_shape: tuple[int, ...],
        num_classes: int = 2,
        *,
        device: torch.device | str = "cpu",
        threads: int | None = None,
        cache_dir: Path | str | None = None,
        timer: Timer | None = None,
    ) -> None:
        self.space = space
        self.specs = layer_specs(space)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes = num_classes
        self.device = torch.device(device)
        self.threads = threads or torch.get_num_threads()
        self.timer = timer or time_forward
        self.device_label = device_name(self.device)
        slug = re.sub(r"[^a-z0-9]+", "-", self.device_label.lower()).strip("-")[:40]
        digest = hashlib.sha256(self.device_label.encode()).hexdigest()[:8]
        root = Path(cache_dir) if cache_dir else default_cache_dir()
        self.path = root / "latency" / (
            f"{space}-{_shape_key(self.input_shape)}-k{num_classes}-{self.device.type}-"
            f"{slug}-{digest}-t{self.threads}.json")
        self.entries: dict[str, dict[str, Any]] = {}
        self.calibration: dict[str, float] | None = None
        self._dirty = False
        self._warm = False  # the process's first convolutions pay one-off set-up costs
        self._load()

    # ---- storage -------------------------------------------------------------------

    def _load(self) -> None:
        if not self.path.is_file():
            return
        try:
            data = json.loads(self.path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{self.path}: unreadable latency table ({type(e).__name__}: {e}); "
                             "delete it to measure again") from e
        if data.get("version") != TABLE_VERSION or data.get("torch") != torch.__version__:
            return  # another format or another torch: measure again
        self.entries = dict(data.get("entries", {}))
        self.calibration = data.get("calibration")

    def save(self) -> None:
        """Write the table (atomically) when something was measured or calibrated."""
        if not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps({
            "version": TABLE_VERSION, "space": self.space, "input_shape": self.input_shape,
            "num_classes": self.num_classes, "device": self.device_label,
            "threads": self.threads, "torch": torch.__version__,
            "calibration": self.calibration, "entries": self.entries}, indent=1))
        self._dirty = False

    # ---- measuring -----------------------------------------------------------------

    def _measure(self, module: nn.Module, shape: tuple[int, ...]) -> tuple[float, tuple[int, ...]]:
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            module = module.to(self.device).eval()
            x = torch.randn((1, *shape), device=self.device)
            with torch.no_grad():
                out = tuple(module(x).shape[1:])
            if not self._warm:
                for _ in range(3):
                    self.timer(module, x)
                self._warm = True
            seconds = self.timer(module, x)
        finally:
            torch.set_num_threads(previous)
        return seconds * 1e3, out

    def entry(self, layer: int, op: str, shape: tuple[int, ...]) -> dict[str, Any]:
        """``{"ms", "out"}`` of operation ``op`` at layer index ``layer`` on input ``shape``
        (measured now if the table lacks it)."""
        spec = self.specs[layer]
        key = f"{spec.name}|{op}|{_shape_key(shape)}"
        if key not in self.entries:
            if op == "skip":
                self.entries[key] = {"ms": 0.0, "out": list(shape)}
            else:
                ms, out = self._measure(build_layer(spec, op, self.input_shape[0]), shape)
                self.entries[key] = {"ms": ms, "out": list(out)}
            self._dirty = True
        return self.entries[key]

    def head_entry(self, shape: tuple[int, ...]) -> dict[str, Any]:
        """The head (global average pooling + linear) on features of ``shape``."""
        key = f"head|gap+linear|{_shape_key(shape)}"
        if key not in self.entries:
            head = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(),
                                 nn.Linear(shape[0], self.num_classes))
            ms, out = self._measure(head, shape)
            self.entries[key] = {"ms": ms, "out": list(out)}
            self._dirty = True
        return self.entries[key]

    def layer_latencies(self, ops: Sequence[str]) -> list[float]:
        """Milliseconds of each layer of the network ``ops`` (one op per layer), then the head."""
        if len(ops) != len(self.specs):
            raise ValueError(f"{len(ops)} operations for the {len(self.specs)} layers of "
                             f"space {self.space!r}")
        shape = self.input_shape
        out = []
        for i, op in enumerate(ops):
            e = self.entry(i, op, shape)
            out.append(float(e["ms"]))
            shape = tuple(e["out"])
        out.append(float(self.head_entry(shape)["ms"]))
        return out

    def predict(self, ops: Sequence[str], *, calibrated: bool = True) -> float:
        """Predicted milliseconds of the whole network: the sum of its parts, corrected by
        the calibration when there is one and ``calibrated``."""
        total = float(sum(self.layer_latencies(ops)))
        if calibrated and self.calibration:
            return self.calibration["a"] * total + self.calibration["b"]
        return total

    def measure_network(self, net: nn.Module) -> float:
        """Measured milliseconds of one forward pass of a whole network on one scan."""
        return self._measure(net, self.input_shape)[0]

    def calibrate(self, networks: Sequence[tuple[Sequence[str], nn.Module]]) -> dict[str, float]:
        """Fit ``measured = a * sum + b`` on whole networks ``(ops, built network)`` (at least
        2; relative least squares) and keep it in the table. Returns the fit."""
        if len(networks) < 2:
            raise ValueError(f"calibrate: needs at least 2 networks, got {len(networks)}")
        sums = np.array([self.predict(ops, calibrated=False) for ops, _ in networks])
        measured = np.array([self.measure_network(net) for _, net in networks])
        if np.ptp(sums) == 0:
            a, b = 1.0, float(np.mean(measured - sums))
        else:
            # least squares on the relative error (weights 1 / measured): the table is judged
            # by its error in %, and small networks count as much as large ones
            a, b = (float(v) for v in np.polyfit(sums, measured, 1, w=1.0 / measured))
        self.calibration = {"a": a, "b": b, "n": len(networks)}
        self._dirty = True
        return self.calibration
