"""Durations as users write them: ``45m``, ``90s``, ``1.5h`` (``--time-budget``)."""

from __future__ import annotations

import re

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str | float | int) -> float:
    """Seconds of ``45m``, ``90s``, ``1.5h`` or a bare number of seconds. Raises ValueError."""
    if isinstance(text, int | float):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*", str(text).lower())
        if not m:
            raise ValueError(f"--time-budget {text!r}: expected a duration like 45m, 90s or 1.5h")
        value = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if not value > 0:
        raise ValueError(f"--time-budget {text!r}: must be more than 0 seconds")
    return value
