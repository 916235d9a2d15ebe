"""3D augmentation ops (MedPipe Table I) and fixed policies."""

from __future__ import annotations

import json
import math

import pytest
import torch

from volnas.data.augment import AUG_TYPES, NOISE_STD, AugType, Policy, candidates

# (type, magnitude): first and last grid values of every type.
CASES = [
    (name, m)
    for name, t in AUG_TYPES.items()
    for m in dict.fromkeys([t.magnitudes[0], t.magnitudes[-1]])
    if not (name.startswith("rotate") and m == (0.0, 0.0))  # the identity rotation
]
CASES.append(("rotate_d", (-30.0, 30.0)))
IDS = [f"{n}-{m}" for n, m in CASES]
# tensor dims of the rotation plane: the positive angle turns +from towards +to
ROT_PLANE = {"rotate_d": (4, 3), "rotate_v": (2, 4), "rotate_h": (3, 2)}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def vol(b: int = 4, shape: tuple[int, ...] = (1, 8, 16, 16), seed: int = 0) -> torch.Tensor:
    return torch.rand((b, *shape), generator=gen(seed))


def changed(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x != y).flatten(1).any(1)


def test_registry_grids() -> None:
    assert list(AUG_TYPES) == [
        "gaussian_noise",
        "flip_v",
        "flip_h",
        "flip_d",
        "rotate_v",
        "rotate_h",
        "rotate_d",
        "erase",
        "affine_ratio",
        "affine_scale",
        "blur",
        "invert",
        "color_jitter",
    ]
    rot = AUG_TYPES["rotate_v"].magnitudes
    assert len(rot) == 25 and (-15.0, 30.0) in rot and (-15.0, 15.0) in rot
    assert all(-30 <= lo <= 0 <= hi <= 30 for lo, hi in rot)
    assert AUG_TYPES["blur"].magnitudes == (2, 3, 5)
    assert AUG_TYPES["invert"].magnitudes == (0.25, 0.5, 0.75, 1.0)
    assert AUG_TYPES["color_jitter"].magnitudes == ((0.3, 0.5), (0.3, 0.8), (0.5, 0.5), (0.5, 0.8))
    assert len(AUG_TYPES["erase"].magnitudes) == 25
    assert len(AUG_TYPES["affine_scale"].magnitudes) == 25
    assert all(lo <= hi for lo, hi in AUG_TYPES["affine_ratio"].magnitudes)
    for t in AUG_TYPES.values():
        hash(t.magnitudes)
        json.dumps(t.magnitudes)


