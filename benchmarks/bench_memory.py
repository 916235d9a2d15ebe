"""Peak memory of one search step and one training step, against the estimator.

Each case runs in a fresh subprocess (one thread): the resident set before the model is
built is the base; the peak (VmHWM, reset through /proc/self/clear_refs) over two steps
minus the base is what the step needed, parameters and optimiser state included. The
supernet runs its largest path (volnas.training.memory.largest_path) in every step, so
cases are comparable and match what the estimate assumes.

    python benchmarks/bench_memory.py [--sizes 8x32x32,16x64x64] [--batch 2] [--steps 2]

Where it goes (2 CPU threads shared, batch 2, MB; est/peak: the estimate over the peak):

    case                    input     peak  estimate est/peak  activ  of aug
    search off paper        8x32x32    466     569     1.22     114      0
    search joint paper      8x32x32    477     571     1.20     115      1
    search joint unrolled   8x32x32    654     870     1.33     115      1
    train resnet3d_18       8x32x32    767     514     0.67       4      0
    search off paper        16x64x64  1658    1766     1.07     912      0
    search joint paper      16x64x64  1748    1783     1.02     923     11
    search joint unrolled   16x64x64  2244    2082     0.93     923     11
    train resnet3d_18       16x64x64   782     569     0.73      31      0

- Activations of the sampled path dominate a search step and scale with batch x voxels;
  the supernet's other candidates cost only their parameters and Adam state (0.4 GB).
  The largest path within the default stride budget keeps twice the activations of the
  path of the reference strides, and at the default 32x128x128, batch 8, it needs ~43 GB
  (27x the 16x64x64 batch-2 step): random paths mostly stay far below, which is why runs
  held 5-7 GB until a heavy path was drawn.
- The searched augmentation's saved intermediates are ~1 % of the activations (each
  layer's input for its logit gradient, grid_sample's grid): not where the memory goes.
- The unrolled objective adds weight-sized copies (backup of every weight, the train and
  validation weight gradients, ~3 x 0.1 GB) and draws three paths per step instead of two;
  its graphs run one after another, none is kept alive.
- After a step the resident set stays near the peak: glibc keeps freed activation
  memory for reuse (the "after" column), so a run looks as large as its worst step.
- resnet3d_18 at these sizes is parameter-bound; its peak includes allocator slack from
  the channels_last copy of the weights, which the estimate does not model.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MB = 2**20


def status() -> dict[str, int]:
    text = Path("/proc/self/status").read_text()
    return {k: int(re.search(rf"{k}:\s+(\d+)", text).group(1)) * 1024 for k in ("VmRSS", "VmHWM")}


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    """One case in this process: build, step ``steps`` times, report bytes."""
    import torch
    import torch.nn.functional as F

    from volnas.models.registry import create_model
    from volnas.search.run import load_search_config
    from volnas.search.search import SearchTrainer
    from volnas.search.supernet import SuperNet
    from volnas.training.device import prepare_model
    from volnas.training.memory import estimate_step_bytes, largest_path

    torch.set_num_threads(1)
    torch.manual_seed(0)
    d, h, w = case["shape"]
    b = case["batch"]
    gen = torch.Generator().manual_seed(1)
    batches = [torch.rand(b, 1, d, h, w, generator=gen) for _ in range(2)]
    y = torch.arange(b) % 2
    reset_peak()
    base = status()["VmRSS"]
    if case["kind"] == "train":
        net = prepare_model(create_model(case["model"], in_channels=1, num_classes=2),
                            torch.device("cpu"))
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        net.train()

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            x = batches[0].contiguous(memory_format=torch.channels_last_3d)
            F.cross_entropy(net(x), y).backward()
            opt.step()

        model, augment, unrolled = net, False, False
    else:
        cfg = load_search_config(None, {
            "data": "unused.csv", "slices": d, "size": (h, w), "space": case["space"],
            "augment_search": case["aug"], "objective": case["objective"], "batch_size": b})
        net = SuperNet(case["space"], 1, 2, stride_budget=cfg.stride_budget)
        trainer = SearchTrainer(net, cfg.search_train_config(), cfg, cfg.preprocess.input_shape,
                                class_names=["a", "b"], positive_class="b",
                                device=torch.device("cpu"), run_dir=Path(tempfile.mkdtemp()))
        trainer.model.train()
        path = largest_path(net)
        sample = net.sample_path

        def sample_largest() -> list[int]:  # straight-through weights, the largest path
            sample()
            weights = [F.one_hot(torch.tensor(i), len(layer.weight)).float()
                       + layer.weight - layer.weight.detach()
                       for i, layer in zip(path, net.choice_layers, strict=True)]
            net.set_path(path, weights)
            return path

        net.sample_path = sample_largest

        def step() -> None:
            trainer.train_batch(((batches[0], y), (batches[1], y)))

        model, augment = net, case["aug"] != "off"
        unrolled = augment and case["objective"] == "unrolled"
    built = status()["VmRSS"] - base
    peaks, afters, times = [], [], []
    for _ in range(case["steps"]):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
        s = status()
        peaks.append(s["VmHWM"] - base)
        afters.append(s["VmRSS"] - base)
    est = estimate_step_bytes(model, (1, d, h, w), b, unrolled=unrolled, augment=augment)
    aug_part = 0
    if augment and case.get("breakdown", True):
        aug_part = est.activations - estimate_step_bytes(model, (1, d, h, w), b).activations
    return {"built": built, "peak": max(peaks), "after": afters[-1], "seconds": max(times),
            "est_total": est.total, "est_fixed": est.fixed, "est_act": est.activations,
            "est_aug": aug_part, "est_work": est.workspace}


CASES = [
    ("search off paper", {"kind": "search", "space": "medpipe", "aug": "off", "objective": "paper"}),
    ("search joint paper", {"kind": "search", "space": "medpipe", "aug": "joint", "objective": "paper"}),
    ("search joint unrolled", {"kind": "search", "space": "medpipe", "aug": "joint",
                               "objective": "unrolled"}),
    ("train resnet3d_18", {"kind": "train", "model": "resnet3d_18"}),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="8x32x32,16x64x64")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--only", default="", help="run only cases whose name contains this")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    head = (f"{'case':24s} {'input':>9s} {'B':>2s} {'model':>6s} {'peak':>7s} {'after':>7s} "
            f"{'estimate':>8s} {'est/peak':>8s} {'fixed':>6s} {'activ':>6s} {'of aug':>6s} "
            f"{'workspc':>7s} {'s/step':>6s}")
    print("MB of resident memory above the process before the model was built")
    print(head)
    for size in args.sizes.split(","):
        shape = [int(v) for v in size.split("x")]
        for name, case in CASES:
            if args.only not in name:
                continue
            case = {**case, "shape": shape, "batch": args.batch, "steps": args.steps}
            out = subprocess.run([sys.executable, __file__, "--case", json.dumps(case)], env=env,
                                 capture_output=True, text=True)
            if out.returncode != 0:
                print(f"{name:24s} {size:>9s} failed: {out.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{name:24s} {size:>9s} {args.batch:>2d} {r['built'] / MB:6.0f} "
                  f"{r['peak'] / MB:7.0f} {r['after'] / MB:7.0f} {r['est_total'] / MB:8.0f} "
                  f"{r['est_total'] / r['peak']:8.2f} {r['est_fixed'] / MB:6.0f} "
                  f"{r['est_act'] / MB:6.0f} {r['est_aug'] / MB:6.0f} {r['est_work'] / MB:7.0f} "
                  f"{r['seconds']:6.1f}", flush=True)


if __name__ == "__main__":
    main()
