"""``volnas``: one command, a sub-command per stage of the pipeline.

data (synth, index) -> models -> train / cv / evaluate -> search / genotype -> export / ensemble / predict
-> explain -> benchmark; ``demo`` runs the main job on built-in data.
"""

from __future__ import annotations

import typer

from volnas.cli.data_cmds import data_app
from volnas.cli.demo import demo_cmd
from volnas.cli.deploy_cmds import benchmark_cmd, ensemble_cmd, export_cmd, predict_cmd
from volnas.cli.explain_cmd import explain_cmd
from volnas.cli.search_cmds import genotype_app, search_cmd
from volnas.cli.train_cmds import cv_cmd, evaluate_cmd, models_cmd, train_cmd

app = typer.Typer(
    help="Find, train and explain 3D CNNs that classify medical volumes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts show defaults as "[adam]"; no markup to parse
    add_completion=False,
)
app.add_typer(data_app, name="data")
app.command("models")(models_cmd)
app.command("train")(train_cmd)
app.command("cv")(cv_cmd)
app.command("evaluate")(evaluate_cmd)
app.command("search")(search_cmd)
app.add_typer(genotype_app, name="genotype")
app.command("export")(export_cmd)
app.command("ensemble")(ensemble_cmd)
app.command("predict")(predict_cmd)
app.command("explain")(explain_cmd)
app.command("benchmark")(benchmark_cmd)
app.command("demo")(demo_cmd)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