@pytest.mark.parametrize("name,m", CASES, ids=IDS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last_3d", "float64"])
def test_shape_dtype_device_layout(name: str, m: object, layout: str) -> None:
    x = vol()
    if layout == "channels_last_3d":
        x = vol(shape=(2, 8, 16, 16)).contiguous(memory_format=torch.channels_last_3d)
    if layout == "float64":
        x = x.double()
    y = AUG_TYPES[name].apply(x, m, 1.0, gen())
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    if layout == "channels_last_3d":
        assert y.is_contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        assert AUG_TYPES[name].apply(x, m, 0.5, gen()).shape == x.shape


@pytest.mark.parametrize("name,m", CASES, ids=IDS)
def test_p0_identity_and_p1_changes(name: str, m: object) -> None:
    x = vol()
    assert torch.equal(AUG_TYPES[name].apply(x, m, 0.0, gen()), x)
    assert changed(x, AUG_TYPES[name].apply(x, m, 1.0, gen())).all()


@pytest.mark.parametrize("name,m", CASES, ids=IDS)
def test_gradient_reaches_input(name: str, m: object) -> None:
    x = vol().requires_grad_()
    AUG_TYPES[name].apply(x, m, 1.0, gen()).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name,m", CASES, ids=IDS)
def test_seeded_reproducible(name: str, m: object) -> None:
    t, x = AUG_TYPES[name], vol(16)
    a, b = t.apply(x, m, 0.5, gen(1)), t.apply(x, m, 0.5, gen(1))
    assert torch.equal(a, b)
    assert not torch.equal(a, t.apply(x, m, 0.5, gen(2)))


@pytest.mark.parametrize("name,m", CASES, ids=IDS)
def test_per_sample_coins(name: str, m: object) -> None:
    t = AUG_TYPES[name]
    x = vol(1).expand(64, -1, -1, -1, -1).contiguous()
    params = t.sample_params(x.shape, m, 0.5, gen(3))
    y = t.apply_params(x, m, params)
    assert torch.equal(changed(x, y), params["applied"])
    assert 15 <= int(params["applied"].sum()) <= 49
    assert torch.equal(y, t.apply(x, m, 0.5, gen(3)))


@pytest.mark.parametrize("name", ["rotate_v", "rotate_h", "rotate_d"])
@pytest.mark.parametrize("m", [(-30.0, 30.0), (-7.5, 22.5), (0.0, 0.0)])
def test_rotation_params_within_bounds(name: str, m: tuple[float, float]) -> None:
    angle = AUG_TYPES[name].sample_params((2000, 1, 4, 4, 4), m, 1.0, gen())["angle"]
    assert angle.min() >= m[0] and angle.max() <= m[1]
    assert angle.min() < m[0] + 0.5 and angle.max() > m[1] - 0.5  # uniform over [LB, RB]


def _line_angle(y: torch.Tensor, src: int, dst: int) -> torch.Tensor:
    """Per-sample angle (degrees) of the principal axis in the (src, dst) plane, from src."""
    w = y.clamp(min=0)[:, 0]
    grids = torch.meshgrid(*[torch.arange(n, dtype=w.dtype) for n in w.shape[1:]], indexing="ij")
    mass = w.sum((1, 2, 3))
    mean = [(w * g).sum((1, 2, 3)) / mass for g in grids]

    def cov(i: int, j: int) -> torch.Tensor:
        a, b = (
            grids[i - 2] - mean[i - 2][:, None, None, None],
            grids[j - 2] - mean[j - 2][:, None, None, None],
        )
        return (w * a * b).sum((1, 2, 3)) / mass

    return torch.rad2deg(0.5 * torch.atan2(2 * cov(src, dst), cov(src, src) - cov(dst, dst)))


@pytest.mark.parametrize("name", ["rotate_v", "rotate_h", "rotate_d"])
def test_rotated_line_angle_matches_and_never_exceeds_bound(name: str) -> None:
    src, dst = ROT_PLANE[name]
    x = torch.zeros(48, 1, 33, 33, 33)
    index = [slice(None), 0, 16, 16, 16]
    index[src] = slice(4, 29)  # a bright line along `src` through the centre
    x[tuple(index)] = 1.0
    t = AUG_TYPES[name]
    params = t.sample_params(x.shape, (-30.0, 30.0), 1.0, gen(5))
    measured = _line_angle(t.apply_params(x, (-30.0, 30.0), params), src, dst)
    assert torch.allclose(measured, params["angle"], atol=1.0)  # also checks the sign convention
    assert measured.abs().max() <= 30.0 + 1.0
    assert measured.abs().max() > 25.0


@pytest.mark.parametrize("name,dim", [("flip_v", -2), ("flip_h", -1), ("flip_d", -3)])
def test_flips_are_exact(name: str, dim: int) -> None:
    x = vol(6)
    params = AUG_TYPES[name].sample_params(x.shape, None, 0.5, gen())
    y = AUG_TYPES[name].apply_params(x, None, params)
    for i, flipped in enumerate(params["applied"].tolist()):
        assert torch.equal(y[i], x[i].flip(dim) if flipped else x[i])


def test_gaussian_noise_std_matches_magnitude() -> None:
    x = vol(4, (1, 16, 32, 32))
    for std in (NOISE_STD, 0.2):
        d = AUG_TYPES["gaussian_noise"].apply(x, std, 1.0, gen()) - x
        assert torch.allclose(d.flatten(1).std(1), torch.full((4,), std), rtol=0.1)
        assert d.mean().abs() < 0.1 * std


@pytest.mark.parametrize("m", [(0.02, 0.14), (0.1, 0.3)])
def test_erase_fills_one_cuboid_of_the_sampled_fraction(m: tuple[float, float]) -> None:
    x = torch.rand(32, 1, 16, 32, 32) + 1.0  # no zeros before erasing
    t = AUG_TYPES["erase"]
    params = t.sample_params(x.shape, m, 1.0, gen())
    y = t.apply_params(x, m, params)
    zero = y == 0
    assert torch.equal(y[~zero], x[~zero])
    frac = zero.flatten(1).float().mean(1)
    assert ((params["scale"] >= m[0]) & (params["scale"] <= m[1])).all()
    assert torch.allclose(frac, params["scale"], rtol=0.15)
    for z in zero[:, 0]:  # the zeros fill their bounding box: a cuboid
        nz = z.nonzero()
        box = (nz.max(0).values - nz.min(0).values + 1).prod()
        assert box == len(nz)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_blur_smooths_keeps_mean_and_does_not_shift(k: int) -> None:
    x = vol(2, (1, 16, 32, 32))
    y = AUG_TYPES["blur"].apply(x, k, 1.0, gen())

    def hf(v: torch.Tensor) -> torch.Tensor:
        return sum(v.diff(dim=d).square().sum() for d in (2, 3, 4))

    assert hf(y) < 0.5 * hf(x)
    assert (y.mean() - x.mean()).abs() < 2e-3
    const = torch.full((1, 1, 5, 6, 7), 0.3)
    assert torch.allclose(AUG_TYPES["blur"].apply(const, k, 1.0), const)
    delta = torch.zeros(1, 1, 17, 17, 17)
    delta[0, 0, 8, 8, 8] = 1.0
    blurred = AUG_TYPES["blur"].apply(delta, k, 1.0)[0, 0]
    assert torch.allclose(blurred, blurred.flip(0, 1, 2))  # centred even for even k
    assert torch.isclose(blurred.sum(), torch.tensor(1.0))


@pytest.mark.parametrize("v", [0.25, 1.0])
def test_invert(v: float) -> None:
    x = vol()
    assert torch.allclose(AUG_TYPES["invert"].apply(x, v, 1.0), v - x)


@pytest.mark.parametrize("m", [(0.3, 0.5), (0.5, 0.8)])
def test_color_jitter_mean_and_contrast(m: tuple[float, float]) -> None:
    x = 0.2 + 0.2 * vol(64, (1, 4, 8, 8))  # no clamping in this range
    t = AUG_TYPES["color_jitter"]
    params = t.sample_params(x.shape, m, 1.0, gen())
    y = t.apply_params(x, m, params)
    beta, gamma = params["brightness"], params["contrast"]
    assert ((beta >= 1 - m[0]) & (beta <= 1 + m[0])).all()
    assert ((gamma >= 1 - m[1]) & (gamma <= 1 + m[1])).all()
    assert beta.min() < 1 - 0.8 * m[0] and beta.max() > 1 + 0.8 * m[0]
    mean_ratio = y.flatten(1).mean(1) / x.flatten(1).mean(1)
    std_ratio = y.flatten(1).std(1) / x.flatten(1).std(1)
    assert torch.allclose(mean_ratio, beta, rtol=1e-4)
    assert torch.allclose(std_ratio, beta * gamma, rtol=1e-4)


def test_affine_scale_zooms_by_the_sampled_factor() -> None:
    x = torch.zeros(16, 1, 32, 32, 32)
    x[:, :, 12:20, 12:20, 12:20] = 1.0
    t = AUG_TYPES["affine_scale"]
    m = (0.6, 1.4)
    params = t.sample_params(x.shape, m, 1.0, gen())
    assert ((params["scale"] >= m[0]) & (params["scale"] <= m[1])).all()
    mass = t.apply_params(x, m, params).sum((1, 2, 3, 4)) / x.sum((1, 2, 3, 4))
    assert torch.allclose(mass, params["scale"] ** 3, rtol=0.1)


def test_affine_ratio_stretches_h_against_w() -> None:
    d = torch.arange(33.0) - 16
    r2 = d[:, None, None] ** 2 + d[None, :, None] ** 2 + d[None, None, :] ** 2
    x = torch.exp(-r2 / (2 * 3.0**2)).expand(16, 1, -1, -1, -1).contiguous()
    t = AUG_TYPES["affine_ratio"]
    m = (0.4, 2.325)
    params = t.sample_params(x.shape, m, 1.0, gen())
    y = t.apply_params(x, m, params)[:, 0]
    var_h = (y * d[None, None, :, None] ** 2).sum((1, 2, 3))
    var_w = (y * d[None, None, None, :] ** 2).sum((1, 2, 3))
    assert ((params["ratio"] >= m[0]) & (params["ratio"] <= m[1])).all()
    assert torch.allclose(var_h / var_w, params["ratio"] ** 2, rtol=0.05)


def test_candidates_keep_one_identity() -> None:
    for name, t in AUG_TYPES.items():
        c = candidates(name)
        assert len(c) == 1 + 2 * len(t.magnitudes) and len(set(c)) == len(c)
        assert [p for _, p in c].count(0.0) == 1 and c[0][1] == 0.0
    assert candidates("flip_v") == [(None, 0.0), (None, 0.5), (None, 0.8)]
    assert candidates("blur", probs=(0.5,)) == [(2, 0.5), (3, 0.5), (5, 0.5)]
    with pytest.raises(ValueError, match="unknown"):
        candidates("mixup")


FIG5 = [
    ("flip_v", None, 0.9),
    ("rotate_v", (-15.0, 15.0), 0.5),
    ("color_jitter", (0.5, 0.8), 0.9),
    ("erase", (0.1, 0.3), 0.9),
    ("blur", 3, 0.0),
    ("affine_scale", (0.8, 1.4), 0.9),
    ("gaussian_noise", NOISE_STD, 0.5),
]


def test_policy_json_round_trip(tmp_path) -> None:
    pol = Policy(FIG5)
    assert Policy.from_json(pol.to_json()) == pol
    assert json.loads(pol.to_json())[1] == {
        "type": "rotate_v",
        "magnitude": [-15.0, 15.0],
        "p": 0.5,
    }
    path = tmp_path / "policy.json"
    pol.save(path)
    assert Policy.load(path) == pol
    ints = Policy.from_json('[{"type": "rotate_d", "magnitude": [-15, 30], "p": 1}]')
    assert ints.ops[0].magnitude == (-15.0, 30.0) and isinstance(ints.ops[0].p, float)


def test_policy_describe_omits_p0() -> None:
    assert Policy(FIG5).describe() == [
        "(flip_v; -; 0.9)",
        "(rotate_v; (-15, 15); 0.5)",
        "(color_jitter; (0.5, 0.8); 0.9)",
        "(erase; (0.1, 0.3); 0.9)",
        "(affine_scale; (0.8, 1.4); 0.9)",
        "(gaussian_noise; 0.05; 0.5)",
    ]


@pytest.mark.parametrize(
    "entry,message",
    [
        ({"type": "mixup", "magnitude": None, "p": 0.5}, "unknown type 'mixup'"),
        ({"type": "rotate_v", "magnitude": [-10, 10], "p": 0.5}, "not in the grid"),
        ({"type": "blur", "magnitude": 4, "p": 0.5}, "not in the grid"),
        ({"type": "invert", "magnitude": True, "p": 0.5}, "not in the grid"),
        (
            {"type": "flip_h", "magnitude": None, "p": 1.5},
            r"probability 1.5 must be a number in \[0, 1\]",
        ),
        ({"type": "flip_h", "magnitude": None}, "expected keys"),
    ],
)
def test_policy_errors_name_file_and_entry(tmp_path, entry: dict, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"type": "flip_v", "magnitude": None, "p": 0.5}, entry]))
    with pytest.raises(ValueError, match=message) as err:
        Policy.load(path)
    assert str(path) in str(err.value) and "entry 1" in str(err.value)
    assert repr(entry["type"]) in str(err.value)


