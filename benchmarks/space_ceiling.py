"""Hand-picked members of each search space: what a space holds without any search.

Writes, for every space, genotype JSON files that ``volnas train --model genotype:FILE``
and ``volnas benchmark --models genotype:FILE,...`` take, and prints their sizes:

  all-k3e6      every searchable layer k3e6 (MobileNetV2's block everywhere)
  all-k5e4      every searchable layer k5e4
  mbv2-like     MobileNetV2's depths: cell c keeps depth[c] - 1 k3e6 layers (its calibration
                layer stands for the stage's first block) and skips the rest, with
                MobileNetV2's stage depths 2, 3, 4, 3, 3, 1 for the six cells

Where the space searches strides (medpipe) every member uses MedPipe's strides
[1, 2, 2, 2, 2, 2, 1]; fixed strides are fitted to --input as a search fits them (with the
search's --stride-rule). Retrained with the same recipe as a searched network, they give
the ceiling a search of the space is judged against:

    python benchmarks/space_ceiling.py --out ceiling/ [--classes 2] [--input 1x28x28x28] \
        [--stride-rule end|cell1]
    volnas benchmark --data D --models genotype:ceiling/covidnet3d-s-all-k3e6.json,... \
        --search covidnet3d-s,covidnet3d-s:random --out bench/
"""

from __future__ import annotations

import argparse
from pathlib import Path

from volnas.models.genotype import Genotype
from volnas.models.mbconv import STRIDE_CANDIDATES
from volnas.models.profile import count_params
from volnas.models.spaces import REFERENCE_STRIDES, SPACES, STRIDE_RULES, get_space, layer_specs

MBV2_DEPTHS = (2, 3, 4, 3, 3, 1)  # MobileNetV2's stages after the first (t=1) block


def _ops(space: str, normal: list[list[str]], spatial: tuple[int, ...] | None = None,
         rule: str = "end") -> list[str]:
    """Stem and calibration layers (fixed, fitted to ``spatial`` by ``rule`` if given, or
    MedPipe's strides), then ``normal[c]`` per cell."""
    strides = iter(REFERENCE_STRIDES)
    cells = iter(normal)
    ops: list[str] = []
    current: list[str] = []
    for spec in layer_specs(space, spatial, rule):
        if spec.kind in ("stem", "calib"):
            stride = next(strides)
            ops.append(f"conv_s{stride}" if spec.candidates == STRIDE_CANDIDATES
                       else spec.candidates[0])
            if spec.kind == "calib":
                current = list(next(cells))
        else:
            ops.append(current.pop(0))
    return ops


def hand_picked(space: str, num_classes: int = 2, input_shape: tuple[int, ...] | None = None,
                rule: str = "end") -> dict[str, Genotype]:
    """The hand-picked members of ``space`` by name (see the module docstring)."""
    layers = get_space(space).layers
    uniform = {op: [[op] * n for n in layers] for op in ("k3e6", "k5e4")}
    depths = MBV2_DEPTHS[:len(layers)]
    mbv2 = [["k3e6"] * min(d - 1, n) + ["skip"] * (n - min(d - 1, n))
            for d, n in zip(depths, layers, strict=True)]
    members = {"all-k3e6": uniform["k3e6"], "all-k5e4": uniform["k5e4"], "mbv2-like": mbv2}
    spatial = tuple(input_shape[1:]) if input_shape else None
    return {name: Genotype(space, _ops(space, normal, spatial, rule), num_classes, 1,
                           input_shape, {"hand_picked": name, "stride_rule": rule})
            for name, normal in members.items()}


def write_members(out: Path, spaces: list[str], num_classes: int = 2,
                  input_shape: tuple[int, ...] | None = None, rule: str = "end") -> dict[Path, int]:
    """Write every member as OUT/SPACE-NAME.json; returns each file's parameter count."""
    out.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for space in spaces:
        for name, geno in hand_picked(space, num_classes, input_shape, rule).items():
            path = out / f"{space}-{name}.json"
            geno.save(path)
            sizes[path] = count_params(geno.build())
    return sizes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for the genotype JSONs")
    ap.add_argument("--spaces", default=",".join(SPACES), help="comma-separated spaces")
    ap.add_argument("--classes", type=int, default=2, help="classes of the data")
    ap.add_argument("--input", default=None, help="CxDxHxW the retrain uses, e.g. 1x28x28x28")
    ap.add_argument("--stride-rule", default="end", choices=STRIDE_RULES,
                    help="how fixed strides are fitted to --input (as the search's --stride-rule)")
    args = ap.parse_args()
    shape = tuple(int(v) for v in args.input.split("x")) if args.input else None
    sizes = write_members(args.out, args.spaces.split(","), args.classes, shape, args.stride_rule)
    for path, n in sizes.items():
        print(f"{n / 1e6:8.3f} M params  {Genotype.load(path)}  {path}")
    print("models: " + ",".join(f"genotype:{p}" for p in sizes))


if __name__ == "__main__":
    main()
