"""Ranking quality of a supernet: Kendall's tau between inherited and stand-alone scores.

Takes the supernet of a search run (its last checkpoint; ``--search-run RUN``) or, without
one, runs a search into OUT/search first (``--search-epochs``; probe and retrain cut to one
epoch, they are not used here). Then draws ``--archs`` architectures uniformly (the random
search's draws: same stride budget), and for each computes

  inherited    the validation score with the supernet's weights, BatchNorm re-estimated on
               ``--bn-batches`` training batches for that architecture;
  stand-alone  the best validation score of the architecture trained alone from scratch for
               ``--epochs`` epochs (``run_training(test=False)``; OUT/standalone/NN, resumable).

Prints both per architecture and the tau (1: the supernet ranks as training alone does).

``--search-run`` may be an evolution run (its supernet trained on uniform paths, the one
evolution ranks with). ``--standalone-from RUN`` takes the architectures and stand-alone
scores from a random search RUN instead of drawing and training them: its probes are
exactly that (each draw trained alone for the run's ``probe_epochs``, best validation).

    python benchmarks/bench_ranking.py --data adrenalmnist3d.npz --out rank/ \
        [--search-run RUN] [--space covidnet3d-s] [--archs 10] [--epochs 10] [--seed 0] \
        [--slices 28 --size 28x28] [--standalone-from RANDOM_RUN]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from volnas.core.markup import make_console
from volnas.data.cache import StackCache
from volnas.data.dataset import ScanDataset, make_loader, open_source
from volnas.models.genotype import Genotype
from volnas.search.config import SearchConfig
from volnas.search.evolution import load_uniform_supernet
from volnas.search.random_search import draw_paths
from volnas.search.ranking import inherited_scores, kendall_tau, load_supernet
from volnas.search.run import (
    load_saved_search_config,
    load_search_config,
    retrain_config,
    run_search,
)
from volnas.search.supernet import SuperNet
from volnas.training.device import resolve_device, seed_everything
from volnas.training.metrics import select_metric
from volnas.training.run import run_training
from volnas.training.rundir import positive_of


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--search-run", type=Path, default=None, help="a search run folder")
    ap.add_argument("--space", default="covidnet3d-s")
    ap.add_argument("--search-epochs", type=int, default=10)
    ap.add_argument("--archs", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=10, help="stand-alone training epochs")
    ap.add_argument("--bn-batches", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--slices", type=int, default=None, help="slices per scan [volnas default]")
    ap.add_argument("--size", default=None, help="in-plane HxW, e.g. 28x28 [volnas default]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--standalone-from", type=Path, default=None,
                    help="a random search run: its probes are the architectures and their "
                    "stand-alone scores (nothing is trained here)")
    args = ap.parse_args()
    console = make_console()
    args.out.mkdir(parents=True, exist_ok=True)
    run = args.search_run
    if run is None:
        run = args.out / "search"
        cfg = load_search_config(None, {
            "data": args.data, "space": args.space, "search_epochs": args.search_epochs,
            "topk": 1, "probe_epochs": 1, "retrain_epochs": 1, "batch_size": args.batch_size,
            "seed": args.seed, "device": args.device, "slices": args.slices,
            "size": tuple(int(v) for v in args.size.split("x")) if args.size else None})
        if not (run / "result.json").exists():
            run_search(cfg, run, resume=(run / "search_config.yaml").exists(), console=console)
    cfg = load_saved_search_config(run / "search_config.yaml")
    cfg = cfg.model_copy(update={"data": args.data, "device": args.device})
    seed_everything(args.seed)
    source = open_source(cfg.data)
    k = len(source.class_names)
    if (run / "search" / "supernet" / "checkpoint").is_dir():  # an evolution run
        supernet = SuperNet(cfg.space, 1, k, stride_budget=cfg.stride_budget,
                            spatial=cfg.fit_input, stride_rule=cfg.stride_rule)
        load_uniform_supernet(run / "search" / "supernet", supernet)
    else:
        supernet = load_supernet(run / "search", cfg.space, k, cfg.stride_budget, cfg.fit_input,
                                 cfg.stride_rule)
    given = (standalone_of(args.standalone_from, cfg, k)
             if args.standalone_from else None)
    if given is not None:
        genos = [g for g, _ in given]
    else:
        genos = [supernet.genotype(p, input_shape=cfg.preprocess.input_shape)
                 for p in draw_paths(supernet, args.archs, args.seed + 1000)]

    # inherited: at the search's input (the supernet's weights were trained there)
    scfg = cfg.search_train_config()
    cache = StackCache(scfg.preprocess, None)

    def loader(split: str, train: bool):  # noqa: ANN202
        ds = ScanDataset(source.split(split), source.class_names, scfg.preprocess, train=train,
                         cache=cache, seed=args.seed)
        return make_loader(ds, args.batch_size, train=train, num_workers=0, seed=args.seed)

    device = resolve_device(args.device)
    inherited = inherited_scores(
        supernet.to(device), genos, loader("train", True), loader("val", False), cfg=scfg,
        class_names=source.class_names, positive_class=positive_of(cfg, source), device=device,
        run_dir=args.out, bn_batches=args.bn_batches)

    standalone = [rec for _, rec in given] if given is not None else []
    epochs = (load_saved_search_config(args.standalone_from / "search_config.yaml").probe_epochs
              if given is not None else args.epochs)
    for i, geno in enumerate(genos if given is None else [], start=1):
        d = args.out / "standalone" / f"{i:02d}"
        done = d / "standalone.json"
        if done.exists():
            standalone.append(json.loads(done.read_text()))
            continue
        d.mkdir(parents=True, exist_ok=True)
        gfile = args.out / "standalone" / f"{i:02d}_genotype.json"
        geno.save(gfile)
        best = run_training(retrain_config(cfg, f"genotype:{gfile}", args.epochs), d,
                            resume=(d / "config.yaml").exists(), console=Console(quiet=True),
                            test=False)
        rec = {"genotype": geno.to_string(), "score": select_metric(best, cfg.select_metric),
               **{m: best.get(m) for m in ("accuracy", "f1", "auc", "loss")}}
        done.write_text(json.dumps(rec, indent=2))
        standalone.append(rec)

    a = [r["score"] for r in inherited]
    b = [r["score"] for r in standalone]
    tau = kendall_tau(a, b)
    t = Table(title=f"{len(genos)} architectures of {cfg.space}: validation {cfg.select_metric}")
    for col in ("#", "inherited", "stand-alone", "genotype"):
        t.add_column(col, justify="left" if col == "genotype" else "right")
    for i, (x, y, g) in enumerate(zip(a, b, genos, strict=True), start=1):
        t.add_row(str(i), f"{x:.4f}", f"{y:.4f}", str(g))
    console.print(t)
    console.print(f"Kendall tau (inherited vs stand-alone): {tau:.3f}")
    (args.out / "ranking.json").write_text(json.dumps(
        {"search_run": str(run), "tau": tau, "inherited": inherited, "standalone": standalone,
         "stand_alone_epochs": epochs, "standalone_from": str(args.standalone_from or ""),
         "bn_batches": args.bn_batches}, indent=2))


def standalone_of(run: Path, cfg: SearchConfig, k: int) -> list[tuple[Genotype, dict]]:
    """The probes of random search ``run`` as (genotype, stand-alone record); its space and
    fitted strides must be the supernet's."""
    theirs = load_saved_search_config(run / "search_config.yaml")
    if (theirs.space, theirs.fit_input, theirs.stride_rule) != (cfg.space, cfg.fit_input,
                                                                 cfg.stride_rule):
        raise SystemExit(f"{run}: space {theirs.space} fitted to {theirs.fit_input}, the "
                         f"supernet's is {cfg.space} fitted to {cfg.fit_input}")
    probes = json.loads((run / "result.json").read_text())["probes"]
    return [(Genotype.from_string(p["genotype"], num_classes=k,
                                  input_shape=cfg.preprocess.input_shape),
             {"genotype": p["genotype"], "score": p["probe_score"], **p["probe_val"]})
            for p in probes]


if __name__ == "__main__":
    main()