def test_policy_bad_json_names_file(tmp_path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("[{")
    with pytest.raises(ValueError, match="broken.json"):
        Policy.load(path)
    with pytest.raises(ValueError, match="list"):
        Policy.from_json('{"type": "flip_v"}')


def test_policy_apply_identity_and_reproducible() -> None:
    x = vol(8)
    assert Policy.identity().apply(x) is x
    pol = Policy(FIG5)
    a = pol.apply(x, gen(7))
    assert a.shape == x.shape and torch.equal(a, pol.apply(x, gen(7)))
    assert not torch.equal(a, x)


def test_bad_inputs() -> None:
    t: AugType = AUG_TYPES["flip_v"]
    with pytest.raises(ValueError, match="probability"):
        t.apply(vol(), None, 1.2)
    with pytest.raises(ValueError, match="float"):
        t.apply(torch.zeros(2, 8, 8, 8), None, 0.5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name,m", CASES, ids=IDS)
def test_cpu_and_cuda_agree(name: str, m: object) -> None:
    x = vol(8)
    cpu = AUG_TYPES[name].apply(x, m, 0.5, gen(11))
    cuda = AUG_TYPES[name].apply(x.cuda(), m, 0.5, gen(11))
    assert cuda.device.type == "cuda"
    assert torch.allclose(cpu, cuda.cpu(), atol=1e-4)
    assert math.isfinite(float(cuda.sum()))
