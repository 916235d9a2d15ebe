"""The command line end to end on tiny synthetic data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from volnas.cli.main import app

runner = CliRunner()


def invoke(*args: str) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_help_lists_every_command() -> None:
    out = invoke("--help")
    for cmd in ("data", "models", "train", "evaluate", "search", "genotype", "demo", "explain",
                "export", "predict", "benchmark"):
        assert cmd in out
    assert "--skip-bad" in invoke("data", "index", "--help")
    assert "--resume" in invoke("train", "--help")


def test_help_shows_bracketed_defaults() -> None:
    """Defaults written as "[adam]" are text, not markup that rich would swallow."""
    assert "<adam|sgd>" in invoke("search", "--help")
    assert "[the predicted class]" in invoke("explain", "--help")


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize(("cmd", "flag", "field"), [
    ("train", "--epochs", "epochs"), ("train", "--batch-size", "batch_size"),
    ("train", "--size", "size"), ("train", "--lr", "lr"), ("search", "--epochs", "search_epochs"),
    ("search", "--retrain-epochs", "retrain_epochs"), ("search", "--weight-lr", "weight_lr"),
    ("search", "--tau-start", "tau_start"), ("search", "--aug-prior", "aug_prior"),
])
def test_help_defaults_are_the_configs(cmd: str, flag: str, field: str, monkeypatch) -> None:
    """Help texts read their defaults from the config classes: change one, the help follows."""
    import importlib

    import volnas.cli.main
    from volnas.search.config import SearchConfig

    value = SearchConfig.model_fields[field].default if field in SearchConfig.model_fields \
        else getattr(SearchConfig().preprocess, field)
    shown = "x".join(map(str, value)) if isinstance(value, tuple) else str(value)
    help_text = _flat(invoke(cmd, "--help"))
    after_flag = help_text.split("Options:", 1)[1].split(flag + " <", 1)[1][:260]
    assert f"[{shown}]" in after_flag, (flag, after_flag)
    # a changed default shows in a freshly built CLI
    target = SearchConfig.model_fields[field] if field in SearchConfig.model_fields else None
    if target is not None and isinstance(value, int | float) and not isinstance(value, bool):
        from volnas.training.config import TrainConfig

        owners = [c for c in (TrainConfig, SearchConfig) if field in c.model_fields]
        for owner in owners:
            monkeypatch.setattr(owner.model_fields[field], "default", value * 3)
        for mod in ("volnas.cli.train_cmds", "volnas.cli.search_cmds", "volnas.cli.main"):
            importlib.reload(importlib.import_module(mod))
        try:
            fresh = CliRunner().invoke(volnas.cli.main.app, [cmd, "--help"]).output
            assert f"[{value * 3}]" in _flat(fresh).split("Options:", 1)[1].split(flag + " <", 1)[1][:260]
        finally:
            monkeypatch.undo()
            for mod in ("volnas.cli.train_cmds", "volnas.cli.search_cmds", "volnas.cli.main"):
                importlib.reload(importlib.import_module(mod))


def test_choices_are_validated_and_listed() -> None:
    for args, bad, choices in [
        (("search", "--data", "x.csv", "--out", "o"), ("--augment-search", "jiont"),
         ("off", "joint", "only", "decoupled")),
        (("data", "synth", "o"), ("--format", "jpeg"), ("png", "tiff", "nifti", "dicom", "npz")),
        (("train", "--data", "x.csv", "--out", "o"), ("--class-weight", "auto"),
         ("none", "balanced")),
        (("evaluate", "run"), ("--split", "validation"), ("train", "val", "test")),
    ]:
        result = runner.invoke(app, [*args, *bad])
        assert result.exit_code == 2, result.output
        text = _flat(result.output)
        assert bad[1] in text and all(repr(c) in text for c in choices), text


def test_models_lists_sizes() -> None:
    out = invoke("models", "--input", "1x8x32x32", "--classes", "3", "--filter", "resnet3d_1*",
                 "--no-flops")
    assert "resnet3d_18" in out and "resnet3d_101" in out


def test_output_to_a_pipe_is_never_cut_at_80_columns(tmp_path: Path) -> None:
    """In a log or pipe (not a terminal) tables and lines keep their full width."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    done = subprocess.run([sys.executable, "-m", "volnas", "models", "--input", "1x8x32x32",
                           "--filter", "resnet3d_101", "--no-flops"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if "resnet3d_101" in line)
    from volnas.models.registry import get_spec

    assert get_spec("resnet3d_101").description in row  # the whole row on one line
    from volnas.core.markup import make_console

    line = "epoch   1/200  lr 1.00e-03  train loss 0.6931 " * 4
    with open(tmp_path / "log.txt", "w") as f:
        console = make_console()
        console.file = f
        console.print(line)
        console.rule("stage")
    printed = (tmp_path / "log.txt").read_text().splitlines()
    assert printed[0].rstrip() == line.rstrip() and len(printed[1]) == 80
    # a progress bar writes nothing into a log (no blank line between epoch lines)
    from volnas.training.trainer import make_progress

    with open(tmp_path / "log2.txt", "w") as f:
        console = make_console()
        console.file = f
        for epoch in (1, 2):
            with make_progress(console) as progress:
                task = progress.add_task(f"epoch {epoch}", total=2, info="")
                progress.update(task, advance=2)
            console.print(f"epoch {epoch} done")
    assert (tmp_path / "log2.txt").read_text() == "epoch 1 done\nepoch 2 done\n"


