"""``volnas explain``: saliency maps of a trained run on scans, on each scan's grid."""

from __future__ import annotations

from pathlib import Path

import typer

from volnas.cli.common import console, fail
from volnas.explain.methods import DEFAULT_METHOD, METHODS


def _triple(text: str | None, name: str) -> tuple[int, int, int] | None:
    """``4,8,8`` or ``8`` -> (D, H, W); None stays None."""
    if text is None:
        return None
    try:
        parts = [int(p) for p in text.replace("x", ",").split(",") if p.strip()]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3 or min(parts) < 1:
        raise typer.BadParameter(f"{text!r}: give D,H,W (or one size), positive integers",
                                 param_hint=name)
    return parts[0], parts[1], parts[2]


def explain_cmd(
    run_dir: Path = typer.Argument(..., help="A finished training run folder, a bundle, or an "
                                   "ensemble bundle (the members' maps averaged)."),
    scans: list[str] = typer.Argument(
        ..., help="DICOM series folder, NIfTI file, slice folder, file.npz#split/i, "
        "or a manifest row MANIFEST.csv#scan_id."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (must not exist or be empty)."),
    method: str = typer.Option(DEFAULT_METHOD, "--method",
                               help=f"{' | '.join(METHODS)} (see docs/results/explanations.md)."),
    cls: str = typer.Option(None, "--class", help="Class to explain [the predicted class]."),
    masks: Path = typer.Option(None, "--masks",
                               help="Folder with masks.csv (lesion masks): print the "
                               "pointing-game hit rate, energy in lesions and the deletion AUC."),
    layer: str = typer.Option(None, "--layer", help="Target layer (dotted module name; "
                              "layercam-fused: comma-separated) of the CAM-family methods."),
    box: str = typer.Option(None, "--box", help="occlusion: box D,H,W in input voxels [4,8,8]."),
    stride: str = typer.Option(None, "--stride", help="occlusion: step D,H,W [half the box]."),
    samples: int = typer.Option(None, "--samples", min=1,
                                help="smoothgrad: noisy copies; intgrad: path steps [16]."),
    smooth: int = typer.Option(None, "--smooth", min=1,
                               help="smoothgrad, intgrad: odd cube size (voxels) the map is "
                               "averaged over [3]; 1: per voxel."),
    curves: bool = typer.Option(False, "--curves", help="Write each scan's deletion / "
                                "insertion curves (curves.png) and their AUCs."),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Scans per forward pass."),
) -> None:
    """Explain a run's predictions: montage PNG, NIfTI heatmap on the scan's grid, JSON."""
    from volnas.data.volume import DataError
    from volnas.explain.api import OutputExistsError, explain_scans
    from volnas.explain.cam import ExplainError

    if method not in METHODS:
        raise typer.BadParameter(f"unknown method {method!r}; choose {', '.join(METHODS)}",
                                 param_hint="--method")
    options = {"box": _triple(box, "--box"), "stride": _triple(stride, "--stride"),
               "samples": samples, "smooth": smooth}
    try:
        explain_scans(run_dir, list(scans), out, method=method, target_class=cls, masks=masks,
                      console=console, target_layer=layer, batch_size=batch_size,
                      options={k: v for k, v in options.items() if v is not None},
                      curves=curves)
    except (DataError, ExplainError, OutputExistsError, FileNotFoundError, ValueError) as e:
        fail(e)
