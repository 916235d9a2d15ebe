"""How well a supernet ranks architectures: the score each gets with inherited weights
against its stand-alone score, compared by Kendall's tau.

A weight-sharing search is only as good as this ranking: if the supernet's scores do not
order architectures as training them alone does, its choice is close to a random draw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from scipy.stats import kendalltau

from volnas.core.files import load_tensors, sha256_file
from volnas.models.genotype import Genotype, StackNet
from volnas.search.supernet import SuperNet
from volnas.training.checkpoint import read_checkpoint_record
from volnas.training.config import TrainConfig
from volnas.training.metrics import select_metric
from volnas.training.trainer import Trainer


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b between two scorings of the same items: 1 same order, -1 reversed,
    about 0 unrelated; NaN when one scoring ties every item. Raises ValueError on
    scorings of different lengths or of fewer than 2 items."""
    if len(a) != len(b):
        raise ValueError(f"kendall_tau: the scorings must have the same length ({len(a)} vs {len(b)})")
    if len(a) < 2:
        raise ValueError(f"kendall_tau: needs at least 2 items, got {len(a)}")
    if len(set(a)) == 1 or len(set(b)) == 1:
        return math.nan
    return float(kendalltau(list(a), list(b)).statistic)


def path_of(supernet: SuperNet, genotype: Genotype) -> list[int]:
    """The supernet path (one candidate index per searchable layer) of ``genotype``."""
    if genotype.space != supernet.space:
        raise ValueError(f"genotype of space {genotype.space!r}, supernet of {supernet.space!r}")
    for spec, op in zip(supernet.specs, genotype.ops, strict=True):
        if not spec.searchable and op != spec.candidates[0]:
            raise ValueError(f"{spec.name}: the genotype has {op}, the supernet {spec.candidates[0]} "
                             "(strides fitted to another input?)")
    return [spec.candidates.index(op) for spec, op in zip(supernet.specs, genotype.ops, strict=True)
            if spec.searchable]


def inherited_net(supernet: SuperNet, genotype: Genotype) -> StackNet:
    """The plain network of ``genotype`` carrying the supernet's weights for that path."""
    net = genotype.build(supernet.in_channels, supernet.num_classes)
    net.load_state_dict(supernet.path_state_dict(path_of(supernet, genotype)))
    return net


def inherited_scores(
    supernet: SuperNet,
    genotypes: Sequence[Genotype],
    train_loader: Any,
    val_loader: Any,
    *,
    cfg: TrainConfig,
    class_names: list[str],
    positive_class: str | None,
    device: torch.device,
    run_dir: Path,
    bn_batches: int = 32,
) -> list[dict[str, Any]]:
    """Validation metrics of each genotype with the supernet's weights.

    Each architecture's BatchNorm statistics are re-estimated on ``bn_batches`` batches of
    ``train_loader`` (clean, no gradient) before it is scored, as the search scores its
    argmax path: statistics shared by all paths describe none of them. Returns, per genotype,
    its validation metrics and ``score`` (``cfg.select_metric``, larger is better).
    """
    tcfg = cfg.model_copy(update={"bn_recalibration": bn_batches})
    out = []
    for geno in genotypes:
        net = inherited_net(supernet, geno)
        trainer = Trainer(net, tcfg, class_names=class_names, positive_class=positive_class,
                          device=device, run_dir=run_dir)
        trainer.recalibrate_bn(train_loader)
        metrics = trainer.evaluate(val_loader)
        out.append({"genotype": geno.to_string(), **{k: metrics.get(k) for k in
                                                     ("accuracy", "f1", "auc", "loss")},
                    "score": select_metric(metrics, cfg.select_metric)})
    return out


def load_supernet(search_dir: Path, space: str, num_classes: int,
                  stride_budget: float | None = 2.0,
                  spatial: tuple[int, ...] | None = None,
                  stride_rule: str = "end") -> SuperNet:
    """The supernet of a search's last checkpoint (``RUN_DIR/search/checkpoint``): weights
    and architecture logits (augmentation logits, if any, are not needed here)."""
    folder = Path(search_dir) / "checkpoint"
    record = read_checkpoint_record(folder)
    weights = folder / record["file"]
    if not weights.is_file() or sha256_file(weights) != record["sha256"]:
        raise ValueError(f"{weights}: missing or does not match {folder / 'last.json'}")
    tensors = load_tensors(weights)
    supernet = SuperNet(space, 1, num_classes, stride_budget=stride_budget, spatial=spatial,
                        stride_rule=stride_rule)
    state = {k[6:]: v for k, v in tensors.items()
             if k.startswith("model.") and not k.startswith("model.aug.")}
    try:
        supernet.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{weights}: not a supernet of space {space!r} with {num_classes} "
                         f"classes: {e}") from e
    return supernet
