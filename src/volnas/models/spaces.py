"""Search spaces as data: a small table, expanded into layer specs.

covidnet3d-s / -l (CovidNet3D): stem to 32 channels, 6 cells of [4, 4, 4, 4, 4, 1]
searchable layers, each cell led by a fixed calibration layer (stride 2 where the
resolution changes). medpipe (MedPipe): the stem and the 6 calibration layers choose their
stride from {1, 2}; channels [32, 48, 64, 96, 160, 320].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from volnas.models.mbconv import (
    MBCONV_CANDIDATES,
    MBCONV_SHAPES,
    STRIDE_CANDIDATES,
    LayerSpec,
    stride_op,
    stride_pattern,
)


@dataclass(frozen=True)
class SpaceDef:
    stem_channels: int
    channels: tuple[int, ...]
    layers: tuple[int, ...]
    strides: tuple[int, ...] | None  # stem + one per cell; None = searched from {1, 2}
    description: str


SPACES: dict[str, SpaceDef] = {
    "covidnet3d-s": SpaceDef(32, (24, 40, 80, 96, 192, 320), (4, 4, 4, 4, 4, 1),
                             (2, 2, 2, 2, 1, 2, 1), "CovidNet3D small: 21 MBConv layers, 8^21 nets"),
    "covidnet3d-l": SpaceDef(32, (32, 64, 128, 256, 512, 1024), (4, 4, 4, 4, 4, 1),
                             (2, 2, 2, 2, 1, 2, 1), "CovidNet3D large channels"),
    "medpipe": SpaceDef(32, (32, 48, 64, 96, 160, 320), (4, 4, 4, 4, 4, 1), None,
                        "MedPipe: searched strides for stem and calibration layers"),
}


def get_space(name: str) -> SpaceDef:
    if name not in SPACES:
        raise KeyError(f"unknown search space {name!r}; known: {', '.join(SPACES)}")
    return SPACES[name]


# The smallest map extent a fitted downsampling leaves along an axis: on 4 voxels a 7^3
# kernel still reaches every position (2 * 4 - 1 = 7), so no candidate is a copy of another
MIN_MAP = 4


# How fitting picks the strides it drops: "end" drops the last ones (the early cells keep
# the space's resolution schedule); "cell1" first moves cell 1's downsampling later, so cell
# 1 works on the stem's map, then drops from the end
STRIDE_RULES = ("end", "cell1")


def fit_strides(strides: tuple[int, ...], spatial: tuple[int, ...],
                rule: str = "end") -> list[tuple[int, int, int]]:
    """Per-axis strides of the stem and calibration layers for an input of ``spatial``
    (D, H, W): a stride 2 is kept along an axis only while the map stays >= MIN_MAP there.

    The spaces' strides downsample 32-fold, made for CT of 128^3 and more. At 28^3 that
    leaves 13 of covidnet3d-s's 21 searchable layers on 2^3 and 1^3 maps, where k3, k5 and
    k7 compute the same function; fitted, every cell after the second runs on 4^3.
    ``rule`` (:data:`STRIDE_RULES`): along an axis where a stride must go, "cell1" first
    gives cell 1 stride 1 (at 28^3: cell 1 on 14^3, the last cells on 4^3).
    """
    if rule not in STRIDE_RULES:
        raise ValueError(f"stride rule {rule!r}: expected one of {', '.join(STRIDE_RULES)}")
    per_axis = []
    for n in spatial:
        kept = _keep_while_large(strides, int(n))
        if rule == "cell1" and len(strides) > 1 and strides[1] == 2 and \
                kept != [s == 2 for s in strides]:
            kept = _keep_while_large((strides[0], 1, *strides[2:]), int(n))
        per_axis.append(kept)
    return [tuple(2 if axis[i] else 1 for axis in per_axis)  # type: ignore[misc]
            for i in range(len(strides))]


def _keep_while_large(strides: tuple[int, ...], n: int) -> list[bool]:
    """Along one axis of ``n`` voxels: which strides 2 keep the map >= MIN_MAP, in order."""
    kept = []
    for s in strides:
        keep = s == 2 and (n + 1) // 2 >= MIN_MAP
        kept.append(keep)
        n = (n + 1) // 2 if keep else n
    return kept


def fitted_strides_note(space: str, spatial: tuple[int, ...], rule: str = "end") -> str | None:
    """One line naming the downsampling layers :func:`fit_strides` changes for ``spatial``
    (None when it changes none, or the space searches its strides)."""
    changed = [f"{f.name} {'x'.join(map(str, stride_pattern(f.candidates[0])))}"
               for s, f in zip(layer_specs(space), layer_specs(space, spatial, rule), strict=True)
               if f.candidates != s.candidates]
    if not changed:
        return None
    return (f"strides of {space} fitted to the input {'x'.join(map(str, spatial))} (no map "
            f"below {MIN_MAP} voxels along an axis): " + ", ".join(changed))


def layer_specs(space: str, spatial: tuple[int, ...] | None = None,
                rule: str = "end") -> list[LayerSpec]:
    """The ordered layers of a space: stem, then per cell a calibration and normal layers.

    ``spatial`` (D, H, W): fit the fixed strides of the space to that input
    (:func:`fit_strides` with ``rule``); the searched strides of medpipe are left to its
    stride budget.
    """
    sd = get_space(space)
    specs: list[LayerSpec] = []
    fitted = (fit_strides(sd.strides, spatial, rule)
              if spatial is not None and sd.strides is not None else None)

    def stride_choice(i: int) -> tuple[str, ...]:
        if sd.strides is None:
            return STRIDE_CANDIDATES
        if fitted is not None and sd.strides[i] == 2:
            return (stride_op(fitted[i]),)
        return (f"conv_s{sd.strides[i]}",)

    def calib_choice(i: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
        # (candidates, legacy): a fixed stride-1 calibration layer only changes channels, a
        # 1x1x1 convolution (the MBConv layers around it see the neighbourhood); before, it
        # was a full 3^3 convolution (192 -> 320 channels: 1.66 M parameters against 62 k)
        if sd.strides is not None and sd.strides[i] == 1:
            return ("pw_s1",), ("conv_s1",)
        return stride_choice(i), ()

    specs.append(LayerSpec("stem", "stem", -1, sd.stem_channels, stride_choice(0)))
    cin = sd.stem_channels
    for c, (cout, n) in enumerate(zip(sd.channels, sd.layers, strict=True), start=1):
        candidates, legacy = calib_choice(c)
        specs.append(LayerSpec(f"cell{c}.calib", "calib", cin, cout, candidates, legacy))
        for j in range(1, n + 1):
            specs.append(LayerSpec(f"cell{c}.layer{j}", "normal", cout, cout, MBCONV_CANDIDATES))
        cin = cout
    return specs


# MedPipe's searched strides (stem + 6 calibration layers; paper Fig. 5): the reference of
# the stride memory budget, and the path the medpipe space's map sizes are reckoned with
REFERENCE_STRIDES = (1, 2, 2, 2, 2, 2, 1)


def _effective(op: str, extent: tuple[int, ...]) -> tuple[Any, ...]:
    """What a candidate computes on a map of ``extent``: kKeE with zero padding reaches at
    most n - 1 voxels either side, so its kernel acts as min(K, 2n - 1) along each axis."""
    if op not in MBCONV_SHAPES:
        return (op,)
    k, e = MBCONV_SHAPES[op]
    return ("mbconv", e, tuple(min(k, 2 * n - 1) for n in extent))


def acts_as(op: str, extent: tuple[int, ...]) -> str | None:
    """The kernel a kKeE candidate acts as on a map of ``extent`` when smaller than K
    (``"3x3x3"``, ``"1x3x3"``), else None."""
    if op not in MBCONV_SHAPES:
        return None
    eff = _effective(op, extent)[2]
    return None if all(k == MBCONV_SHAPES[op][0] for k in eff) else "x".join(map(str, eff))


def kernel_geometry(space: str, spatial: tuple[int, int, int],
                    fitted: bool = False, rule: str = "end") -> list[dict[str, Any]]:
    """Per searchable normal layer of ``space`` for an input of ``spatial`` (D, H, W): the
    layer's map extent, its candidates, and how many of them compute different functions
    there. On a 2x2x2 map k3, k5 and k7 of one expansion are the same function (the larger
    kernels' outer taps only ever see padding), so a search cannot tell them apart.
    ``fitted``: with the strides fitted to the input (:func:`fit_strides`, ``rule``)."""
    extent = tuple(int(n) for n in spatial)
    out = []
    cell = -1
    for spec in layer_specs(space, spatial if fitted else None, rule):
        if spec.kind in ("stem", "calib"):
            cell += 1
            if spec.searchable:  # medpipe's searched strides: reckoned with its reference
                strides: tuple[int, ...] = (REFERENCE_STRIDES[cell],) * 3
            else:
                strides = stride_pattern(spec.candidates[0])
            extent = tuple((n + 1) // 2 if st == 2 else n for n, st in zip(extent, strides, strict=True))
            continue
        if len(spec.candidates) < 2:
            continue
        distinct = len({_effective(op, extent) for op in spec.candidates})
        out.append({"layer": spec.name, "extent": extent, "candidates": len(spec.candidates),
                    "distinct": distinct})
    return out


def degenerate_layers_warning(space: str, spatial: tuple[int, int, int],
                              fitted: bool = False, rule: str = "end") -> str | None:
    """A warning when a third or more of the searchable layers run on maps so small that
    some of their candidates compute the same function (None otherwise)."""
    rows = kernel_geometry(space, spatial, fitted, rule)
    bad = [r for r in rows if r["distinct"] < r["candidates"]]
    if not rows or 3 * len(bad) < len(rows):
        return None
    smallest = min(bad, key=lambda r: r["extent"])
    return (f"{len(bad)} of {len(rows)} searchable layers of {space} run on maps of "
            f"{'x'.join(map(str, smallest['extent']))} to "
            f"{'x'.join(map(str, max(r['extent'] for r in bad)))} voxels at input "
            f"{'x'.join(map(str, spatial))}, where larger kernels compute the same function "
            f"as smaller ones ({smallest['distinct']} of {smallest['candidates']} candidates "
            "differ at the smallest): those choices only add parameters. Fitted strides "
            "(--fit-strides, the default for fixed-stride spaces) or a larger input "
            "(--slices/--size) give the search something to choose")
