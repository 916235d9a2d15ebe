"""``volnas`` command line: data -> models -> train -> evaluate (search and explain follow)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from volnas.data.volume import DataError
from volnas.markup import esc, print_error

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    help="Find, train and explain 3D CNNs that classify medical volumes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts show defaults as "[adam]"; no markup to parse
    add_completion=False,
)
data_app = typer.Typer(help="Synthesise, index and inspect scan datasets.", no_args_is_help=True,
                       rich_markup_mode=None)
app.add_typer(data_app, name="data")


def parse_shape(text: str, n: int, what: str) -> tuple[int, ...]:
    """'32x64x64' -> (32, 64, 64), checking the number of parts."""
    try:
        parts = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(
            f"{what} must look like {'x'.join(['N'] * n)}, got {text!r}") from None
    if len(parts) != n or min(parts) < 1:
        raise typer.BadParameter(f"{what} must have {n} positive parts, got {text!r}")
    return parts


def _fail(message: str, code: int = 2) -> None:
    print_error(err_console, message)
    raise typer.Exit(code)


# ---- data ---------------------------------------------------------------------------------


@data_app.command("synth")
def data_synth(
    out: Path = typer.Argument(..., help="Output folder (must not exist or be empty)."),
    scans: int = typer.Option(24, "--scans", "-n", min=2, help="Number of scans."),
    fmt: str = typer.Option("png", "--format", "-f", help="png | tiff | nifti | dicom | npz"),
    classes: int = typer.Option(2, "--classes", min=2, max=3, help="2 (normal/covid) or 3 (+cap)."),
    shape: str = typer.Option("32x64x64", "--shape", help="Nominal DxHxW of a scan."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    difficulty: str = typer.Option("realistic", "--difficulty",
                                   help="realistic (faint findings, distractors) | easy."),
) -> None:
    """Write synthetic chest-CT-like scans (HU) with lesion masks in a real on-disk layout."""
    from volnas.data.synth import synthesize

    if out.exists() and any(out.iterdir()):
        _fail(f"{out}: folder is not empty; refusing to overwrite")
    if fmt not in ("png", "tiff", "nifti", "dicom", "npz"):
        raise typer.BadParameter(f"unknown format {fmt!r}", param_hint="--format")
    if difficulty not in ("realistic", "easy"):
        raise typer.BadParameter(f"unknown difficulty {difficulty!r}", param_hint="--difficulty")
    res = synthesize(out, scans=scans, fmt=fmt, classes=classes,
                     shape=parse_shape(shape, 3, "--shape"), seed=seed, difficulty=difficulty)
    console.print(f"wrote {len(res.scans)} {fmt} scans of {len({s.patient_id for s in res.scans})} "
                  f"patients ({', '.join(res.class_names)}) to {esc(out)}")


@data_app.command("index")
def data_index(
    source: Path = typer.Argument(..., help="Dataset root folder or MedMNIST .npz file."),
    out: Path = typer.Option(..., "--out", "-o", help="Manifest CSV to write."),
    split: str = typer.Option("0.7,0.1,0.2", "--split", help="train,val,test fractions (by patient)."),
    seed: int = typer.Option(0, "--seed", help="Split seed."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable scans and list them."),
    class_map: str = typer.Option(None, "--class-map",
                                  help="Folder-to-class map, e.g. 'CT-0=normal,CT-1=covid'."),
    positive: str = typer.Option(None, "--positive", help="Positive class for binary metrics."),
) -> None:
    """Find every scan under SOURCE, split by patient (stratified), write a manifest."""
    from volnas.data.index import build_index, sidecar_paths, summary_table, write_manifest

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
        _fail(f"{out}: manifest already exists; refusing to overwrite")
    try:
        res = build_index(source, split=fractions, seed=seed, skip_bad=skip_bad,
                          class_map=cmap, positive_class=positive)
    except DataError as e:
        hint = "\n(pass --skip-bad to skip bad scans and list them)" if (
            e.bad_scan and not skip_bad) else ""
        _fail(str(e) + hint)
    except ValueError as e:  # e.g. $VOLNAS_MAX_VOXELS is not a number
        _fail(str(e))
    write_manifest(res, out)
    console.print(summary_table(res.rows))
    info_file, skipped_file = sidecar_paths(out)
    if res.skipped:
        console.print(f"[yellow]skipped {len(res.skipped)} bad scans[/] "
                      f"(listed in {esc(skipped_file)}):")
        for item in res.skipped[:20]:
            console.print(f"  {esc(item.path)}: {esc(item.reason)}", soft_wrap=True)
    console.print(f"manifest: {esc(out)} (classes and splits: {esc(info_file.name)})")


# ---- models -------------------------------------------------------------------------------


@app.command("models")
def models_cmd(
    input: str = typer.Option("1x32x128x128", "--input", help="Per-scan input CxDxHxW."),
    classes: int = typer.Option(3, "--classes", min=2, help="Number of classes."),
    pattern: str = typer.Option("*", "--filter", help="Glob over model names."),
    flops: bool = typer.Option(True, "--flops/--no-flops", help="Count FLOPs (slower)."),
) -> None:
    """List every registered model with parameters, size (MB) and FLOPs per scan."""
    from volnas.models.profile import count_flops, count_params, size_mb
    from volnas.models.registry import create_model, get_spec, list_models

    shape = parse_shape(input, 4, "--input")
    table = Table(title=f"models for input {input}, {classes} classes")
    for col in ("model", "family", "params", "size (MB)", "GFLOPs/scan", "description"):
        table.add_column(col, justify="right" if col in ("params", "size (MB)", "GFLOPs/scan") else "left")
    for name in list_models(pattern):
        spec = get_spec(name)
        m = create_model(name, in_channels=shape[0], num_classes=classes)
        gf = f"{count_flops(m, shape) / 1e9:.2f}" if flops else "-"
        table.add_row(name, spec.family, f"{count_params(m):,}", f"{size_mb(m):.2f}", gf,
                      spec.description)
    console.print(table)


# ---- training -----------------------------------------------------------------------------


@app.command("train")
def train_cmd(
    data: str = typer.Option(None, "--data", help="Manifest CSV or MedMNIST .npz."),
    model: str = typer.Option(None, "--model", help="Registry name (see `volnas models`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (never overwritten)."),
    epochs: int = typer.Option(None, "--epochs", help="Epochs [200]."),
    batch_size: int = typer.Option(None, "--batch-size", help="Batch size [8]."),
    slices: int = typer.Option(None, "--slices", help="Slices per scan T [32]."),
    size: str = typer.Option(None, "--size", help="In-plane HxW after resize/crop [128x128]."),
    lr: float = typer.Option(None, "--lr", help="Adam learning rate [1e-3]."),
    seed: int = typer.Option(None, "--seed", help="Seed [0]."),
    config: Path = typer.Option(None, "--config", help="YAML config; flags override it."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out."),
    device: str = typer.Option(None, "--device", help="auto | cpu | cuda[:N]."),
    workers: int = typer.Option(None, "--workers", help="Data loader worker processes [0]."),
    augment: str = typer.Option(None, "--augment", help="auto | none | flip | POLICY.json "
                                "[auto: a genotype's searched policy, else flip]."),
    sync_bn: bool = typer.Option(None, "--sync-bn/--no-sync-bn",
                                 help="Synchronised batch norm under torchrun (CUDA)."),
    class_weight: str = typer.Option(None, "--class-weight",
                                     help="none | balanced (loss weights n/(k*n_c)); default none."),
) -> None:
    """Train a model: validation every epoch, best checkpoint by validation, test once.

    --resume continues the run in --out with its saved configuration; only --device,
    --workers (and cache_dir) may be given with it, or --epochs to extend a finished run."""
    from volnas.training.config import load_config, merge_settings
    from volnas.training.run import RunDirError, run_training

    overrides = {
        "data": data, "model": model, "epochs": epochs, "batch_size": batch_size,
        "slices": slices, "size": parse_shape(size, 2, "--size") if size else None,
        "lr": lr, "seed": seed, "device": device, "num_workers": workers,
        "augment": augment, "sync_bn": sync_bn, "class_weight": class_weight,
    }
    try:
        cfg = load_config(config, overrides)
        if not cfg.data and not resume:
            raise typer.BadParameter("--data is required (or set `data:` in --config)")
        # what the user set (no defaults): a resume refuses those that change the run
        given = merge_settings(config, overrides) if resume else None
        metrics = run_training(cfg, out, resume=resume, given=given, console=console)
    except (DataError, RunDirError, ValueError, FileNotFoundError) as e:
        _fail(str(e))
    console.print(f"run folder: {esc(out)}  (metrics.json: acc {metrics['accuracy']:.4f}, "
                  f"f1 {metrics['f1']:.4f})")


@app.command("evaluate")
def evaluate_cmd(
    run_dir: Path = typer.Argument(..., help="A finished run folder."),
    data: str = typer.Option(None, "--data", help="Manifest/npz (default: the run's data)."),
    split: str = typer.Option("test", "--split", help="train | val | test."),
    out: Path = typer.Option(
        None, "--out", "-o", help="Evaluation folder, must not exist or be empty "
        "[next free RUN_DIR/evaluations/<data>-<split>-NNN]."),
) -> None:
    """Metrics of a run's best checkpoint on a split of any dataset, in a folder of their own.

    The run's own metrics.json and test predictions are never changed.
    """
    from volnas.training.run import RunDirError, evaluate_run

    try:
        metrics = evaluate_run(run_dir, data, split, console=console, out=out)
    except (DataError, RunDirError, ValueError, FileNotFoundError) as e:
        _fail(str(e))
    keys = ("n_scans", "accuracy", "precision", "sensitivity", "specificity", "f1", "auc")
    console.print(json.dumps({k: metrics.get(k) for k in keys}, indent=1), markup=False)
    console.print(f"evaluation: {esc(metrics['evaluation_dir'])}", soft_wrap=True)


# ---- search -------------------------------------------------------------------------------


@app.command("search")
def search_cmd(
    data: str = typer.Option(None, "--data", help="Manifest CSV or MedMNIST .npz."),
    space: str = typer.Option(None, "--space", help="covidnet3d-s | covidnet3d-l | medpipe."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (never overwritten)."),
    epochs: int = typer.Option(None, "--epochs", help="Search epochs [30]."),
    topk: int = typer.Option(None, "--topk", help="Architectures probed after the search [10]."),
    probe_epochs: int = typer.Option(None, "--probe-epochs", help="Epochs per probe [3]."),
    retrain_epochs: int = typer.Option(None, "--retrain-epochs", help="Final retrain epochs [200]."),
    batch_size: int = typer.Option(None, "--batch-size", help="Batch size [8]."),
    slices: int = typer.Option(None, "--slices", help="Retrain slices per scan [32]."),
    size: str = typer.Option(None, "--size", help="Retrain in-plane HxW [128x128]."),
    search_slices: int = typer.Option(None, "--search-slices", help="Search slices (reduced)."),
    search_size: str = typer.Option(None, "--search-size", help="Search HxW (reduced), e.g. 64x64."),
    arch_lr: float = typer.Option(None, "--arch-lr", help="Adam lr of the logits [1e-3]."),
    weight_optimizer: str = typer.Option(None, "--weight-optimizer", help="adam | sgd [adam]."),
    weight_lr: float = typer.Option(None, "--weight-lr", help="Supernet weight lr [3e-4]."),
    tau_start: float = typer.Option(None, "--tau-start", help="Initial Gumbel temperature [5]."),
    tau_end: float = typer.Option(None, "--tau-end", help="Final Gumbel temperature [0.5]."),
    target_params: float = typer.Option(None, "--target-params",
                                        help="Steer towards this many million parameters."),
    cost_weight: float = typer.Option(None, "--cost-weight",
                                      help="Weight of the expected-parameter cost [0, off]."),
    augment_search: str = typer.Option(
        None, "--augment-search",
        help="joint | only | off | decoupled [joint for medpipe, off otherwise]."),
    objective: str = typer.Option(
        None, "--objective", help="paper (augmented arch batch) | unrolled (clean, one-step "
        "unrolled gradient for the augmentation logits) [paper]."),
    aug_prior: str = typer.Option(
        None, "--aug-prior", help="Start of the augmentation logits: probability (each of "
        "p 0, 0.5, 0.8 a third; an undecided layer exports no augmentation) | candidates "
        "(every candidate equal; the identity gets 1/(2M+1)) [probability]."),
    fixed_genotype: str = typer.Option(None, "--fixed-genotype",
                                       help="Network for --augment-search only."),
    seed: int = typer.Option(None, "--seed", help="Seed [0]."),
    config: Path = typer.Option(None, "--config", help="YAML config; flags override it."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted search in --out."),
    device: str = typer.Option(None, "--device", help="auto | cpu | cuda[:N]."),
    class_weight: str = typer.Option(None, "--class-weight",
                                     help="none | balanced (loss weights n/(k*n_c)); default none."),
) -> None:
    """Differentiable single-path search, then probe the top-k, retrain the best, test once.

    --resume continues the search in --out with its saved configuration; only --device
    (and cache_dir, num_workers in --config) may be given with it."""
    from volnas.search.run import load_search_config, run_search
    from volnas.training.config import merge_settings
    from volnas.training.run import RunDirError

    overrides = {
        "data": data, "space": space, "search_epochs": epochs, "topk": topk,
        "probe_epochs": probe_epochs, "retrain_epochs": retrain_epochs, "batch_size": batch_size,
        "slices": slices, "size": parse_shape(size, 2, "--size") if size else None,
        "search_slices": search_slices,
        "search_size": parse_shape(search_size, 2, "--search-size") if search_size else None,
        "arch_lr": arch_lr, "weight_optimizer": weight_optimizer, "weight_lr": weight_lr,
        "tau_start": tau_start, "tau_end": tau_end, "target_params": target_params,
        "cost_weight": cost_weight, "seed": seed, "device": device,
        "augment_search": augment_search, "objective": objective, "aug_prior": aug_prior,
        "fixed_genotype": fixed_genotype, "class_weight": class_weight,
    }
    try:
        cfg = load_search_config(config, overrides)
        if not cfg.data and not resume:
            raise typer.BadParameter("--data is required (or set `data:` in --config)")
        given = merge_settings(config, overrides) if resume else None
        result = run_search(cfg, out, resume=resume, given=given, console=console)
    except (DataError, RunDirError, ValueError, FileNotFoundError, KeyError) as e:
        _fail(str(e))
    t = result["test"]
    console.print(f"searched {escape(result['genotype'])}\ntest: acc {t['accuracy']:.4f}, f1 {t['f1']:.4f}; "
                  f"run folder {esc(out)}")


genotype_app = typer.Typer(help="Inspect searched architectures.", no_args_is_help=True,
                           rich_markup_mode=None)
app.add_typer(genotype_app, name="genotype")


@genotype_app.command("show")
def genotype_show(
    file: Path = typer.Argument(..., help="A genotype JSON (genotype.json, genotypes/epoch_NNN.json)."),
    input: str = typer.Option(None, "--input", help="CxDxHxW for FLOPs [the genotype's]."),
) -> None:
    """Print the layer table of a genotype with parameters and FLOPs."""
    from volnas.models.genotype import Genotype
    from volnas.search.run import genotype_table

    try:
        geno = Genotype.load(file)
    except ValueError as e:
        _fail(str(e))
    console.print(genotype_table(geno, parse_shape(input, 4, "--input") if input else None))
    policy = geno.extra.get("augment_policy")
    if policy is not None:
        from volnas.data.augment import Policy

        lines = Policy.from_json(policy, source=str(file)).describe()
        console.print("augmentation policy (type; magnitude; probability):")
        for line in lines or ["identity (every type at probability 0)"]:
            console.print(f"  {escape(line)}")


# ---- demo ---------------------------------------------------------------------------------


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("volnas_demo"), "--out", help="Demo folder (a new run each time)."),
    epochs: int = typer.Option(10, "--epochs", help="Training (and retrain) epochs."),
    search: bool = typer.Option(True, "--search/--no-search", help="Include the architecture search."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Synthesise chest CT, train a baseline, search a compact net, explain both, compare."""
    from volnas.cli.demo import run_demo

    run_demo(out, epochs=epochs, search=search, seed=seed, console=console)


def _register_stage_commands() -> None:
    from volnas.cli.deploy_cmds import register as register_deploy
    from volnas.cli.explain_cmd import register as register_explain

    register_explain(app)
    register_deploy(app)


_register_stage_commands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
