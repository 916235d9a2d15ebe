"""The one patient splitter: k fractions, grouped by patient, stratified by label.

Used for the manifest's train/val/test splits, the synthetic npz's splits and the search's
weight / architecture halves of the training split.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from volnas.data.readers import natural_key


def split_patients(
    patients: Sequence[str],
    labels: Sequence[str],
    fractions: Sequence[float],
    seed: int = 0,
    names: Sequence[str] | None = None,
) -> dict[str, int]:
    """Patient id -> split index; ``patients[i]`` is the patient of a scan labelled ``labels[i]``.

    Deterministic from ``seed`` and independent of the scans' order. Greedy: patients
    (sorted, shuffled by ``seed``, then largest first) go one by one to the split that most
    reduces the squared distance between achieved and target per-class scan counts
    (target = fraction x class total). Then, for every split with a non-zero fraction, each
    class with enough patients gets at least one patient there, and no split stays empty.
    ``names`` name the splits in errors (default ``split 0``, ``split 1``, ...).
    """
    fr = np.asarray(fractions, dtype=np.float64)
    names = list(names) if names is not None else [f"split {i}" for i in range(fr.size)]
    if (fr.ndim != 1 or fr.size < 1 or len(names) != fr.size or (fr < 0).any()
            or not np.isclose(fr.sum(), 1.0, atol=1e-6)):
        raise ValueError(
            f"split must be {len(names)} non-negative fractions summing to 1, got {fractions}"
        )
    if len(patients) != len(labels):
        raise ValueError(f"{len(patients)} patient ids for {len(labels)} labels")
    classes = sorted(set(labels), key=lambda n: (natural_key(n), n))
    cidx = {c: i for i, c in enumerate(classes)}
    ids = sorted(set(patients), key=lambda p: (natural_key(p), p))
    pidx = {p: i for i, p in enumerate(ids)}
    counts = np.zeros((len(ids), len(classes)))
    for p, label in zip(patients, labels, strict=True):
        counts[pidx[p], cidx[label]] += 1
    active = [s for s in range(fr.size) if fr[s] > 0]
    if len(ids) < len(active):
        raise ValueError(
            f"{len(ids)} patient(s) cannot fill {len(active)} non-empty splits "
            f"{[names[s] for s in active]} (fractions {tuple(fractions)}); add data or set "
            "a fraction to 0",
        )
    target = fr[:, None] * counts.sum(0)[None, :]  # split x class
    got = np.zeros_like(target)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ids))
    order = sorted(order, key=lambda i: -counts[i].sum())  # stable: keeps the shuffle in ties
    where = np.full(len(ids), -1)

    def cost(g: np.ndarray) -> float:
        return float((((g - target) ** 2) / np.maximum(counts.sum(0), 1)).sum())

    for i in order:
        best, best_cost = None, None
        for s in active:
            g = got.copy()
            g[s] += counts[i]
            c = cost(g)
            if best_cost is None or c < best_cost - 1e-12:
                best, best_cost = s, c
        where[i] = best
        got[best] += counts[i]

    # Classes with enough patients to be present in every active split.
    coverable = (counts > 0).sum(0) >= len(active)

    def move_one(members: np.ndarray, dest: int, keep_classes: bool = True) -> bool:
        """Move the cheapest patient of ``members`` to ``dest``; never empty its source."""
        best = None
        for i in members:
            src = where[i]
            if src == dest or (where == src).sum() <= 1:
                continue
            rest = got[src] - counts[i]
            if keep_classes and ((got[src] > 0) & (rest <= 0) & coverable).any():
                continue
            g = got.copy()
            g[src] = rest
            g[dest] += counts[i]
            c = cost(g)
            if best is None or c < best[0] - 1e-12:
                best = (c, i, src)
        if best is None:
            return False
        _, i, src = best
        got[src] -= counts[i]
        got[dest] += counts[i]
        where[i] = dest
        return True

    for c in np.flatnonzero(coverable):
        members = np.flatnonzero(counts[:, c] > 0)
        for s in active:
            if got[s, c] == 0:
                move_one(members, s)
    everyone = np.arange(len(ids))
    for s in active:
        if not (where == s).any() and not (move_one(everyone, s) or move_one(everyone, s, False)):
            raise ValueError(f"cannot make split {names[s]!r} non-empty")
    return {p: int(where[i]) for i, p in enumerate(ids)}
