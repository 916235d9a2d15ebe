"""Search spaces as data: a small table, expanded into layer specs.

covidnet3d-s / -l (CovidNet3D): stem to 32 channels, 6 cells of [4, 4, 4, 4, 4, 1]
searchable layers, each cell led by a fixed calibration layer (stride 2 where the
resolution changes). medpipe (MedPipe): the stem and the 6 calibration layers choose their
stride from {1, 2}; channels [32, 48, 64, 96, 160, 320].
"""

from __future__ import annotations

from dataclasses import dataclass

from volnas.models.mbconv import MBCONV_CANDIDATES, STRIDE_CANDIDATES, LayerSpec


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


def layer_specs(space: str) -> list[LayerSpec]:
    """The ordered layers of a space: stem, then per cell a calibration and normal layers."""
    sd = get_space(space)
    specs: list[LayerSpec] = []

    def stride_choice(i: int) -> tuple[str, ...]:
        if sd.strides is None:
            return STRIDE_CANDIDATES
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
