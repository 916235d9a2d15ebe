"""Search-step cost: single-path supernet vs the derived net vs a DARTS-style mixture.

For several random paths of a space, measures in one run (channels_last_3d on CPU, bf16
autocast on CUDA):
  derived   one training step (forward, backward, Adam) of the derived network;
  weight    the supernet's weight step on the same path (straight-through weights);
  bilevel   a full search step: architecture step (logit gradients only) + weight step;
  mixture   one step of a DARTS-style supernet that runs all candidates of every layer.
Then prints ratios to the derived step, and the train throughput of the derived -S net
against MONAI DenseNet121-3D.

    python benchmarks/bench_search.py [--space covidnet3d-s] [--batch 4] [--input 16x64x64]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from volnas.models.registry import create_model
from volnas.search.supernet import ChoiceLayer, SuperNet
from volnas.training.device import autocast, resolve_device


def timed(step: Callable[[], None], repeats: int, device: torch.device) -> float:
    step()  # warm-up (kernel selection, allocations)
    step()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def prep(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    model = model.to(device)
    return model.to(memory_format=torch.channels_last_3d) if device.type == "cpu" else model


def train_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
               opt: torch.optim.Optimizer, device: torch.device) -> Callable[[], None]:
    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(device):
            out = model(x)
        F.cross_entropy(out.float(), y).backward()
        opt.step()
    return step


class Mixture(torch.nn.Module):
    """DARTS-style: every candidate runs, outputs summed with softmax weights."""

    def __init__(self, layer: ChoiceLayer, logits: torch.nn.Parameter) -> None:
        super().__init__()
        self.layer = layer
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.softmax(self.logits, -1)
        return sum(w[i] * c(x) for i, c in enumerate(self.layer.candidates))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="covidnet3d-s")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--input", default="16x64x64")
    ap.add_argument("--paths", type=int, default=4, help="random paths averaged over")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-mixture", action="store_true", help="skip the (slow) DARTS reference")
    args = ap.parse_args()
    device = resolve_device(args.device)
    d, h, w = (int(v) for v in args.input.split("x"))
    console = Console(width=160)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 1, d, h, w, device=device)
    if device.type == "cpu":
        x = x.contiguous(memory_format=torch.channels_last_3d)
    y = torch.randint(0, 2, (args.batch,), device=device)

    sup = prep(SuperNet(args.space, 1, 2), device)
    sup.train()
    sup.generator = torch.Generator().manual_seed(0)
    w_opt = torch.optim.Adam(sup.weight_parameters(), 3e-4)
    a_opt = torch.optim.Adam(sup.arch_parameters(), 1e-3)
    rows = []
    for _ in range(args.paths):
        sample = sup.alpha.sample(sup.generator)
        idx = [i for _, i in sample]
        derived = prep(sup.genotype(idx).build(1, 2), device)
        t_derived = timed(train_step(derived, x, y, torch.optim.Adam(derived.parameters(), 1e-3),
                                     device), args.repeats, device)

        def weight_step(idx: list[int] = idx) -> None:
            s = sup.alpha.sample(torch.Generator().manual_seed(0))
            sup.set_path(idx, [wt for wt, _ in s])
            sup.fixed_path = None
            w_opt.zero_grad(set_to_none=True)
            with autocast(device):
                out = sup.net(x)
            F.cross_entropy(out.float(), y).backward()
            w_opt.step()

        def bilevel_step(idx: list[int] = idx) -> None:
            s = sup.alpha.sample(torch.Generator().manual_seed(0))
            sup.set_path(idx, [wt for wt, _ in s])
            with autocast(device):
                out = sup.net(x)
            grads = torch.autograd.grad(F.cross_entropy(out.float(), y), sup.arch_parameters(),
                                        allow_unused=True)
            for p, g in zip(sup.arch_parameters(), grads, strict=True):
                p.grad = g
            a_opt.step()
            weight_step(idx)

        rows.append((t_derived, timed(weight_step, args.repeats, device),
                     timed(bilevel_step, args.repeats, device)))

    t_d = sum(r[0] for r in rows)
    t_w = sum(r[1] for r in rows)
    t_b = sum(r[2] for r in rows)
    t_mix = None
    if not args.no_mixture:
        mix_net = prep(SuperNet(args.space, 1, 2), device)
        layers = mix_net.net.layers
        for i, layer in enumerate(list(layers)):
            if isinstance(layer, ChoiceLayer):
                layers[i] = Mixture(layer, torch.nn.Parameter(torch.zeros(len(layer.candidates),
                                                                          device=device)))
        mix_net.train()
        t_mix = timed(train_step(mix_net.net, x, y, torch.optim.Adam(mix_net.parameters(), 1e-3),
                                 device), 1, device)

    table = Table(title=f"search step cost, {args.space}, input ({args.batch},1,{args.input}), "
                        f"{device}, mean over {args.paths} random paths")
    for col in ("step", "seconds", "ratio to derived"):
        table.add_column(col, justify="left" if col == "step" else "right")
    n = len(rows)
    table.add_row("derived net train step", f"{t_d / n:.3f}", "1.00")
    table.add_row("supernet weight step (single path)", f"{t_w / n:.3f}", f"{t_w / t_d:.2f}")
    table.add_row("full bi-level step (arch + weight)", f"{t_b / n:.3f}", f"{t_b / t_d:.2f}")
    if t_mix is not None:
        table.add_row("DARTS mixture step (all 8 candidates)", f"{t_mix:.3f}",
                      f"{t_mix / (t_d / n):.2f}")
    console.print(table)

    # derived -S vs DenseNet121-3D train throughput at (B,1,32,64,64)
    xb = torch.randn(args.batch, 1, 32, 64, 64, device=device)
    if device.type == "cpu":
        xb = xb.contiguous(memory_format=torch.channels_last_3d)
    t2 = Table(title=f"train throughput at ({args.batch},1,32,64,64), {device}")
    for col in ("model", "params", "step s", "scans/s"):
        t2.add_column(col, justify="left" if col == "model" else "right")
    torch.manual_seed(1)
    s_net = SuperNet("covidnet3d-s", 1, 2)
    geno_idx = [int(torch.randint(0, 7, (1,))) if len(layer.candidates) == 8 else 0
                for layer in s_net.choice_layers]  # a random path without skips
    for name, model in (("CovidNet3D-S (random path, no skip)", s_net.genotype(geno_idx).build(1, 2)),
                        ("densenet3d_121", create_model("densenet3d_121", 1, 2))):
        model = prep(model, device)
        t = timed(train_step(model, xb, y, torch.optim.Adam(model.parameters(), 1e-3), device),
                  args.repeats, device)
        t2.add_row(name, f"{sum(p.numel() for p in model.parameters()):,}", f"{t:.3f}",
                   f"{args.batch / t:.1f}")
    console.print(t2)


if __name__ == "__main__":
    main()