@pytest.mark.slow
def test_synth_index_train_evaluate_search(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VOLNAS_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "dicom"
    invoke("data", "synth", data, "--scans", "16", "--format", "dicom", "--shape", "10x24x24",
           "--seed", "2")
    manifest = tmp_path / "m.csv"
    out = invoke("data", "index", data, "--out", manifest, "--split", "0.5,0.25,0.25")
    assert "train" in out and manifest.exists()
    rows = list(csv.DictReader(manifest.open()))
    assert len(rows) == 16
    # patients never straddle splits
    split_of: dict[str, set[str]] = {}
    for r in rows:
        split_of.setdefault(r["patient_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in split_of.values())

    # refuse to overwrite a manifest
    res = runner.invoke(app, ["data", "index", str(data), "--out", str(manifest)])
    assert res.exit_code != 0 and "refusing to overwrite" in res.output

    run = tmp_path / "search"
    out = invoke("search", "--data", manifest, "--space", "medpipe", "--out", run, "--epochs",
                 "2", "--topk", "2", "--probe-epochs", "1", "--retrain-epochs", "1", "--slices",
                 "8", "--size", "24x24", "--search-size", "16x16", "--batch-size", "4")
    # two epochs at the papers' logit step leave both distributions near uniform: said so
    assert "warning: the search has not decided: architecture entropy" in " ".join(out.split())
    log = list(csv.DictReader((run / "search" / "search_log.csv").open()))
    assert [r["epoch"] for r in log] == ["1", "2"]
    assert len(list((run / "search" / "genotypes").glob("epoch_*.json"))) == 2
    assert (run / "search" / "search_probs.png").stat().st_size > 1000
    result = json.loads((run / "result.json").read_text())
    metrics = json.loads((run / "final" / "metrics.json").read_text())
    assert result["test"]["accuracy"] == metrics["accuracy"]
    assert 1 <= len(result["probes"]) <= 2

    show = invoke("genotype", "show", run / "genotype.json")
    assert "cell6.layer1" in show and "GFLOPs" in show

    # the searched net trains like any registry model
    train_dir = tmp_path / "train"
    invoke("train", "--data", manifest, "--model", f"genotype:{run / 'genotype.json'}",
           "--out", train_dir, "--epochs", "1", "--slices", "8", "--size", "24x24",
           "--batch-size", "4", "--operating-point", "sensitivity:1")
    assert json.loads((train_dir / "metrics.json").read_text())["n_scans"] == metrics["n_scans"]
    op = json.loads((train_dir / "calibration.json").read_text())["operating_point"]
    assert op["rule"] == "sensitivity:1" and op["sensitivity"] == 1.0
    out = invoke("evaluate", train_dir, "--split", "val")
    saved = json.loads((train_dir / "evaluations" / "m-val-001" / "metrics.json").read_text())
    assert saved["operating_point"]["sensitivity"] == 1.0  # the rule holds on the split it chose on
    assert f"P >= {op['threshold']:.3f}): sensitivity 1.0000" in " ".join(out.split())
    lo, hi = saved["ci"]["accuracy"]  # the printed table shows the value and its interval
    assert f"[{lo:.4f}, {hi:.4f}]" in out and f"{saved['accuracy']:.4f}" in out
    assert "temperature" in out and "ECE" in out
    assert "accuracy" in out and (train_dir / "evaluations" / "m-val-001" / "metrics.json").exists()

    # refuse to overwrite a run; a clear error for bad input
    res = runner.invoke(app, ["train", "--data", str(manifest), "--model", "mc3_18", "--out",
                              str(train_dir)])
    assert res.exit_code == 2 and "already holds a run" in res.output
    res = runner.invoke(app, ["train", "--data", str(tmp_path / "nope.csv"), "--model", "mc3_18",
                              "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "nope.csv" in res.output


def test_errors_print_file_names_and_messages_literally(tmp_path: Path) -> None:
    """Square brackets in paths, class names and pydantic messages are text, not markup."""
    from rich.console import Console

    from volnas.data.manifest import ManifestRow, summary_table

    def run(*args: object) -> str:
        res = runner.invoke(app, [str(a) for a in args])
        assert res.exit_code == 2, res.output
        return " ".join(res.output.split())

    manifest = tmp_path / "study[red]0003[covid].csv"
    manifest.write_text("x")
    out = run("data", "index", tmp_path, "--out", manifest)
    assert f"error: {manifest}: manifest already exists" in out

    config = tmp_path / "[covid]" / "cfg.yaml"
    config.parent.mkdir()
    config.write_text("epochs: many\n")
    out = run("train", "--config", config, "--data", "x.csv", "--out", tmp_path / "run")
    assert f"{config}: invalid configuration" in out
    assert "[type=int_parsing, input_value='many', input_type=str]" in out

    scan = tmp_path / "study[red]0003.nii.gz"
    out = run("explain", tmp_path / "no[covid]run", scan, "--out", tmp_path / "x")
    assert "study[red]0003.nii.gz" in out or "no[covid]run" in out
    out = run("evaluate", tmp_path / "no[covid]run")
    assert f"{tmp_path / 'no[covid]run'}: not a finished run folder" in out

    rows = [ManifestRow("a", "a.nii.gz", "nifti", "[covid]", "p1", 8, "train")]
    console = Console(record=True, width=200)
    console.print(summary_table(rows))
    assert "[covid]" in console.export_text()
