"""Signal and noise of the architecture gradient of a trained supernet.

Why a differentiable search stays undecided can be measured: the logits move by what
their gradient keeps in sign, and a gradient whose mean is small against its spread moves
them by a random walk. This takes the supernet of a search run (its last checkpoint), draws
``--draws`` architecture steps as the search makes them (a batch of the architecture half,
one sampled path at temperature ``--tau``, the straight-through gradient of the loss) and
prints, per searchable layer, the largest |t| of a logit's mean gradient (|mean| / std x
sqrt(draws)) against what noise alone reaches (the 95 % quantile of the largest of the
layer's |t| under a zero mean, Bonferroni), and, for a layer with a signal, how many
steps a logit with that signal needs before its summed mean exceeds twice the noise of the
sum, (2 / SNR)^2. The cost penalty's gradient (``--target-params``) beside the loss
gradient's mean shows which of the two a search with a parameter target follows.
``--estimator score`` measures the REINFORCE alternative instead: ``--paths`` paths scored
on the same batch, leave-one-out baseline (``volnas.search.sampler.score_function_gradient``).

    python benchmarks/bench_arch_gradient.py --search-run RUN --data adrenalmnist3d.npz \
        [--draws 200] [--tau 0.5] [--target-params 3.0] [--estimator st|score --paths 4] \
        [--out arch_gradient.json]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from statistics import NormalDist

import torch
from rich.table import Table

from volnas.core.markup import make_console
from volnas.data.cache import StackCache
from volnas.data.dataset import ScanDataset, make_loader, open_source
from volnas.search.ranking import load_supernet
from volnas.search.run import load_saved_search_config
from volnas.search.sampler import score_function_gradient
from volnas.search.search import search_halves
from volnas.training.device import seed_everything


def gradient_stats(grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-coordinate mean and standard deviation of a (draws, n) stack of gradients."""
    return grads.mean(0), grads.std(0, unbiased=True).clamp_min(1e-12)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--search-run", type=Path, required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--tau", type=float, default=0.5)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--estimator", choices=("st", "score"), default="st",
                    help="st: the search's straight-through gradient, one path per draw; "
                         "score: REINFORCE over --paths paths on the same batch")
    ap.add_argument("--paths", type=int, default=4, help="paths per draw (score)")
    ap.add_argument("--target-params", type=float, default=None, help="millions; the penalty")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    console = make_console()
    seed_everything(args.seed)
    cfg = load_saved_search_config(args.search_run / "search_config.yaml")
    source = open_source(args.data)
    supernet = load_supernet(args.search_run / "search", cfg.space, len(source.class_names),
                             cfg.stride_budget, cfg.fit_input, cfg.stride_rule)
    _, arch_rows = search_halves(args.search_run / "search", source.split("train"), cfg.seed,
                                 write=False)
    scfg = cfg.search_train_config()
    ds = ScanDataset(arch_rows, source.class_names, scfg.preprocess, train=False,
                     cache=StackCache(scfg.preprocess, None), seed=args.seed)
    loader = make_loader(ds, args.batch_size, train=True, num_workers=0, seed=args.seed)
    supernet.train()
    supernet.alpha.tau = args.tau
    supernet.generator = torch.Generator().manual_seed(args.seed)
    params = supernet.arch_parameters()
    loss_fn = torch.nn.CrossEntropyLoss()
    rows: list[torch.Tensor] = []
    pen_rows: list[torch.Tensor] = []
    batches = iter(loader)
    with console.status("architecture gradients") as status:
        for d in range(args.draws):
            try:
                x, y = next(batches)
            except StopIteration:
                batches = iter(loader)
                x, y = next(batches)
            if args.estimator == "score":
                paths, losses = [], []
                with torch.no_grad():
                    for _ in range(args.paths):
                        paths.append(supernet.sample_path())
                        supernet.fixed_path = paths[-1]
                        losses.append(loss_fn(supernet(x), y))
                supernet.fixed_path = None
                g = score_function_gradient(params, paths, torch.stack(losses))
            else:
                loss = loss_fn(supernet(x), y)
                g = torch.autograd.grad(loss, params, allow_unused=True)
            rows.append(torch.cat([torch.zeros_like(p) if gi is None else gi
                                   for p, gi in zip(params, g, strict=True)]))
            status.update(f"architecture gradients {d + 1}/{args.draws}")
    if args.target_params is not None:
        pen = torch.log(supernet.expected_params() / (args.target_params * 1e6)) ** 2
        pg = torch.autograd.grad(pen, params, allow_unused=True)
        pen_rows.append(torch.cat([torch.zeros_like(p) if gi is None else gi
                                   for p, gi in zip(params, pg, strict=True)]))
    grads = torch.stack(rows)
    mean, std = gradient_stats(grads)
    snr = mean.abs() / std
    sizes = [p.numel() for p in params]
    names = supernet.alpha.names if hasattr(supernet.alpha, "names") else None
    how = (f"REINFORCE over {args.paths} paths" if args.estimator == "score"
           else "straight-through, 1 path")
    table = Table(title=f"architecture gradient ({how}), {args.draws} draws at tau {args.tau}, "
                        f"batch {args.batch_size}")
    for col in ("layer", "max |t|", "noise 95 %", "steps to decide", "|mean| loss",
                "std loss", "|penalty|"):
        table.add_column(col, justify="right")
    out_layers = []
    start = 0
    pen = pen_rows[0] if pen_rows else None
    root_n = math.sqrt(args.draws)
    for i, n in enumerate(sizes):
        sl = slice(start, start + n)
        start += n
        t_max = float(snr[sl].max()) * root_n
        null = NormalDist().inv_cdf(1 - 0.025 / n)
        signal = t_max > null
        steps = (2.0 * root_n / t_max) ** 2 if signal else math.inf
        m, s_ = float(mean[sl].abs().max()), float(std[sl].mean())
        p = float(pen[sl].abs().max()) if pen is not None else float("nan")
        label = str(names[i]) if names else f"layer {i + 1}"
        table.add_row(label, f"{t_max:.2f}", f"{null:.2f}",
                      f"{steps:,.0f}" if signal else "no signal", f"{m:.2e}", f"{s_:.2e}",
                      "-" if pen is None else f"{p:.2e}")
        out_layers.append({"layer": label, "max_abs_t": t_max, "null_95": null,
                           "signal": signal, "steps_to_decide": steps if signal else None,
                           "max_abs_mean": m, "mean_std": s_,
                           "max_abs_penalty": None if pen is None else p})
    console.print(table)
    with_signal = sum(r["signal"] for r in out_layers)
    console.print(f"{with_signal} of {len(out_layers)} layers have a logit whose mean gradient "
                  f"is above noise ({args.draws} draws; 5 % per layer, Bonferroni over its "
                  f"candidates; noise alone flags about 1 in 20 layers).")
    if pen is not None:
        ratio = float(torch.tensor([r["max_abs_penalty"] / max(r["max_abs_mean"], 1e-12)
                                    for r in out_layers]).median())
        console.print(f"cost penalty / loss gradient (largest |mean| per layer), median over "
                      f"layers: {ratio:.1f}x at expected {supernet.expected_params() / 1e6:.2f} M "
                      f"params against the target {args.target_params} M")
    if args.out is not None:
        args.out.write_text(json.dumps({"search_run": str(args.search_run), "draws": args.draws,
                                        "estimator": args.estimator, "paths": args.paths,
                                        "tau": args.tau, "batch_size": args.batch_size,
                                        "layers_with_signal": with_signal, "layers": out_layers}, indent=2))


if __name__ == "__main__":
    main()
