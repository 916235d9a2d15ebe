"""Multi-objective selection (NSGA-II style): non-dominated sorting, crowding distance,
binary tournaments, and the rules that pick one network from a front.

Every objective here is minimised: a score to maximise enters as its negative.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

Point = Sequence[float]


def dominates(a: Point, b: Point) -> bool:
    """``a`` is no worse than ``b`` in every objective and better in at least one."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(
        x < y for x, y in zip(a, b, strict=True))


def non_dominated_sort(points: Sequence[Point]) -> list[list[int]]:
    """Indices of ``points`` by front: front 0 is dominated by none, front 1 only by
    members of front 0, and so on. Each front lists its indices in increasing order."""
    n = len(points)
    dominated_by = [0] * n  # how many points dominate i
    dominating: list[list[int]] = [[] for _ in range(n)]  # the points i dominates
    for i in range(n):
        for j in range(i + 1, n):
            if dominates(points[i], points[j]):
                dominating[i].append(j)
                dominated_by[j] += 1
            elif dominates(points[j], points[i]):
                dominating[j].append(i)
                dominated_by[i] += 1
    fronts: list[list[int]] = []
    current = [i for i in range(n) if dominated_by[i] == 0]
    while current:
        fronts.append(sorted(current))
        nxt = []
        for i in current:
            for j in dominating[i]:
                dominated_by[j] -= 1
                if dominated_by[j] == 0:
                    nxt.append(j)
        current = nxt
    return fronts


def crowding_distance(points: Sequence[Point], front: Sequence[int]) -> dict[int, float]:
    """Crowding distance of each member of ``front``: per objective, the gap between its two
    neighbours in that objective divided by the front's range, summed over objectives; the
    two ends of every objective get infinity (they are always kept)."""
    out = {i: 0.0 for i in front}
    if len(front) <= 2:
        return {i: math.inf for i in front}
    m = len(points[front[0]])
    for k in range(m):
        order = sorted(front, key=lambda i: (points[i][k], i))
        lo, hi = points[order[0]][k], points[order[-1]][k]
        out[order[0]] = out[order[-1]] = math.inf
        if hi == lo:
            continue
        for a, i, b in zip(order, order[1:], order[2:], strict=False):
            out[i] += (points[b][k] - points[a][k]) / (hi - lo)
    return out


def rank_and_crowding(points: Sequence[Point]) -> tuple[list[int], list[float]]:
    """Per point, its front number and its crowding distance within that front."""
    rank = [0] * len(points)
    crowd = [0.0] * len(points)
    for r, front in enumerate(non_dominated_sort(points)):
        for i, d in crowding_distance(points, front).items():
            rank[i], crowd[i] = r, d
    return rank, crowd


def select(points: Sequence[Point], n: int) -> list[int]:
    """The ``n`` survivors: whole fronts in order, the last one cut by largest crowding
    distance (ties: the lower index). Returns indices in the order chosen."""
    chosen: list[int] = []
    for front in non_dominated_sort(points):
        if len(chosen) + len(front) <= n:
            chosen.extend(front)
            continue
        crowd = crowding_distance(points, front)
        chosen.extend(sorted(front, key=lambda i: (-crowd[i], i))[: n - len(chosen)])
        break
    return chosen


def tournament(rank: Sequence[int], crowd: Sequence[float], rng: np.random.Generator) -> int:
    """Binary tournament: of two members drawn at random, the one on the better front, or
    on the same front the less crowded one (the first drawn on a tie)."""
    a, b = (int(v) for v in rng.integers(len(rank), size=2))
    if (rank[b], -crowd[b]) < (rank[a], -crowd[a]):
        return b
    return a


# ---- choosing one network of a front ------------------------------------------------------

PICK_RULES = ("best", "smallest-within", "fastest-within")


def parse_pick(text: str) -> tuple[str, float]:
    """``best``, ``smallest-within 0.01`` or ``fastest-within 0.01`` (``=`` or ``:`` also
    separate the tolerance) as ``(rule, tolerance)``. Raises ValueError otherwise."""
    m = re.fullmatch(r"\s*([a-z-]+)(?:[\s=:]+([0-9.eE+-]+))?\s*", text or "")
    if not m or m.group(1) not in PICK_RULES:
        raise ValueError(f"--pick {text!r}: expected best, 'smallest-within TOL' or "
                         "'fastest-within TOL' (e.g. smallest-within 0.01)")
    rule, tol = m.group(1), m.group(2)
    if rule == "best":
        if tol is not None:
            raise ValueError(f"--pick {text!r}: best takes no tolerance")
        return rule, 0.0
    try:
        value = 0.01 if tol is None else float(tol)
    except ValueError:
        raise ValueError(f"--pick {text!r}: tolerance {tol!r} is not a number") from None
    if not value >= 0:
        raise ValueError(f"--pick {text!r}: the tolerance must be >= 0")
    return rule, value


def pick(front: Sequence[dict[str, Any]], rule: str) -> dict[str, Any]:
    """The network a rule picks from candidates holding ``score`` (larger is better),
    ``params`` and, for ``fastest-within``, ``latency_ms``.

    ``best``: the highest score; ``smallest-within T``: the fewest parameters among those
    within T of the best score; ``fastest-within T``: the lowest latency among them. Ties go
    to the higher score, then to the earlier candidate.
    """
    if not front:
        raise ValueError("pick: the front is empty")
    name, tol = parse_pick(rule)
    top = max(c["score"] for c in front)
    order = list(range(len(front)))
    if name == "best":
        return front[min(order, key=lambda i: (-front[i]["score"], i))]
    key = "params" if name == "smallest-within" else "latency_ms"
    if any(front[i].get(key) is None for i in order):
        raise ValueError(f"--pick {rule}: the candidates have no {key} (add "
                         f"{'latency' if key == 'latency_ms' else 'params'} to --costs)")
    near = [i for i in order if front[i]["score"] >= top - tol - 1e-12]
    return front[min(near, key=lambda i: (front[i][key], -front[i]["score"], i))]
