"""The synthetic chest-CT phantom: one patient's anatomy, and scans of it with lesion masks.

The phantom is built in patient coordinates (mm, DICOM LPS: +x patient left, +y posterior,
+z superior) and sampled on the scan grid, so the scans of one patient share anatomy while
each has its own slice count, noise and findings. Arrays are float32 ``D x H x W`` in
Hounsfield units: D runs inferior -> superior, H anterior -> posterior, W right -> left
(radiological display: the patient's left on the image's right).

Classes: ``normal``, ``covid`` (1-4 peripheral, subpleural ground-glass opacities, some
small and faint) and, with ``classes=3``, ``cap`` (a lobar consolidation that stops at a
fissure). Every class may carry distractors (a small solid nodule, dependent atelectasis,
denser vessels, a lower inspiration level), so neither "mean lung density" nor "any bright
blob" separates the classes on its own.

The writers of every on-disk layout are in :mod:`volnas.data.synth`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

CLASS_NAMES: dict[int, tuple[str, ...]] = {
    2: ("normal", "covid"),
    3: ("normal", "covid", "cap"),
}
SCANNER_HU = (-1024.0, 3071.0)  # the range of values a scan holds
# realistic: faint and small findings plus distractors in every class (a hard task);
# easy: 3-5 larger, denser opacities and no distractors (learnable from ~100 scans in
# minutes on a CPU: the demo's data).
DIFFICULTIES = ("realistic", "easy")

_LUNG_SIDES = (-1.0, 1.0)  # -1: right lung (patient right = -x in LPS), +1: left lung


@dataclass(eq=False)
class Anatomy:
    """One patient's anatomy in mm (LPS); shared by all of that patient's scans."""

    fov: float  # in-plane field of view (square pixels: fov / W)
    z_start: float  # z of the lower edge of the scanned range
    coverage: float  # scanned length along z
    body_rx: float
    body_ry: float
    body_cy: float
    fat: float  # subcutaneous fat thickness
    lung_zb: float  # lung base (dome bottom) z
    lung_za: float  # apex z
    lung_cx: float  # |x| of lung centres
    lung_cy: float
    lung_rx: float
    lung_ry: float
    lung_tmax: float  # relative height of the widest section
    side_scale: np.ndarray  # (2,) right / left size factor
    wobble: np.ndarray  # (2 sides, 2 axes, 3: amplitude, frequency, phase)
    dome: np.ndarray  # (2,) relative height of the diaphragm dome per side
    spine_r: float
    rib_phase: float
    vessel_pts: np.ndarray = field(repr=False)  # (N, 3) z, y, x
    vessel_r: np.ndarray = field(repr=False)  # (N,) radius in mm

    @property
    def lung_height(self) -> float:
        return self.lung_za - self.lung_zb



# --------------------------------------------------------------------------- anatomy


def random_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one patient's anatomy (body and lung shape, vessel tree, spacing)."""
    body_rx = rng.uniform(135.0, 175.0)
    body_ry = body_rx * rng.uniform(0.62, 0.76)
    lung_h = rng.uniform(210.0, 280.0)
    margin_b = rng.uniform(0.04, 0.10) * lung_h
    margin_a = rng.uniform(0.04, 0.10) * lung_h
    z_start = rng.uniform(-350.0, -150.0)
    wobble = np.stack(
        [
            rng.uniform(0.0, 0.06, (2, 2)),
            rng.uniform(0.5, 2.0, (2, 2)),
            rng.uniform(0.0, 2 * np.pi, (2, 2)),
        ],
        axis=-1,
    )
    anat = Anatomy(
        fov=2 * body_rx * rng.uniform(1.08, 1.2),
        z_start=z_start,
        coverage=lung_h + margin_b + margin_a,
        body_rx=body_rx,
        body_ry=body_ry,
        body_cy=rng.uniform(-0.05, 0.05) * body_ry,
        fat=rng.uniform(6.0, 22.0),
        lung_zb=z_start + margin_b,
        lung_za=z_start + margin_b + lung_h,
        lung_cx=body_rx * rng.uniform(0.44, 0.49),
        lung_cy=body_ry * rng.uniform(-0.06, 0.02),
        lung_rx=body_rx * rng.uniform(0.31, 0.35),
        lung_ry=body_ry * rng.uniform(0.66, 0.72),
        lung_tmax=rng.uniform(0.25, 0.4),
        side_scale=np.array([rng.uniform(1.0, 1.06), rng.uniform(0.94, 1.0)]),
        wobble=wobble,
        dome=np.array([rng.uniform(0.16, 0.24), rng.uniform(0.12, 0.2)]),
        spine_r=body_rx * rng.uniform(0.09, 0.11),
        rib_phase=rng.uniform(0.0, 30.0),
        vessel_pts=np.zeros((0, 3)),
        vessel_r=np.zeros(0),
    )
    anat.vessel_pts, anat.vessel_r = _vessel_tree(rng, anat)
    return anat


