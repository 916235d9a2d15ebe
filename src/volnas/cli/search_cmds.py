"""``volnas search`` and ``volnas genotype show``."""

from __future__ import annotations

from pathlib import Path

import typer

from volnas.cli.common import (
    AugmentSearch,
    AugPrior,
    ClassWeight,
    Objective,
    Strategy,
    TTAChoice,
    WeightOptimizer,
    console,
    default,
    duration_option,
    fail,
    optional_shape,
    start_run,
)
from volnas.core.distributed import info as dist_info
from volnas.core.markup import esc
from volnas.search.config import SearchConfig

genotype_app = typer.Typer(help="Inspect searched architectures.", no_args_is_help=True,
                           rich_markup_mode=None)


def search_cmd(
    data: str = typer.Option(None, "--data", help="Manifest CSV or MedMNIST .npz."),
    space: str = typer.Option(None, "--space", help="covidnet3d-s | covidnet3d-l | medpipe "
                              f"{default('space')}."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (never overwritten)."),
    strategy: Strategy = typer.Option(
        None, "--strategy", help="differentiable: the supernet search; random: probe --samples "
        "architectures drawn uniformly (same cost filter), retrain the best: the baseline; "
        "evolution: a supernet trained on uniform paths, then NSGA-II over validation score "
        "and --costs. Default: random; differentiable when the augmentation policy is "
        "searched too (medpipe)."),
    generations: int = typer.Option(None, "--generations",
                                    help=f"Evolution generations {default('generations')}."),
    population: int = typer.Option(None, "--population",
                                   help=f"Evolution population {default('population')}."),
    costs: str = typer.Option(
        None, "--costs", help="Evolution objectives besides the validation score, comma "
        "separated: params, flops, latency (this machine's latency table) [params]."),
    pick: str = typer.Option(
        None, "--pick", help="Network taken from the evolution's front: best | "
        "'smallest-within 0.01' | 'fastest-within 0.01' (score tolerance) [best]."),
    front_topk: int = typer.Option(
        None, "--front-topk", help="Front networks retrained and tested besides the pick "
        f"(evolution) {default('front_topk')}."),
    baselines: str = typer.Option(
        None, "--baselines", help="Models drawn on pareto.png, comma separated, NAME or "
        "NAME=RUN_DIR (its validation score from RUN_DIR), e.g. resnet3d_18,mc3_18."),
    time_budget: str = typer.Option(
        None, "--time-budget", help="Wall-clock budget of the whole run, e.g. 45m, 90s, 2h "
        "(any strategy): split between stages, see search/budget.json."),
    samples: int = typer.Option(
        None, "--samples", help="Architectures a random search probes [about the "
        "differentiable search's cost: ceil(search epochs / probe epochs) + topk]."),
    epochs: int = typer.Option(None, "--epochs", help=f"Search epochs {default('search_epochs')}."),
    topk: int = typer.Option(None, "--topk",
                             help=f"Architectures probed after the search {default('topk')}."),
    probe_epochs: int = typer.Option(None, "--probe-epochs",
                                     help=f"Epochs per probe {default('probe_epochs')}."),
    retrain_epochs: int = typer.Option(None, "--retrain-epochs",
                                       help=f"Final retrain epochs {default('retrain_epochs')}."),
    batch_size: int = typer.Option(None, "--batch-size", help=f"Batch size {default('batch_size')}."),
    slices: int = typer.Option(None, "--slices",
                               help=f"Retrain slices per scan {default('slices')}."),
    size: str = typer.Option(None, "--size", help=f"Retrain in-plane HxW {default('size')}."),
    search_slices: int = typer.Option(None, "--search-slices",
                                      help="Search slices (reduced) [the retrain's]."),
    search_size: str = typer.Option(None, "--search-size",
                                    help="Search HxW (reduced), e.g. 64x64 [the retrain's]."),
    fit_strides: bool = typer.Option(
        None, "--fit-strides/--no-fit-strides", help="Drop a downsampling of the space along "
        "an axis where the search input's map would fall below 4 voxels, so small inputs "
        "(MedMNIST 28^3, few slices) leave no layer on a 1^3 or 2^3 map [fit]."),
    stride_rule: str = typer.Option(
        None, "--stride-rule", help="Which downsampling fitting drops first: end (the last "
        "ones) or cell1 (cell 1's, so it works on the stem's map; then the last ones) "
        f"{default('stride_rule')}."),
    arch_lr: float = typer.Option(
        None, "--arch-lr", help="Adam lr of the logits [arch_travel / the search's architecture "
        f"steps: a logit with a steady gradient moves ~{SearchConfig().arch_travel:g} over the "
        "search]."),
    warmup_epochs: int = typer.Option(
        None, "--warmup-epochs", help="Search epochs that train only the weights, on "
        "uniformly drawn paths, before the logits move [a third of --epochs]."),
    weight_optimizer: WeightOptimizer = typer.Option(
        None, "--weight-optimizer", help=f"Supernet weight optimiser {default('weight_optimizer')}."),
    weight_lr: float = typer.Option(None, "--weight-lr",
                                    help=f"Supernet weight lr {default('weight_lr')}."),
    tau_start: float = typer.Option(None, "--tau-start",
                                    help=f"Initial Gumbel temperature {default('tau_start')}."),
    tau_end: float = typer.Option(None, "--tau-end",
                                  help=f"Final Gumbel temperature {default('tau_end')}."),
    target_params: float = typer.Option(None, "--target-params",
                                        help="Steer towards this many million parameters."),
    cost_weight: float = typer.Option(
        None, "--cost-weight",
        help=f"Weight of the expected-parameter cost {default('cost_weight')} (0: off)."),
    augment_search: AugmentSearch = typer.Option(
        None, "--augment-search", help="Also search 3D augmentation [joint for medpipe, "
        "off otherwise]."),
    objective: Objective = typer.Option(
        None, "--objective", help="paper: augmented architecture batch; unrolled: clean batch, "
        f"one-step unrolled gradient for the augmentation logits {default('objective')}."),
    aug_prior: AugPrior = typer.Option(
        None, "--aug-prior", help="Start of the augmentation logits: probability (each of "
        "p 0, 0.5, 0.8 a third; an undecided layer exports no augmentation) | candidates "
        f"(every candidate equal; the identity gets 1/(2M+1)) {default('aug_prior')}."),
    fixed_genotype: str = typer.Option(None, "--fixed-genotype",
                                       help="Network for --augment-search only."),
    seed: int = typer.Option(None, "--seed", help=f"Seed {default('seed')}."),
    config: Path = typer.Option(None, "--config", help="YAML config; flags override it."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted search in --out."),
    device: str = typer.Option(None, "--device", help=f"auto | cpu | cuda[:N] {default('device')}."),
    class_weight: ClassWeight = typer.Option(
        None, "--class-weight", help=f"Loss weights; balanced: n/(k*n_c) {default('class_weight')}."),
    tta: TTAChoice = typer.Option(
        None, "--tta", help="Test-time augmentation of the retrained network: none | flips | auto "
        f"(flips only if better on validation) {default('tta')}."),
    operating_point: str = typer.Option(
        None, "--operating-point", help="Threshold on P(positive) chosen on validation for the "
        f"retrained network's test report: youden | sensitivity:S | specificity:S "
        f"{default('operating_point')}."),
    ensemble: int = typer.Option(
        None, "--ensemble", min=1, help="Retrain the K best probed architectures and evaluate "
        f"and export their ensemble (ensemble/evaluation, ensemble/bundle) {default('ensemble')}."),
) -> None:
    """Search (differentiable single-path, random, or evolution), retrain the best, test once.

    --resume continues the search in --out with its saved configuration; only --device
    (and cache_dir, num_workers in --config) may be given with it."""
    from volnas.search.run import run_search

    overrides = {
        "data": data, "space": space, "strategy": strategy, "random_samples": samples,
        "search_epochs": epochs, "topk": topk,
        "probe_epochs": probe_epochs, "retrain_epochs": retrain_epochs, "batch_size": batch_size,
        "slices": slices, "size": optional_shape(size, 2, "--size"),
        "search_slices": search_slices,
        "search_size": optional_shape(search_size, 2, "--search-size"), "fit_strides": fit_strides,
        "stride_rule": stride_rule,
        "arch_lr": arch_lr, "warmup_epochs": warmup_epochs, "weight_optimizer": weight_optimizer, "weight_lr": weight_lr,
        "tau_start": tau_start, "tau_end": tau_end, "target_params": target_params,
        "cost_weight": cost_weight, "seed": seed, "device": device,
        "augment_search": augment_search, "objective": objective, "aug_prior": aug_prior,
        "fixed_genotype": fixed_genotype, "class_weight": class_weight, "tta": tta,
        "operating_point": operating_point,
        "ensemble": ensemble, "generations": generations, "population": population,
        "costs": _csv_list(costs), "pick": pick, "front_topk": front_topk,
        "baselines": _csv_list(baselines), "time_budget": duration_option(time_budget),
    }
    result = start_run(run_search, SearchConfig, config, overrides, out, resume)
    t = result["test"]
    console.print(f"searched {esc(result['genotype'])}\ntest: acc {t['accuracy']:.4f}, "
                  f"f1 {t['f1']:.4f}; run folder {esc(out)}")
    if len(result.get("ensemble_members") or []) > 1 and dist_info().is_main:
        from volnas.deploy.bundle import BundleError
        from volnas.deploy.ensemble import search_ensemble

        try:
            e = search_ensemble(out, result, console=console)
        except (BundleError, ValueError, FileNotFoundError) as err:
            fail(err)
        assert e is not None
        auc = "n/a" if e.get("auc") is None else f"{e['auc']:.4f}"
        console.print(f"ensemble of {e['n_members']}: test acc {e['accuracy']:.4f}, f1 "
                      f"{e['f1']:.4f}, auc {auc}; {esc(e['evaluation_dir'])}, bundle "
                      f"{esc(e['bundle'])}", soft_wrap=True)


def _csv_list(text: str | None) -> list[str] | None:
    return None if text is None else [p.strip() for p in text.split(",") if p.strip()]


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
        fail(e)
    console.print(genotype_table(geno, optional_shape(input, 4, "--input")))
    policy = geno.extra.get("augment_policy")
    if policy is not None:
        from volnas.data.augment import Policy

        lines = Policy.from_json(policy, source=str(file)).describe()
        console.print("augmentation policy (type; magnitude; probability):")
        for line in lines or ["identity (every type at probability 0)"]:
            console.print(f"  {esc(line)}")
