"""``volnas explain``: class activation maps of a trained run on scans, on each scan's grid."""

from __future__ import annotations

from pathlib import Path

import typer

from volnas.cli.common import console, fail


def explain_cmd(
    run_dir: Path = typer.Argument(..., help="A finished training run folder, a bundle, or an "
                                   "ensemble bundle (the members' maps averaged)."),
    scans: list[str] = typer.Argument(
        ..., help="DICOM series folder, NIfTI file, slice folder, file.npz#split/i, "
        "or a manifest row MANIFEST.csv#scan_id."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (must not exist or be empty)."),
    method: str = typer.Option("cam", "--method", help="cam | gradcam | gradcampp."),
    cls: str = typer.Option(None, "--class", help="Class to explain [the predicted class]."),
    masks: Path = typer.Option(None, "--masks",
                               help="Folder with masks.csv (lesion masks): print the "
                               "pointing-game hit rate and energy in lesions."),
    layer: str = typer.Option(None, "--layer", help="Target layer (dotted module name)."),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Scans per forward pass."),
) -> None:
    """Explain a run's predictions: montage PNG, NIfTI heatmap on the scan's grid, JSON."""
    from volnas.data.volume import DataError
    from volnas.explain.api import OutputExistsError, explain_scans
    from volnas.explain.cam import METHODS, ExplainError

    if method not in METHODS:
        raise typer.BadParameter(f"unknown method {method!r}; choose {', '.join(METHODS)}",
                                 param_hint="--method")
    try:
        explain_scans(run_dir, list(scans), out, method=method, target_class=cls, masks=masks,
                      console=console, target_layer=layer, batch_size=batch_size)
    except (DataError, ExplainError, OutputExistsError, FileNotFoundError, ValueError) as e:
        fail(e)
