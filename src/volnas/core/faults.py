"""Fault injection for the crash tests: kill this process at a named point, as ``kill -9`` would.

``VOLNAS_CRASH_AT`` holds comma-separated points, each ``NAME`` (the first time the code
passes it) or ``NAME#N`` (the N-th time in this process). Unset, :func:`crash_point` is a
dictionary look-up and nothing else. The tests use it to stop a run at an exact place
(mid-epoch, between a checkpoint's weights and its record, during a probe...) and check
that ``--resume`` gives what an unbroken run gives.
"""

from __future__ import annotations

import os
import signal

ENV = "VOLNAS_CRASH_AT"
_passes: dict[str, int] = {}


def crash_point(name: str) -> None:
    """SIGKILL the current process if ``$VOLNAS_CRASH_AT`` names this pass of ``name``."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    _passes[name] = _passes.get(name, 0) + 1
    for item in spec.split(","):
        point, _, nth = item.strip().partition("#")
        if point == name and (not nth or int(nth) == _passes[name]):
            os.kill(os.getpid(), signal.SIGKILL)
