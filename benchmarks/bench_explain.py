"""Which explanation finds the lesion? Every method x layer on a network with lesion masks.

Synthesises chest CT with lesion masks (NIfTI, :mod:`volnas.data.synth`), trains a network
on it (or reuses the run already in ``WORK``), and explains every correctly classified
positive test scan for the positive class with each method (and several layers for the
CAM family). Per row:

    hit rate       the map's maximum lies inside the lesion mask (source grid);
    energy         fraction of the map's sum inside lesions, as a multiple of a uniform map;
    deletion AUC   area under the class probability as the most salient input voxels are
                   blanked (lower = the model relied on what the map shows);
    insertion AUC  the reverse, from a blurred scan (higher = better);
    rank corr.     Spearman correlation with the same method's map of a fully re-initialised
                   copy of the network (the randomisation sanity check: low is good);
    s/scan         explanation time per scan (without the curves).

Controls: an untrained network (fresh initialisation) and the trained network with all
weights re-initialised (``randomised``), both explained with the default method.

    python benchmarks/bench_explain.py --work runs/bench-explain --doc docs/results/explanations.md
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from volnas.core.files import atomic_write_text
from volnas.data.index import build_index
from volnas.data.manifest import read_manifest, write_manifest
from volnas.data.readers import read_scan
from volnas.data.synth import synthesize
from volnas.deploy.bundle import load_run_or_bundle
from volnas.explain.api import (
    deletion_insertion,
    explain_volumes,
    load_mask_table,
    read_mask,
    scan_key,
)
from volnas.explain.faithfulness import faithfulness
from volnas.explain.methods import DEFAULT_METHOD, make_explainer, method_info
from volnas.explain.sanity import randomized_copy, rank_correlation
from volnas.models.registry import create_model
from volnas.training.config import TrainConfig
from volnas.training.run import run_training

# (method, layer or None for the default, options)
CONFIGS: list[tuple[str, str | None, dict[str, Any]]] = [
    ("cam", None, {}),
    ("gradcam", None, {}),
    ("gradcam", "layer2", {}),
    ("gradcampp", "layer2", {}),
    ("layercam", "layer1", {}),
    ("layercam", "layer2", {}),
    ("layercam-fused", None, {}),
    ("smoothgrad", None, {"samples": 16}),
    ("intgrad", None, {"samples": 16, "smooth": 1}),
    ("intgrad", None, {"samples": 16}),
    ("occlusion", None, {"box": (4, 8, 8), "stride": (2, 4, 4)}),
]


def prepare(work: Path, args: argparse.Namespace, console: Console) -> Path:
    """Synthesise data and train (skipped when ``work/run/metrics.json`` exists)."""
    run = work / "run"
    if (run / "metrics.json").is_file():
        console.print(f"reusing {run}")
        return run
    data = work / "data"
    if not (data / "masks.csv").is_file():
        synthesize(data, scans=args.scans, fmt="nifti", classes=2, shape=(20, 48, 48),
                   seed=args.seed, difficulty=args.difficulty)
    manifest = work / "manifest.csv"
    write_manifest(build_index(data, split=(0.6, 0.2, 0.2), seed=args.seed), manifest)
    cfg = TrainConfig.model_validate({
        "data": str(manifest), "model": args.model, "epochs": args.epochs, "batch_size": 8,
        "seed": args.seed, "preprocess": {"slices": 16, "size": (48, 48)},
        "cache_dir": str(work / "cache")})
    run_training(cfg, run, console=console)
    return run


def score(explainer: Any, items: list[dict[str, Any]], pre: Any, target: int,
          curves: bool = True) -> tuple[dict[str, float], list[np.ndarray]]:
    """Mean scores of one explainer over the scans; also returns its maps on the input grid."""
    rows, maps, seconds = [], [], 0.0
    for it in items:
        t0 = time.perf_counter()
        (ex,) = explain_volumes(explainer, [it["volume"]], pre, target)
        seconds += time.perf_counter() - t0
        f = faithfulness(ex.heatmap, it["mask"])
        if curves:
            dele, ins = deletion_insertion(explainer, ex, "cpu")
            f.update(deletion_auc=dele.auc, insertion_auc=ins.auc)
        rows.append(f)
        maps.append(ex.model_map)
    out = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    out["s_per_scan"] = seconds / len(items)
    out["map"] = "x".join(map(str, ex.raw_shape))
    return out, maps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="data + run folder (reused)")
    ap.add_argument("--doc", type=Path, default=None, help="write the results markdown here")
    ap.add_argument("--difficulty", default="easy", choices=("easy", "realistic"))
    ap.add_argument("--scans", type=int, default=240)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--model", default="resnet3d_18")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-scans", type=int, default=12, help="positive test scans scored")
    ap.add_argument("--occlusion-scans", type=int, default=3,
                    help="occlusion is slow: score it on the first N scans only")
    ap.add_argument("--sanity-scans", type=int, default=6,
                    help="scans for the rank correlation with the randomised network")
    ap.add_argument("--include-misclassified", action="store_true",
                    help="score every positive test scan (smoke tests of this script)")
    ap.add_argument("--methods", default="", help="comma-separated subset of methods")
    args = ap.parse_args()
    console = Console(width=160)
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()
    run = prepare(args.work, args, console)
    model, cfg, info = load_run_or_bundle(run)
    model = model.eval()
    classes = list(info["classes"])
    target = classes.index("covid")
    metrics = json.loads((run / "metrics.json").read_text())
    table = load_mask_table(args.work / "data")

    rows_m = [r for r in read_manifest(Path(cfg.data)) if r.split == "test" and r.label == "covid"]
    items: list[dict[str, Any]] = []
    lesion_input_vox = []
    for r in rows_m:
        vol = read_scan(r.path, r.format)
        mask_path = table.get(scan_key(r.path))
        if mask_path is None:
            continue
        mask = read_mask(mask_path, vol.shape)
        (ex,) = explain_volumes(make_explainer(model, "cam"), [vol], cfg.preprocess, target)
        if int(np.argmax(ex.probs)) != target and not args.include_misclassified:
            continue  # only correctly classified positives
        items.append({"volume": vol, "mask": mask, "id": r.scan_id})
        d, h, w = vol.shape
        sd, sh, sw = ex.model_map.shape
        lesion_input_vox.append(mask.sum() * (sd * sh * sw) / (d * h * w))
        if len(items) >= args.max_scans:
            break
    n_pos = sum(1 for _ in rows_m)
    console.print(f"{len(items)} correctly classified positive test scans of {n_pos}; lesion "
                  f"~{np.median(lesion_input_vox):.0f} voxels at the network input (median)")
    if not items:
        raise SystemExit("no correctly classified positive test scans to score")
    sanity_items = items[: args.sanity_scans]
    randomised = randomized_copy(model, "full", seed=args.seed + 1)
    torch.manual_seed(args.seed + 2)
    untrained = create_model(cfg.model, model_in_channels(model), len(classes)).eval()

    wanted = set(filter(None, args.methods.split(",")))
    results: list[dict[str, Any]] = []
    for method, layer, opts in CONFIGS:
        if wanted and method not in wanted:
            continue
        subset = items[: args.occlusion_scans] if method == "occlusion" else items
        ex = make_explainer(model, method, layer, cfg.model, **opts)
        console.print(f"{method} {ex.target_layer} on {len(subset)} scans ...")
        s, maps = score(ex, subset, cfg.preprocess, target)
        if method != "occlusion":
            _, ref = score(make_explainer(randomised, method, layer, cfg.model, **opts),
                           sanity_items, cfg.preprocess, target, curves=False)
            s["rank_corr"] = float(np.mean([rank_correlation(a, b)
                                            for a, b in zip(maps, ref, strict=False)]))
        shown = {k: v for k, v in opts.items() if k != "samples"}
        layer_cell = ex.target_layer + "".join(
            f" {k}={'x'.join(map(str, v)) if isinstance(v, tuple) else v}"
            for k, v in shown.items())
        results.append({"network": "trained", "method": method, "layer": layer_cell,
                        "n": len(subset), **s})
    for name, net in (("untrained", untrained), ("randomised", randomised)):
        for method in (DEFAULT_METHOD, "layercam-fused"):
            if wanted and method not in wanted:
                continue
            ex = make_explainer(net, method, None, cfg.model)
            s, _ = score(ex, items, cfg.preprocess, target)
            results.append({"network": name, "method": method, "layer": ex.target_layer,
                            "n": len(items), **s})

    t = Table(title=f"{cfg.model} (test AUC {metrics.get('auc', float('nan')):.3f}), "
                    f"{len(items)} positive test scans, --difficulty {args.difficulty}")
    cols = ("network", "method", "layer", "map", "n", "hit rate", "energy / uniform",
            "deletion AUC", "insertion AUC", "rank corr.", "s/scan")
    for c in cols:
        t.add_column(c, justify="left" if c in cols[:3] else "right")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * 3 + "---:|" * (len(cols) - 3)]
    for r in results:
        cells = [r["network"], method_info(r["method"]).name, r["layer"], r["map"], str(r["n"]),
                 f"{r['pointing_hit']:.3f}",
                 f"{r['energy_in_lesion'] / max(r['uniform_energy'], 1e-12):.1f}x",
                 f"{r['deletion_auc']:.3f}", f"{r['insertion_auc']:.3f}",
                 f"{r['rank_corr']:.2f}" if "rank_corr" in r else "",
                 f"{r['s_per_scan']:.2f}"]
        t.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    console.print(t)
    elapsed = time.perf_counter() - t_start
    console.print(f"uniform map: hit rate = energy = lesion fraction "
                  f"{np.mean([r['uniform_energy'] for r in results]):.4f}; {elapsed:.0f} s")
    if args.doc:
        body = "\n".join([
            f"### --difficulty {args.difficulty}: {cfg.model}, {args.epochs} epochs "
            "(a smoke-test-length training run)",
            "",
            f"Test accuracy {metrics['accuracy']:.3f}, AUC {metrics.get('auc', float('nan')):.3f}. "
            f"The first {len(items)} correctly classified positive test scans (of {n_pos} "
            f"positives; occlusion: "
            f"the first {min(args.occlusion_scans, len(items))}); lesions are "
            f"~{np.median(lesion_input_vox):.0f} voxels at the 16x48x48 network input "
            f"(median; {np.min(lesion_input_vox):.0f}-{np.max(lesion_input_vox):.0f}); a "
            f"uniform map scores {np.mean([r['uniform_energy'] for r in results]):.4f} "
            "(the lesion fraction of the scan) on both hit rate and energy. Rank corr. on "
            f"the first {len(sanity_items)} scans. Run time {elapsed:.0f} s on "
            f"{platform.machine()} ({torch.get_num_threads()} threads, torch {torch.__version__}).",
            "",
            "```bash",
            f"python benchmarks/bench_explain.py --work WORK --difficulty {args.difficulty} "
            f"--epochs {args.epochs} --scans {args.scans} --doc {args.doc}",
            "```",
            "",
            *lines,
            "",
        ])
        begin, end = f"<!-- bench:{args.difficulty} -->", f"<!-- /bench:{args.difficulty} -->"
        old = args.doc.read_text() if args.doc.is_file() else "# Explanations\n\n"
        block = f"{begin}\n{body}{end}"
        if begin in old and end in old:
            new = old[: old.index(begin)] + block + old[old.index(end) + len(end):]
        else:
            new = old.rstrip("\n") + "\n\n" + block + "\n"
        atomic_write_text(args.doc, new)
        console.print(f"wrote {args.doc}")


def model_in_channels(model: torch.nn.Module) -> int:
    """Input channels of the first 3D convolution."""
    for m in model.modules():
        if isinstance(m, torch.nn.Conv3d):
            return m.in_channels
    return 1


if __name__ == "__main__":
    main()