def _lung_geom(anat: Anatomy, z: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per side (axis 0) and z (axis 1): centre x, centre y, semi-axes rx, ry, height t."""
    t = (np.asarray(z, dtype=np.float64) - anat.lung_zb) / anat.lung_height
    tm = anat.lung_tmax
    s = np.clip((t - tm) / (1 - tm), 0.0, 1.0)
    prof = np.where(t < tm, 1 - 0.12 * ((tm - t) / tm) ** 2, np.sqrt(np.clip(1 - s**2, 0, 1)))
    prof = np.where((t < 0) | (t > 1), 0.0, prof)
    w = anat.wobble
    mod = 1 + w[..., 0][..., None] * np.sin(
        2 * np.pi * w[..., 1][..., None] * t[None, None] + w[..., 2][..., None]
    )  # (2 sides, 2 axes, len(z))
    scale = anat.side_scale[:, None]
    rx = anat.lung_rx * scale * prof[None] * mod[:, 0]
    ry = anat.lung_ry * scale * (0.55 + 0.45 * prof[None]) * mod[:, 1] * (prof[None] > 0)
    sides = np.array(_LUNG_SIDES)[:, None]
    cx = sides * (anat.lung_cx + 0.08 * anat.lung_rx * (1 - prof[None]))
    cy = np.broadcast_to(anat.lung_cy + 0.1 * anat.lung_ry * (1 - prof[None]), rx.shape)
    return cx, cy, rx, ry, np.broadcast_to(t[None], rx.shape)


def _vessel_tree(rng: np.random.Generator, anat: Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """Branching vessel centre lines from each hilum, sampled every ~1.5 mm."""
    pts: list[np.ndarray] = []
    rads: list[np.ndarray] = []
    depth = int(rng.integers(5, 7))
    keep = rng.uniform(0.8, 1.0)
    r0 = rng.uniform(3.5, 5.5)
    z_h = anat.lung_zb + 0.5 * anat.lung_height
    cx, cy, rx, ry, _ = _lung_geom(anat, np.array([z_h]))
    for side, sgn in enumerate(_LUNG_SIDES):
        hilum = np.array([z_h, cy[side, 0], cx[side, 0] - sgn * 0.55 * rx[side, 0]])
        trunks = [(1.0, -0.1, 0.4), (0.1, 0.0, 1.0), (-0.8, 0.45, 0.35), (-0.7, -0.45, 0.35)]
        stack = []
        for dz, dy, dx in trunks:
            d = np.array([dz, dy, sgn * dx])
            stack.append((hilum, d / np.linalg.norm(d), 0.45 * anat.lung_ry, r0, 0))
        while stack:
            p, d, length, r, g = stack.pop()
            n = max(2, int(length / 1.5))
            seg = p + np.linspace(0, 1, n)[:, None] * (d * length)[None]
            pts.append(seg)
            rads.append(np.full(n, r))
            if g >= depth:
                continue
            for _ in range(2):
                if rng.random() > keep:
                    continue
                nd = d + rng.normal(0.0, 0.55, 3)
                nd /= np.linalg.norm(nd)
                stack.append((seg[-1], nd, length * 0.72, r * 0.72, g + 1))
    return np.concatenate(pts), np.concatenate(rads)


def scan_spacing(anat: Anatomy, shape: tuple[int, int, int]) -> tuple[float, float, float]:
    """Voxel size in mm along (D, H, W) for a scan of ``shape`` of this patient."""
    d, h, w = shape
    return anat.coverage / d, anat.fov / w, anat.fov / w


def scan_affine(anat: Anatomy, shape: tuple[int, int, int]) -> np.ndarray:
    """RAS voxel-to-world affine for ``array.transpose(2, 1, 0)`` (what DICOM geometry gives)."""
    x0, y0, z0 = scan_origin(anat, shape)
    dz, dy, dx = scan_spacing(anat, shape)
    return np.array(
        [[-dx, 0, 0, -x0], [0, -dy, 0, -y0], [0, 0, dz, z0], [0, 0, 0, 1]], dtype=np.float64
    )


def scan_origin(anat: Anatomy, shape: tuple[int, int, int]) -> tuple[float, float, float]:
    """LPS position of voxel (0, 0, 0) (first slice, first row, first column)."""
    d, h, w = shape
    dz, dy, dx = scan_spacing(anat, shape)
    return -(w - 1) / 2 * dx, -(h - 1) / 2 * dy, anat.z_start + dz / 2


# --------------------------------------------------------------------------- rendering


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _ellipsoid_dist(
    z: np.ndarray, y: np.ndarray, x: np.ndarray, c: np.ndarray, r: np.ndarray, angle: float
) -> np.ndarray:
    """Normalised distance to an ellipsoid centre (1 on its surface), rotated in-plane."""
    ca, sa = np.cos(angle), np.sin(angle)
    u = (x - c[2]) * ca + (y - c[1]) * sa
    v = -(x - c[2]) * sa + (y - c[1]) * ca
    return np.sqrt(((z - c[0]) / r[0]) ** 2 + (v / r[1]) ** 2 + (u / r[2]) ** 2)


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, ...], sigma: float | tuple[float, ...]
) -> np.ndarray:
    """Gaussian-filtered white noise scaled to unit standard deviation."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return f / (f.std() + 1e-6)


def render(
    rng: np.random.Generator, label: str, shape: tuple[int, int, int], anat: Anatomy,
    difficulty: str = "realistic",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (HU float32, lesion mask uint8, lung mask bool), all D x H x W."""
    if label not in CLASS_NAMES[3]:
        raise ValueError(f"unknown label {label!r}; expected one of {CLASS_NAMES[3]}")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"unknown difficulty {difficulty!r}; expected one of {DIFFICULTIES}")
    easy = difficulty == "easy"
    d, h, w = shape
    dz, dy, dx = scan_spacing(anat, shape)
    x0, y0, z0 = scan_origin(anat, shape)
    z1 = z0 + dz * np.arange(d)
    z = z1[:, None, None].astype(np.float32)
    y = (y0 + dy * np.arange(h))[None, :, None].astype(np.float32)
    x = (x0 + dx * np.arange(w))[None, None, :].astype(np.float32)

    # body: fat rim around soft tissue
    by = y - anat.body_cy
    r_body = (x / anat.body_rx) ** 2 + (by / anat.body_ry) ** 2
    r_in = (x / (anat.body_rx - anat.fat)) ** 2 + (by / (anat.body_ry - anat.fat)) ** 2
    hu2d = np.full((h, w), -1000.0, np.float32)
    hu2d[r_body[0] < 1] = -100.0
    hu2d[r_in[0] < 1] = 45.0
    table = (
        (by[0] > anat.body_ry + 12)
        & (by[0] < anat.body_ry + 17)
        & (np.abs(x[0]) < 0.9 * anat.fov / 2)
    )
    hu2d[table] = 150.0
    hu = np.broadcast_to(hu2d, shape).copy()

    # bones: vertebra (body, canal, spinous process), ribs
    sy = anat.lung_cy + 0.6 * anat.lung_ry
    rv = anat.spine_r
    r_vb = np.sqrt(x**2 + (y - sy) ** 2)
    disc = (np.mod(z - anat.z_start, 27.0) < 5.0).astype(np.float32)
    spine_hu = np.where(r_vb > rv - 3, 650.0, 260.0) * (1 - disc) + 90.0 * disc
    vb = r_vb < rv
    canal_y = sy + rv + 9
    r_canal = np.sqrt(x**2 + (y - canal_y) ** 2)
    arch = (r_canal < 13) & (r_canal > 8) & (y > canal_y - 4)
    spinous = (np.abs(x) < 4) & (y > canal_y) & (y < canal_y + 38)
    post = arch | (spinous & (r_in < 1.15))
    rho = np.sqrt(r_in)
    theta_post = by / np.maximum(np.sqrt(x**2 + by**2), 1e-3)  # +1 posterior, -1 anterior
    rib_z = np.mod(z - anat.rib_phase + 55 * (1 - theta_post), 30.0) < 8.0
    ribs = (rho > 0.91) & (rho < 0.985) & rib_z & (np.abs(x) > 25)
    hu = np.where(vb, spine_hu, hu)
    hu = np.where(post | ribs, 600.0, hu)
    hu = np.where(r_canal < 8, 15.0, hu).astype(np.float32)

    # lungs: tapered ellipses with diaphragm domes, minus mediastinum
    cx, cy, rx, ry, t = _lung_geom(anat, z1)
    heart_c = np.array(
        [anat.lung_zb + 0.22 * anat.lung_height, -0.3 * anat.body_ry, 0.12 * anat.body_rx]
    )
    heart_r = np.array([0.3 * anat.lung_height, 0.45 * anat.body_ry, 0.4 * anat.body_rx])
    heart_d = _ellipsoid_dist(z, y, x, heart_c, heart_r, 0.35)
    heart = heart_d < 1.0
    hu = np.where((heart_d > 1.0) & (heart_d < 1.1) & (r_in < 1), -80.0, hu).astype(np.float32)
    aorta = ((x - 0.22 * anat.body_rx) ** 2 + (y - sy + 0.3 * rv) ** 2 < 15.0**2) & (
        z < anat.lung_zb + 0.8 * anat.lung_height
    )
    medi = heart | aorta | (r_vb < rv + 6) | post | (ribs | (rho > 0.985))
    lung = np.zeros(shape, bool)
    r2_side = []
    for side in range(2):
        sl = (slice(None), None, None)
        rxs = np.maximum(rx[side][sl], 1e-3)
        rys = np.maximum(ry[side][sl], 1e-3)
        r2 = ((x - cx[side][sl]) / rxs) ** 2 + ((y - cy[side][sl]) / rys) ** 2
        r2_dome = ((x - cx[side][sl]) / rxs) ** 2 + ((y - cy[side][sl] + 0.25 * rys) / rys) ** 2
        dome = r2_dome > 1 - t[side][sl] / anat.dome[side]
        lung |= (r2 < 1) & dome & (rx[side][sl] > 1)
        r2_side.append(r2)
    lung &= ~medi
    trachea = (x**2 + (y - anat.lung_cy + 0.05 * anat.body_ry) ** 2 < 9.0**2) & (
        z > anat.lung_zb + 0.62 * anat.lung_height
    )
    lung &= ~trachea

    # lung parenchyma: inspiration level, gravity gradient, texture, vessels
    base = rng.uniform(-880.0, -815.0)
    grav = rng.uniform(5.0, 70.0) * np.clip((y - anat.lung_cy) / anat.lung_ry, -1, 1)
    texture = _smooth_noise(rng, shape, 1.0)
    vessel = _render_vessels(anat, shape, lung) * rng.uniform(0.8, 1.1)
    delta = vessel * (40.0 - base)  # HU added to the parenchyma, combined by max

    distract = np.zeros(shape, np.float32)
    if rng.random() < (0.0 if easy else 0.3):  # solid benign nodule(s)
        for _ in range(int(rng.integers(1, 3))):
            c = _random_lung_point(rng, lung, z1, y[0, :, 0], x[0, 0, :])
            if c is None:
                break
            r = np.full(3, rng.uniform(2.5, 6.0))
            dist = _ellipsoid_dist(z, y, x, c, r, 0.0)
            distract = np.maximum(distract, _sigmoid((1 - dist) / 0.08) * rng.uniform(600, 900))
    if rng.random() < (0.0 if easy else 0.3):  # dependent (posterior, basal) atelectasis
        top = rng.uniform(0.25, 0.6)
        thick = rng.uniform(4.0, 10.0)
        dens = rng.uniform(200.0, 500.0)
        for side in range(2):
            sl = (slice(None), None, None)
            rr = np.sqrt(r2_side[side])
            band = _sigmoid((rr - 1 + thick / anat.lung_ry) / 0.04)
            post_w = _sigmoid(((y - cy[side][sl]) / np.maximum(ry[side][sl], 1e-3) - 0.35) / 0.1)
            low = _sigmoid((top - t[side][sl]) / 0.05)
            band = band * post_w * low * (r2_side[side] < 1)
            distract = np.maximum(distract, (band * dens).astype(np.float32))
    delta = np.maximum(delta, distract)

    mask = np.zeros(shape, bool)
    margin = _smooth_noise(rng, shape, (7.0 / dz, 7.0 / dy, 7.0 / dx))  # irregular margins
    for _ in range(20):  # redraw until a finding is visible on this grid
        if label == "covid":
            les_delta, occ = _covid_lesions(rng, anat, z, y, x, margin, easy)
            mask = (occ > 0.5) & lung
            les_delta = les_delta * (1 + 0.15 * texture)
        elif label == "cap":
            cons, target = _cap_consolidation(rng, anat, z, y, x, cx, cy, rx, ry, t, lung, margin)
            mask = (cons > 0.5) & lung
            airway = np.clip(vessel * 1.6, 0, 1) * rng.uniform(0.4, 0.8)  # air bronchograms
            les_delta = cons * (target - base) * (1 - airway) * (1 + 0.08 * texture)
        if label == "normal" or mask.any():
            break
    else:
        raise RuntimeError(f"could not place a {label} lesion in a scan of shape {shape}")
    if label != "normal":
        delta = np.maximum(delta, les_delta)
    parenchyma = base + grav + 12.0 * texture + delta
    hu = np.where(lung, parenchyma, hu)
    hu = np.where(trachea, -990.0, hu)

    hu = ndimage.gaussian_filter(hu, (0.35, 0.6, 0.6))
    noise = _smooth_noise(rng, shape, 0.5) * rng.uniform(14.0, 26.0)
    hu = np.clip(hu + noise, *SCANNER_HU).astype(np.float32)  # scanner range
    return hu, mask.astype(np.uint8), lung


def _render_vessels(anat: Anatomy, shape: tuple[int, int, int], lung: np.ndarray) -> np.ndarray:
    """Vessel occupancy 0..1 (partial volume) from the centre lines, inside the lungs."""
    dz, dy, dx = scan_spacing(anat, shape)
    x0, y0, z0 = scan_origin(anat, shape)
    p = anat.vessel_pts
    idx = np.rint((p - np.array([z0, y0, x0])) / np.array([dz, dy, dx])).astype(np.int64)
    ok = np.all((idx >= 0) & (idx < np.array(shape)), axis=1)
    idx, rad = idx[ok], anat.vessel_r[ok]
    skel = np.zeros(shape, np.float32)
    np.maximum.at(skel, tuple(idx.T), rad.astype(np.float32))
    if not skel.any():
        return skel
    dist, inds = ndimage.distance_transform_edt(
        skel == 0, sampling=(dz, dy, dx), return_indices=True
    )
    r_near = skel[tuple(inds)]
    v = np.clip((r_near - dist) / dx + 0.5, 0, 1) * np.clip(2 * r_near / dx, 0, 1)
    return (v * lung).astype(np.float32)


def _random_lung_point(
    rng: np.random.Generator, lung: np.ndarray, z1: np.ndarray, y1: np.ndarray, x1: np.ndarray
) -> np.ndarray | None:
    idx = np.flatnonzero(lung)
    if idx.size == 0:
        return None
    k, i, j = np.unravel_index(rng.choice(idx), lung.shape)
    return np.array([z1[k], y1[i], x1[j]])


def _covid_lesions(
    rng: np.random.Generator,
    anat: Anatomy,
    z: np.ndarray,
    y: np.ndarray,
    x: np.ndarray,
    margin: np.ndarray,
    easy: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Contrast (HU above the parenchyma) and occupancy 0..1 of 1-4 subpleural GGOs
    (``easy``: 3-5 larger and denser ones)."""
    out = np.zeros(np.broadcast_shapes(z.shape, y.shape, x.shape), np.float32)
    occ = np.zeros_like(out)
    n = int(rng.integers(3, 6)) if easy else int(rng.choice([1, 2, 3, 4], p=[0.15, 0.3, 0.3, 0.25]))
    for _ in range(n):
        side = int(rng.integers(2))
        tz = rng.beta(1.6, 1.8) * 0.85 + 0.1  # lower and middle zones favoured
        zc = anat.lung_zb + tz * anat.lung_height
        cx, cy, rx, ry, _ = (a[side, 0] for a in _lung_geom(anat, np.array([zc])))
        if min(rx, ry) < 10:
            continue
        phi = rng.uniform(-1.2, 1.9)  # 0 = lateral, +pi/2 = posterior
        r = float(np.exp(rng.uniform(np.log(28.0 if easy else 10.0), np.log(50.0 if easy else 36.0))))
        r = min(r, 0.6 * min(rx, ry))  # stays peripheral where the lung section is small
        bp = np.array([cy + ry * np.sin(phi), cx + _LUNG_SIDES[side] * rx * np.cos(phi)])
        c_in = np.array([cy, cx])
        rho = np.linalg.norm(bp - c_in)
        lam = 1 - r * rng.uniform(0.2, 0.8) / rho
        cyx = c_in + lam * (bp - c_in)
        radii = r * rng.uniform(0.7, 1.3, 3)
        radii[0] *= 1.2
        dist = _ellipsoid_dist(z, y, x, np.array([zc, *cyx]), radii, rng.uniform(0, np.pi))
        dist = dist + 0.18 * np.tanh(margin)
        s = _sigmoid((1 - dist) / 0.08)
        target = rng.uniform(-350.0, -100.0) if easy else rng.uniform(-620.0, -250.0)
        contrast = (target + 850.0) * s
        if rng.random() < 0.2:  # denser core
            contrast = np.maximum(contrast, _sigmoid((0.5 - dist) / 0.08) * rng.uniform(500, 750))
        out = np.maximum(out, contrast.astype(np.float32))
        occ = np.maximum(occ, s.astype(np.float32))
    return out, occ


def _cap_consolidation(
    rng: np.random.Generator,
    anat: Anatomy,
    z: np.ndarray,
    y: np.ndarray,
    x: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    rx: np.ndarray,
    ry: np.ndarray,
    t: np.ndarray,
    lung: np.ndarray,
    margin: np.ndarray,
) -> tuple[np.ndarray, float]:
    """Occupancy 0..1 of a consolidation filling part of one lobe, and its target HU."""
    side = int(rng.integers(2))
    sl = (slice(None), None, None)
    yn = (y - cy[side][sl]) / np.maximum(ry[side][sl], 1e-3)  # -1 anterior .. +1 posterior
    ts = t[side][sl]
    fissure = 0.45 + 0.3 * yn  # oblique fissure: higher posteriorly
    in_side = np.sign(x) == np.sign(_LUNG_SIDES[side])
    lobe_pick = rng.choice(["lower", "upper", "middle"], p=[0.55, 0.3, 0.15])
    if lobe_pick == "lower":
        lobe = ts < fissure
    elif lobe_pick == "middle" and side == 0:
        lobe = (ts >= fissure) & (ts < 0.55)
    else:
        lobe = ts >= np.maximum(fissure, 0.55 if side == 0 else 0.0)
    region = lobe & in_side & lung
    if not region.any():
        region = lung
    if not region.any():
        return np.zeros(lung.shape, np.float32), 0.0
    zz, yy, xx = (np.broadcast_to(a, lung.shape)[region] for a in (z, y, x))
    k = rng.integers(zz.size)
    c = np.array([zz[k], yy[k], xx[k]])
    radii = rng.uniform(25.0, 60.0) * rng.uniform(0.8, 1.25, 3)
    dist = _ellipsoid_dist(z, y, x, c, radii, rng.uniform(0, np.pi)) + 0.12 * np.tanh(margin)
    occ = _sigmoid((1 - dist) / 0.08) * region  # stops sharply at the fissure
    return occ.astype(np.float32), float(rng.uniform(-150.0, 40.0))


def make_volume(
    rng: np.random.Generator,
    label: str,
    shape: tuple[int, int, int],
    anatomy: Anatomy | None = None,
    difficulty: str = "realistic",
) -> tuple[np.ndarray, np.ndarray]:
    """One scan: (HU float32 D x H x W, lesion mask uint8 D x H x W; empty for ``normal``).

    ``label`` is ``normal``, ``covid`` or ``cap``; without ``anatomy`` a new patient is drawn
    from ``rng``. Geometry of the result: ``scan_affine(anatomy, shape)``.
    """
    if anatomy is None:
        anatomy = random_anatomy(rng)
    hu, mask, _ = render(rng, label, tuple(int(s) for s in shape), anatomy, difficulty)
    return hu, mask

