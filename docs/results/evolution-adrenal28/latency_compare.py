"""Measured CPU latency (1 thread, batch 1, 28^3) of searched networks and baselines.

    python docs/results/evolution-adrenal28/latency_compare.py NAME=RUN_DIR [NAME=RUN_DIR ...]

(each RUN_DIR a search run folder with genotype.json); resnet3d_18 and mc3_18 are added.
"""

import sys

import torch

from volnas.models.genotype import Genotype
from volnas.models.latency import time_forward
from volnas.models.profile import count_params
from volnas.models.registry import create_model

torch.set_num_threads(1)
x = torch.randn(1, 1, 28, 28, 28)
nets = {}
for arg in sys.argv[1:]:
    name, _, run = arg.partition("=")
    nets[name] = Genotype.load(run + "/genotype.json").build().eval()
for b in ("resnet3d_18", "mc3_18"):
    nets[b] = create_model(b, in_channels=1, num_classes=2).eval()
for name, n in nets.items():
    for _ in range(3):
        time_forward(n, x)
    ts = sorted(time_forward(n, x, repeats=15) * 1e3 for _ in range(3))
    print(f"{name}: {count_params(n) / 1e6:.2f} M params, latency {ts[1]:.1f} ms "
          "(median of 3 medians of 15)")
