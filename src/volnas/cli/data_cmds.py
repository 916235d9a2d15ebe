"""``volnas data synth`` and ``volnas data index``."""

from __future__ import annotations

import warnings
from pathlib import Path

import typer

from volnas.cli.common import Difficulty, Format, console, err_console, fail, parse_shape
from volnas.core.markup import esc, print_warning
from volnas.data.volume import DataError, DataWarning

data_app = typer.Typer(help="Synthesise, index and inspect scan datasets.", no_args_is_help=True,
                       rich_markup_mode=None)


@data_app.command("synth")
def data_synth(
    out: Path = typer.Argument(..., help="Output folder (must not exist or be empty)."),
    scans: int = typer.Option(24, "--scans", "-n", min=2, help="Number of scans."),
    fmt: Format = typer.Option("png", "--format", "-f", help="On-disk layout."),
    classes: int = typer.Option(2, "--classes", min=2, max=3, help="2 (normal/covid) or 3 (+cap)."),
    shape: str = typer.Option("32x64x64", "--shape", help="Nominal DxHxW of a scan."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    difficulty: Difficulty = typer.Option(
        "realistic", "--difficulty", help="realistic: faint findings and distractors; easy: "
        "large, bright lesions."),
) -> None:
    """Write synthetic chest-CT-like scans (HU) with lesion masks in a real on-disk layout."""
    from volnas.data.synth import synthesize

    if out.exists() and any(out.iterdir()):
        fail(f"{out}: folder is not empty; refusing to overwrite")
    res = synthesize(out, scans=scans, fmt=fmt, classes=classes,
                     shape=parse_shape(shape, 3, "--shape"), seed=seed, difficulty=difficulty)
    console.print(f"wrote {len(res.scans)} {fmt} scans of {len({s.patient_id for s in res.scans})} "
                  f"patients ({esc(', '.join(res.class_names))}) to {esc(out)}")


@data_app.command("index")
def data_index(
    source: Path = typer.Argument(..., help="Dataset root folder or MedMNIST .npz file."),
    out: Path = typer.Option(..., "--out", "-o", help="Manifest CSV to write."),
    split: str = typer.Option(None, "--split", help="train,val,test fractions, by patient "
                              "[0.7,0.1,0.2; an npz keeps its official splits]."),
    seed: int = typer.Option(0, "--seed", help="Split seed."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable scans and list them."),
    class_map: str = typer.Option(None, "--class-map",
                                  help="Folder-to-class map, e.g. 'CT-0=normal,CT-1=covid'."),
    positive: str = typer.Option(None, "--positive", help="Positive class for binary metrics."),
) -> None:
    """Find every scan under SOURCE, split by patient (stratified), write a manifest."""
    from volnas.data.index import build_index
    from volnas.data.manifest import sidecar_paths, summary_table, write_manifest

    fractions = None
    if split is not None:
        try:
            fractions = tuple(float(f) for f in split.split(","))
        except ValueError:
            raise typer.BadParameter(f"--split must be three numbers, got {split!r}") from None
        if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
            raise typer.BadParameter("--split needs three non-negative fractions summing to 1")
    cmap = None
    if class_map:
        try:
            cmap = dict(kv.split("=", 1) for kv in class_map.split(","))
        except ValueError:
            raise typer.BadParameter(
                "--class-map must look like 'folder=class,folder=class'") from None
    if out.exists():
        fail(f"{out}: manifest already exists; refusing to overwrite")
    try:
        with warnings.catch_warnings(record=True) as caught:  # shown as warning lines below
            warnings.simplefilter("always", DataWarning)
            res = build_index(source, split=fractions, seed=seed, skip_bad=skip_bad,
                              class_map=cmap, positive_class=positive)
    except DataError as e:
        hint = "\n(pass --skip-bad to skip bad scans and list them)" if (
            e.bad_scan and not skip_bad) else ""
        fail(str(e) + hint)
    except ValueError as e:  # e.g. $VOLNAS_MAX_VOXELS is not a number
        fail(str(e))
    write_manifest(res, out)
    for w in caught:
        if issubclass(w.category, DataWarning):
            print_warning(err_console, w.message)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    for note in res.notes:
        console.print(f"note: {esc(note)}", soft_wrap=True)
    console.print(summary_table(res.rows))
    info_file, skipped_file = sidecar_paths(out)
    if res.skipped:
        console.print(f"[yellow]skipped {len(res.skipped)} bad scans[/] "
                      f"(listed in {esc(skipped_file)}):")
        for item in res.skipped[:20]:
            console.print(f"  {esc(item.path)}: {esc(item.reason)}", soft_wrap=True)
    console.print(f"manifest: {esc(out)} (classes and splits: {esc(info_file.name)})")
