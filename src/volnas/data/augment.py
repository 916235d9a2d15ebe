"""3D data augmentation of MedPipe Table I, and fixed augmentation policies.

Every operation takes a float batch ``(B, C, D, H, W)`` and returns a tensor of the same
shape, dtype, device (and channels_last_3d layout). Each scan gets its own Bernoulli(p)
coin and its own random parameters. All random numbers are drawn from the given
``torch.Generator`` (on its device, normally the CPU) and then moved to the batch's
device, so the same seed gives the same result on CPU and CUDA. ``p == 0`` returns the
input object itself. Every op is differentiable with respect to the input.

Axes: D = slices (depth), H = rows (vertical, "V"), W = columns (horizontal, "H").
Flips reverse that axis (flip_v: H, flip_h: W, flip_d: D; kornia's Vertical/Horizontal/
Depthical flips). A rotation "X" turns the volume *about* axis X, right-handed in voxel
coordinates (x, y, z) = (W, H, D) with isotropic voxels assumed, a positive angle
turning: rotate_d (about D, in-slice) +W towards +H; rotate_v (about H) +D towards +W;
rotate_h (about W) +H towards +D.

Operations (x in [0, 1] after ``preprocess``; 0 is air):

- gaussian_noise: x + std * N(0, 1), no clamp.
- rotate_*, affine_ratio, affine_scale: warps about the volume centre, (tri)linear
  interpolation (``grid_sample``, ``align_corners=False``), zero padding. Rotations and
  affine_ratio keep one axis, so they run as one 2D bilinear warp with that axis folded
  into the channels (identical to the trilinear result, about 10x cheaper); affine_scale
  as two such passes (in-slice, then along D).
  affine_scale zooms isotropically by s (s > 1 enlarges); affine_ratio stretches H by
  sqrt(r) and W by 1 / sqrt(r) (in-slice aspect H/W times r, area kept).
- erase: sets one cuboid per scan to 0 (kornia's RandomErasing value). Its volume
  fraction s ~ U[LB, RB]; in-slice aspect H/W log-uniform in ERASE_RATIO; position
  uniform inside the volume. The voxel count matches s up to rounding of the sides.
- blur: k x k x k box mean (kornia's box blur: the only argument is the kernel size),
  replicate padding. An even k uses the centred kernel [1/2, 1, ..., 1, 1/2] / k
  (k + 1 taps, the mean of the two half-voxel-shifted k-boxes) so nothing shifts.
- invert: max - x (kornia ``invert``: no clamp, so [0, 1] maps to [max - 1, max]).
- color_jitter (brightness b, contrast c), kornia/torchvision ColorJitter formulas in a
  fixed order: x * beta, beta ~ U[1 - b, 1 + b], clamp [0, 1]; then gamma * x +
  (1 - gamma) * mean(x) with the scan's mean, gamma ~ U[1 - c, 1 + c], clamp [0, 1].

Magnitude grids (MedPipe Sec. III-A and Table I). "For those operations with continuous
magnitude, we predefine the range of left boundary (LB) and right boundary (RB), each of
which is discretized into 5 values with uniform spacing", and "suppose the searched LB
and RB value is -15 and 30, then a random degree from the uniform distribution of
[-15,30] will be drawn". So a continuous magnitude is the pair ``(LB, RB)`` over the 5 x 5
grid, and each scan draws its value uniformly in [LB, RB]. A closed range [a, b] gives
``linspace(a, b, 5)``; a half-open (a, b] gives ``a + (b - a) * k / 5, k = 1..5``:

- rotate_v/h/d: LB in {-30, -22.5, -15, -7.5, 0}, RB in {0, 7.5, 15, 22.5, 30} degrees.
- erase: scale (fraction of the volume erased) LB in {0.02, ..., 0.1} from (0, 0.1],
  RB in {0.14, ..., 0.3} from (0.1, 0.3].
- affine_scale: zoom LB in {0.2, ..., 1.0} from (0, 1], RB in {1.4, ..., 3.0} from (1, 3].
- affine_ratio: LB in {0.2, ..., 1.0} from (0, 1], RB in {0.3, 0.975, 1.65, 2.325, 3.0}
  from [0.3, 3]; the 5 pairs with LB > RB are left out (20 pairs).
- blur: kernel size {2, 3, 5} (the text; Table I prints {2, 3, 4}).
- invert: max value {0.25, 0.5, 0.75, 1}.
- color_jitter: (brightness, contrast) in {0.3, 0.5} x {0.5, 0.8}.
- gaussian_noise, flips: the paper gives no magnitude. Flips have the single magnitude
  ``None`` (printed "-"); the noise has the single std 0.05 (our choice, 5 % of the
  [0, 1] intensity range, about 70 HU for the default window).

Paper inconsistencies: the text names 12 types, Table I 13 (affine ratio and affine scale
apart). Fig. 5 prints "Erase; [(0.1,0.2), (0.3,3)]", so Table I's "ratio" row may be
Erase's aspect ratio; we keep Table I's affine_ratio and give erase the fixed aspect range
(0.3, 3). The text says Invert has no magnitude; we follow Table I's max values. Some
Fig. 5 values (rotation (-10, 10), erase scale RB 0.2, affine (0.8, 1)) are not on these
grids and cannot be loaded; its p = 0.9 can (a Policy takes any p in [0, 1]).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

Magnitude = Any  # None | int | float | tuple[float, float]
Params = dict[str, torch.Tensor]

NOISE_STD = 0.05
ERASE_RATIO = (0.3, 3.0)  # erase aspect range: Fig. 5's "(0.3, 3)" (kornia: (0.3, 3.3))
_ROT_LB = (-30.0, -22.5, -15.0, -7.5, 0.0)
_ROT_RB = (0.0, 7.5, 15.0, 22.5, 30.0)
_ERASE_LB = (0.02, 0.04, 0.06, 0.08, 0.1)
_ERASE_RB = (0.14, 0.18, 0.22, 0.26, 0.3)
_UNIT_LB = (0.2, 0.4, 0.6, 0.8, 1.0)
_SCALE_RB = (1.4, 1.8, 2.2, 2.6, 3.0)
_RATIO_RB = (0.3, 0.975, 1.65, 2.325, 3.0)


def _pairs(left: Sequence[float], right: Sequence[float]) -> tuple[tuple[float, float], ...]:
    return tuple((lo, hi) for lo in left for hi in right if lo <= hi)


# ---- random numbers (drawn on the generator's device, normally the CPU) -----------------


def _rand(n: int, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else "cpu"
    return torch.rand(n, generator=generator, device=device)


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator | None) -> torch.Tensor:
    return lo + (hi - lo) * _rand(n, generator)


# ---- per-type samplers: (n_applied, shape, magnitude, generator) -> params ----------------

Sampler = Callable[[int, Sequence[int], Magnitude, "torch.Generator | None"], Params]
Transform = Callable[[torch.Tensor, Magnitude, Params], torch.Tensor]


def _no_params(n: int, shape: Sequence[int], m: Magnitude, g: torch.Generator | None) -> Params:
    return {}


def _sample_noise(n: int, shape: Sequence[int], m: Magnitude, g: torch.Generator | None) -> Params:
    device = g.device if g is not None else "cpu"
    return {"noise": torch.randn((n, *shape[1:]), generator=g, device=device)}


def _sample_range(key: str) -> Sampler:
    def sample(n: int, shape: Sequence[int], m: Magnitude, g: torch.Generator | None) -> Params:
        return {key: _uniform(n, m[0], m[1], g)}

    return sample


def _sample_erase(n: int, shape: Sequence[int], m: Magnitude, g: torch.Generator | None) -> Params:
    d, h, w = shape[-3:]
    scale = _uniform(n, m[0], m[1], g)
    ratio = torch.exp(_uniform(n, math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1]), g))
    u = torch.stack([_rand(n, g) for _ in range(3)], dim=1)
    # In-plane side fractions from area scale^(2/3) and aspect ratio = H/W; the depth
    # side then makes the voxel count match scale (exact up to rounding for scale <= 0.43).
    area = scale ** (2.0 / 3.0)
    nh = (torch.sqrt(area * ratio).clamp(max=1.0) * h).round().clamp(1, h)
    nw = (torch.sqrt(area / ratio).clamp(max=1.0) * w).round().clamp(1, w)
    nd = (scale * d * h * w / (nh * nw)).round().clamp(1, d)
    size = torch.stack([nd, nh, nw], dim=1)
    room = torch.tensor([d, h, w], dtype=size.dtype, device=size.device) - size + 1
    start = torch.minimum((u * room).floor(), room - 1)
    return {"scale": scale, "ratio": ratio, "start": start.long(), "size": size.long()}


def _sample_jitter(n: int, shape: Sequence[int], m: Magnitude, g: torch.Generator | None) -> Params:
    b, c = m
    return {
        "brightness": _uniform(n, max(0.0, 1.0 - b), 1.0 + b, g),
        "contrast": _uniform(n, max(0.0, 1.0 - c), 1.0 + c, g),
    }


# ---- transforms on the applied samples: (x_sel, magnitude, params) -> y_sel ---------------


def _per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))


def _noise(x: torch.Tensor, m: Magnitude, p: Params) -> torch.Tensor:
    return x + m * p["noise"].to(x.dtype)


def _flip(dim: int) -> Transform:
    def transform(x: torch.Tensor, m: Magnitude, p: Params) -> torch.Tensor:
        return x.flip(dim)

    return transform


def _warp(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Resample ``x`` at ``a @ q`` for every output voxel ``q`` (centred voxel units, (W,H,D))."""
    d, h, w = x.shape[-3:]
    s = torch.tensor([w / 2.0, h / 2.0, d / 2.0], dtype=a.dtype, device=a.device)
    # align_corners=False: normalised n <-> centred voxel n * size / 2, so theta = S^-1 A S.
    theta = a * s[None, None, :] / s[None, :, None]
    theta = torch.cat([theta, theta.new_zeros(a.shape[0], 3, 1)], dim=2)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _warp_plane(x: torch.Tensor, a: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """:func:`_warp` for a map that keeps the third axis: 2D ``a`` on the (cols, rows) plane.

    The kept axis is folded into the channels, so one 2D grid serves every slice (exactly
    the trilinear result, whose weight along the kept axis is 1, at a tenth of the cost).
    """
    keep = ({2, 3, 4} - {rows, cols}).pop()
    y = x.permute(0, 1, keep, rows, cols)
    shape = y.shape
    y = y.reshape(shape[0], shape[1] * shape[2], shape[3], shape[4])
    s = torch.tensor([shape[4] / 2.0, shape[3] / 2.0], dtype=a.dtype, device=a.device)
    theta = a * s[None, None, :] / s[None, :, None]
    theta = torch.cat([theta, theta.new_zeros(a.shape[0], 2, 1)], dim=2)
    grid = F.affine_grid(theta.to(x.dtype), list(y.shape), align_corners=False)
    y = F.grid_sample(y, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    inverse = [0, 1, 0, 0, 0]
    for i, dim in enumerate((keep, rows, cols), start=2):
        inverse[dim] = i
    return y.reshape(shape).permute(inverse).contiguous()


def _rotate(rows: int, cols: int, cols_to_rows: bool) -> Transform:
    """Rotation in the plane of tensor dims (rows, cols); positive angles turn +cols towards
    +rows if ``cols_to_rows`` else +rows towards +cols."""

    def transform(x: torch.Tensor, m: Magnitude, p: Params) -> torch.Tensor:
        rad = torch.deg2rad(p["angle"].double())
        cos, sin = torch.cos(rad), torch.sin(rad)
        sin = sin if cols_to_rows else -sin
        # Sampling matrix R(angle)^T in (cols, rows) coordinates: output -> input.
        mat = torch.stack([torch.stack([cos, sin], 1), torch.stack([-sin, cos], 1)], 1)
        return _warp_plane(x, mat.float(), rows, cols)

    return transform


def _affine_scale(x: torch.Tensor, m: Magnitude, p: Params) -> torch.Tensor:
    # Trilinear weights factorise along axes and a zoom maps each axis on its own, so an
    # in-slice bilinear zoom then a zoom along D equals the 3D warp, several times cheaper.
    inv = 1.0 / p["scale"].float()
    one = torch.ones_like(inv)
    y = _warp_plane(x, torch.diag_embed(torch.stack([inv, inv], 1)), 3, 4)
    return _warp_plane(y, torch.diag_embed(torch.stack([one, inv], 1)), 2, 4)


def _affine_ratio(x: torch.Tensor, m: Magnitude, p: Params) -> torch.Tensor:
    root = torch.sqrt(p["ratio"].float())  # content: H stretched by root, W by 1 / root
    return _warp_plane(x, torch.diag_embed(torch.stack([root, 1.0 / root], 1)), 3, 4)


def _erase(x: torch.Tensor, m: Magnitude, p: Params) -> torch.Tensor:
    start, stop = p["start"], p["start"] + p["size"]
    inside = []
    for k, n in enumerate(x.shape[-3:]):
        idx = torch.arange(n, device=x.device)
        inside.append((idx >= start[:, k, None]) & (idx < stop[:, k, None]))
    mask = (
        inside[0][:, None, :, None, None]
        & inside[1][:, None, None, :, None]
        & inside[2][:, None, None, None, :]
    )
    return x.masked_fill(mask, 0.0)


def _blur(x: torch.Tensor, m: Magnitude, p: Params) -> torch.Tensor:
    k = int(m)
    # Odd k: the k-box. Even k: [1/2, 1, ..., 1, 1/2] / k (k + 1 taps, the mean of the two
    # half-voxel-shifted k-boxes), so the volume does not shift. Separable shifted sums.
    taps = [1.0 / k] * k if k % 2 else [0.5 / k] + [1.0 / k] * (k - 1) + [0.5 / k]
    y = F.pad(x, [(len(taps) - 1) // 2] * 6, mode="replicate")
    for dim in (2, 3, 4):
        n = y.shape[dim] - len(taps) + 1
        y = sum(w * y.narrow(dim, i, n) for i, w in enumerate(taps))
    return y


def _invert(x: torch.Tensor, m: Magnitude, p: Params) -> torch.Tensor:
    return m - x


def _jitter(x: torch.Tensor, m: Magnitude, p: Params) -> torch.Tensor:
    y = (x * _per_sample(p["brightness"], x)).clamp(0.0, 1.0)
    mean = y.mean(dim=(1, 2, 3, 4), keepdim=True)
    gamma = _per_sample(p["contrast"], x)
    return (gamma * y + (1.0 - gamma) * mean).clamp(0.0, 1.0)


# ---- the table --------------------------------------------------------------------------


def _check_batch(x: torch.Tensor) -> None:
    if x.dim() != 5 or not x.is_floating_point():
        raise ValueError(f"expected a float (B, C, D, H, W) batch, got {x.dtype} {tuple(x.shape)}")


def _check_p(p: float) -> float:
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"probability must be in [0, 1], got {p}")
    return p


@dataclass(frozen=True)
class AugType:
    """One augmentation type of MedPipe Table I.

    Args:
        name: registry key, e.g. ``"rotate_d"``.
        magnitudes: candidate magnitudes (hashable, JSON-able; pairs are ``(LB, RB)``).
        sampler: draws the parameters of ``n`` applied scans.
        transform: applies the op to the applied scans, given their parameters.
    """

    name: str
    magnitudes: tuple
    sampler: Sampler = field(repr=False, compare=False)
    transform: Transform = field(repr=False, compare=False)

    def sample_params(
        self,
        shape: Sequence[int],
        magnitude: Magnitude,
        p: float,
        generator: torch.Generator | None = None,
    ) -> Params:
        """Draw the coins and parameters for a batch of ``shape`` (on the generator's device).

        Returns ``{"applied": (B,) bool, ...}``; the other entries have one row per
        applied scan, in batch order (e.g. ``"angle"`` in degrees for rotations).
        """
        applied = _rand(int(shape[0]), generator) < _check_p(p)
        return {"applied": applied, **self.sampler(int(applied.sum()), shape, magnitude, generator)}

    def apply_params(self, x: torch.Tensor, magnitude: Magnitude, params: Params) -> torch.Tensor:
        """Apply the op with parameters from :meth:`sample_params`."""
        _check_batch(x)
        applied = params["applied"]
        n = int(applied.sum())
        if n == 0:
            return x
        rest = {k: v.to(x.device) for k, v in params.items() if k != "applied"}
        if n == x.shape[0]:
            y = self.transform(x, magnitude, rest)
        else:
            idx = applied.nonzero()[:, 0].to(x.device)
            y = x.index_put((idx,), self.transform(x[idx], magnitude, rest))
        if x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous():
            y = y.contiguous(memory_format=torch.channels_last_3d)
        return y.to(x.dtype)

    def apply(
        self,
        x: torch.Tensor,
        magnitude: Magnitude,
        p: float,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Apply the op to each scan of ``x`` with probability ``p``.

        ``magnitude`` need not be on the grid here (a :class:`Policy` checks that).
        """
        _check_batch(x)
        if _check_p(p) == 0.0:
            return x
        return self.apply_params(x, magnitude, self.sample_params(x.shape, magnitude, p, generator))


# Table I order.
AUG_TYPES: dict[str, AugType] = {
    t.name: t
    for t in (
        AugType("gaussian_noise", (NOISE_STD,), _sample_noise, _noise),
        AugType("flip_v", (None,), _no_params, _flip(-2)),
        AugType("flip_h", (None,), _no_params, _flip(-1)),
        AugType("flip_d", (None,), _no_params, _flip(-3)),
        AugType("rotate_v", _pairs(_ROT_LB, _ROT_RB), _sample_range("angle"), _rotate(2, 4, False)),
        AugType("rotate_h", _pairs(_ROT_LB, _ROT_RB), _sample_range("angle"), _rotate(2, 3, True)),
        AugType("rotate_d", _pairs(_ROT_LB, _ROT_RB), _sample_range("angle"), _rotate(3, 4, True)),
        AugType("erase", _pairs(_ERASE_LB, _ERASE_RB), _sample_erase, _erase),
        AugType("affine_ratio", _pairs(_UNIT_LB, _RATIO_RB), _sample_range("ratio"), _affine_ratio),
        AugType("affine_scale", _pairs(_UNIT_LB, _SCALE_RB), _sample_range("scale"), _affine_scale),
        AugType("blur", (2, 3, 5), _no_params, _blur),
        AugType("invert", (0.25, 0.5, 0.75, 1.0), _no_params, _invert),
        AugType("color_jitter", _pairs((0.3, 0.5), (0.5, 0.8)), _sample_jitter, _jitter),
    )
}


def candidates(
    type_name: str, probs: Sequence[float] = (0.0, 0.5, 0.8)
) -> list[tuple[Magnitude, float]]:
    """The (magnitude, p) candidates of one searchable augmentation layer.

    All ``p == 0`` candidates are the identity, so only one is kept (first, with the
    first grid magnitude) and the search does not split the identity across magnitudes.
    The rest follow in ``probs`` order, magnitudes in grid order.
    """
    if type_name not in AUG_TYPES:
        raise ValueError(f"unknown augmentation type {type_name!r}; known: {sorted(AUG_TYPES)}")
    grid = AUG_TYPES[type_name].magnitudes
    ps = [_check_p(p) for p in probs]
    out: list[tuple[Magnitude, float]] = [(grid[0], 0.0)] if 0.0 in ps else []
    for p in dict.fromkeys(q for q in ps if q > 0):
        out += [(m, p) for m in grid]
    return out


# ---- policies ---------------------------------------------------------------------------


class PolicyOp(NamedTuple):
    """One (type, magnitude, probability) triplet."""

    type: str
    magnitude: Magnitude
    p: float


def _tupled(v: Any) -> Any:
    return tuple(_tupled(e) for e in v) if isinstance(v, list | tuple) else v


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, tuple) or isinstance(b, tuple):
        return (
            isinstance(a, tuple)
            and isinstance(b, tuple)
            and len(a) == len(b)
            and all(_same(u, v) for u, v in zip(a, b, strict=True))
        )
    if a is None or b is None or isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if not isinstance(a, int | float) or not isinstance(b, int | float):
        return False
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _fmt(m: Magnitude) -> str:
    if m is None:
        return "-"
    if isinstance(m, tuple):
        return "(" + ", ".join(_fmt(v) for v in m) + ")"
    return f"{m:g}"


def _to_op(entry: Any, i: int, source: str) -> PolicyOp:
    where = f"{source}: entry {i} {entry!r}"
    if isinstance(entry, dict):
        if set(entry) != {"type", "magnitude", "p"}:
            raise ValueError(f"{where}: expected keys 'type', 'magnitude', 'p'")
        name, mag, p = entry["type"], entry["magnitude"], entry["p"]
    elif isinstance(entry, list | tuple) and len(entry) == 3:
        name, mag, p = entry
    else:
        raise ValueError(f"{where}: expected {{'type', 'magnitude', 'p'}} or a triplet")
    if name not in AUG_TYPES:
        raise ValueError(f"{where}: unknown type {name!r}; known: {', '.join(AUG_TYPES)}")
    grid = AUG_TYPES[name].magnitudes
    match = [g for g in grid if _same(_tupled(mag), g)]
    if not match:
        raise ValueError(f"{where}: magnitude {mag!r} not in the grid of {name}: {list(grid)}")
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p <= 1.0:
        raise ValueError(f"{where}: probability {p!r} must be a number in [0, 1]")
    return PolicyOp(name, match[0], float(p))


@dataclass(frozen=True)
class Policy:
    """A fixed augmentation policy: ops applied in order, each scan with its own coins.

    Args:
        ops: ``(type, magnitude, p)`` triplets or ``{"type", "magnitude", "p"}`` dicts;
            magnitudes must be on the type's grid, ``p`` in [0, 1] (any value, e.g. 0.9).
    """

    ops: tuple[PolicyOp, ...] = ()
    source: str = field(default="<policy>", compare=False, repr=False)

    def __post_init__(self) -> None:
        ops = tuple(_to_op(e, i, self.source) for i, e in enumerate(self.ops))
        object.__setattr__(self, "ops", ops)

    @classmethod
    def identity(cls) -> Policy:
        """The empty policy (returns its input)."""
        return cls(())

    def __len__(self) -> int:
        return len(self.ops)

    def __iter__(self) -> Iterator[PolicyOp]:
        return iter(self.ops)

    def apply(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Apply every op in order to the batch ``x`` (B, C, D, H, W)."""
        for op in self.ops:
            x = AUG_TYPES[op.type].apply(x, op.magnitude, op.p, generator)
        return x

    __call__ = apply

    def to_list(self) -> list[dict[str, Any]]:
        """Plain JSON-able data: ``[{"type", "magnitude", "p"}, ...]`` (pairs as lists)."""
        return [
            {
                "type": o.type,
                "magnitude": list(o.magnitude) if isinstance(o.magnitude, tuple) else o.magnitude,
                "p": o.p,
            }
            for o in self.ops
        ]

    def to_json(self, indent: int | None = None) -> str:
        """The policy as a JSON list of objects ``{"type", "magnitude", "p"}``."""
        return json.dumps(self.to_list(), indent=indent)

    @classmethod
    def from_json(cls, data: str | Iterable[Any], source: str = "<json>") -> Policy:
        """Build from a JSON string or the list :meth:`to_list` returns; ``ValueError`` if bad."""
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except json.JSONDecodeError as e:
                raise ValueError(f"{source}: not valid JSON: {e}") from e
        if not isinstance(data, list | tuple):
            raise ValueError(f"{source}: a policy must be a JSON list, got {type(data).__name__}")
        return cls(tuple(data), source=source)

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        """Read a policy JSON file; errors name the file and the bad entry."""
        path = Path(path)
        return cls.from_json(path.read_text(encoding="utf-8"), source=str(path))

    def save(self, path: str | Path) -> None:
        """Write the policy as an indented JSON list."""
        Path(path).write_text(self.to_json(indent=2) + "\n", encoding="utf-8")

    def describe(self) -> list[str]:
        """``"(type; magnitude; probability)"`` lines as in MedPipe Fig. 5, p == 0 omitted."""
        return [f"({o.type}; {_fmt(o.magnitude)}; {o.p:g})" for o in self.ops if o.p > 0]


# ---- timing (python -m volnas.data.augment) ---------------------------------------------


def _timing(shape: tuple[int, ...] = (8, 1, 16, 64, 64), repeats: int = 15) -> None:
    """Print the median one-thread CPU time of each op (p = 1) and of a small 3D net step."""
    import time

    from torch import nn

    torch.set_num_threads(1)  # CPU time of one thread is robust to other jobs on the machine

    def median_ms(fn: Callable[[], Any]) -> float:
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.thread_time()
            fn()
            times.append(time.thread_time() - t0)
        return sorted(times)[repeats // 2] * 1e3

    x = torch.rand(shape)
    g = torch.Generator().manual_seed(0)
    for t in AUG_TYPES.values():
        m = t.magnitudes[len(t.magnitudes) // 2]
        ms = median_ms(lambda t=t, m=m: t.apply(x, m, 1.0, g))
        print(f"{t.name:15s} {_fmt(m):14s} {ms:7.1f} ms")
    net = nn.Sequential(
        nn.Conv3d(1, 16, 3, stride=2, padding=1), nn.BatchNorm3d(16), nn.ReLU6(),
        nn.Conv3d(16, 32, 3, stride=2, padding=1), nn.BatchNorm3d(32), nn.ReLU6(),
        nn.Conv3d(32, 64, 3, stride=2, padding=1), nn.BatchNorm3d(64), nn.ReLU6(),
        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(64, 2),
    ).to(memory_format=torch.channels_last_3d)  # fmt: skip
    xc = x.contiguous(memory_format=torch.channels_last_3d)
    print(
        f"{'3-conv net forward+backward':30s} {median_ms(lambda: net(xc).sum().backward()):7.1f} ms"
    )


if __name__ == "__main__":
    _timing()
