"""The settings of a search run: a TrainConfig (for the probes and the retrain) plus the
search's own; written to RUN_DIR/search_config.yaml."""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal, get_args

from pydantic import Field, model_validator

from volnas.data.preprocess import PreprocessConfig
from volnas.training.config import TrainConfig

# Settings added after search runs were first saved, with the behaviour of those runs.


Strategy = Literal["differentiable", "random", "evolution"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)


class SearchConfig(TrainConfig):
    """A search run: TrainConfig (used for the retrain) plus the search's own settings."""

    SAVED_BEFORE_FIELD: ClassVar[dict[str, Any]] = {**TrainConfig.SAVED_BEFORE_FIELD,
                                                    "aug_prior": "candidates",
                                                    "branch_gradient": False,
                                                    "strategy": "differentiable",
                                                    "fit_strides": False,
                                                    "stride_rule": "end"}

    model: str = "supernet"
    space: str = "covidnet3d-s"
    # differentiable: the supernet search below; random: draw random_samples architectures
    # uniformly from the space (stride budget and target_params as a hard filter), probe each
    # for probe_epochs, retrain the best (the baseline a search must beat)
    # evolution: a supernet trained on uniformly sampled paths, then an NSGA-II evolution
    # scored with inherited weights (volnas.search.evolution)
    # None: random for an architecture search, differentiable when the augmentation policy
    # is searched too (only that strategy searches policies). Random is the default because,
    # measured on AdrenalMNIST3D (docs/results/strategies-adrenal28.md), the differentiable
    # search's architecture gradient is at its noise floor and its pick is no better than a
    # random draw on validation, while random search spends the same epochs on probes
    strategy: Strategy | None = None
    # K, the architectures a random search probes. None: the differentiable search's cost in
    # training epochs, ceil(search_epochs / probe_epochs) + topk (one search epoch, an
    # architecture and a weight step over half the training split each, costs about one
    # training epoch; the topk probes cost topk * probe_epochs); with the defaults 10 + 10 = 20
    random_samples: int | None = Field(None, ge=1)
    search_epochs: int = Field(30, ge=1)
    search_batch_size: int | None = None  # default: batch_size
    search_slices: int | None = None  # reduced resolution for the search (default: retrain's)
    search_size: tuple[int, int] | None = None
    # fit the space's fixed strides to the search input: a downsampling is dropped along an
    # axis where the map would fall below 4 voxels (volnas.models.spaces.fit_strides), so no
    # layer runs on a 1^3 or 2^3 map where its kernel choices are copies of each other
    fit_strides: bool = True
    # which strides fitting drops first (volnas.models.spaces.STRIDE_RULES): "end" the last
    # ones; "cell1" cell 1's first (it then works on the stem's map), then the last ones.
    # cell1: cross-validated on the training split, it scored higher on both architectures
    # compared (docs/results/cv-strides-adrenal28.md); validation's 98 scans could not tell
    stride_rule: Literal["end", "cell1"] = "cell1"
    weight_optimizer: Literal["adam", "sgd"] = "adam"
    # the supernet's weights train at the retrain's rate: at 3e-4 (the papers') each candidate,
    # trained on a fraction of the steps, learns too little for the logits to see a difference
    weight_lr: float = Field(1e-3, gt=0)
    # Adam lr of the logits. None: arch_travel / (architecture steps of the search), so that
    # a logit whose gradient keeps its sign moves by about arch_travel over the search,
    # whatever the dataset size and search length; noise moves it by ~sqrt(steps) less
    arch_lr: float | None = Field(None, gt=0)
    arch_travel: float = Field(4.0, gt=0)
    arch_weight_decay: float = 1e-3
    # epochs in which only the weights train, on paths drawn uniformly (the logits are still
    # at their start), before the logits move. None: a third of search_epochs
    warmup_epochs: int | None = Field(None, ge=0)
    # in a layer that can be skipped, the straight-through weight scales what the candidate
    # adds to its input (x + w (y - x)), not its whole output (w y): volnas.search.supernet
    branch_gradient: bool = True
    tau_start: float = Field(5.0, gt=0)
    tau_end: float = Field(0.5, gt=0)
    tau_schedule: Literal["exp", "linear", "constant"] = "exp"
    # medpipe: a path may use at most this multiple of the activation memory of the paper's
    # strides [1,2,2,2,2,2,1]; paths over it are redrawn (None: no limit)
    stride_budget: float | None = Field(2.0, ge=1)
    target_params: float | None = Field(None, gt=0)  # millions of parameters
    cost_weight: float = Field(0.0, ge=0)
    augment_search: Literal["off", "joint", "only", "decoupled"] | None = None  # None: joint
    # for the medpipe space, off otherwise
    objective: Literal["paper", "unrolled"] = "paper"
    # start of the augmentation logits: each probability level {0, 0.5, 0.8} equal
    # ("probability"), or each (magnitude, probability) candidate equal ("candidates",
    # the start of search_config.yaml files without this field); see volnas.search.augment_search
    aug_prior: Literal["probability", "candidates"] = "probability"
    aug_lr: float | None = Field(None, gt=0)  # default: arch_lr
    unrolled_xi: float | None = Field(None, gt=0)  # virtual step size (default: weight_lr)
    fixed_genotype: str | None = None  # the network of --augment-search only (default below)
    topk: int = Field(10, ge=1)
    probe_epochs: int = Field(3, ge=1)
    retrain_epochs: int = Field(200, ge=1)
    # retrain the best `ensemble` probed architectures from scratch (1: only the best, in
    # final/; more: the others in ensemble/memberNN/), then `volnas search` evaluates their
    # ensemble (volnas.deploy.ensemble); probes never see the test split
    ensemble: int = Field(1, ge=1)

    # ---- evolution (volnas.search.evolution); the supernet trains for search_epochs
    generations: int = Field(10, ge=0)
    population: int = Field(16, ge=2)
    # objectives besides the validation score (select_metric); params is always recorded
    costs: list[Literal["params", "flops", "latency"]] = Field(default_factory=lambda: ["params"])
    pick: str = "best"  # best | smallest-within TOL | fastest-within TOL
    bn_batches: int = Field(8, ge=1)  # training batches re-estimating each candidate's BN
    front_topk: int = Field(0, ge=0)  # front networks retrained besides the pick
    baselines: list[str] = Field(default_factory=list)  # NAME or NAME=RUN_DIR, drawn on pareto.png

    @model_validator(mode="after")
    def _resolve_strategy(self) -> SearchConfig:
        if self.cv_fold is not None:
            raise ValueError("cv_fold is for `volnas cv`'s runs, not a search")
        if self.strategy is None:
            self.strategy = "differentiable" if self.aug_mode != "off" else "random"
        return self

    @property
    def samples(self) -> int:
        """The number of architectures a random search draws and probes."""
        if self.random_samples is not None:
            return self.random_samples
        return math.ceil(self.search_epochs / self.probe_epochs) + self.topk

    @property
    def warmup(self) -> int:
        """Weight-only epochs at the start of the search."""
        if self.warmup_epochs is not None:
            return self.warmup_epochs
        return self.search_epochs // 3

    def logit_lr(self, steps_per_epoch: int) -> float:
        """The logits' Adam lr: arch_lr, or arch_travel spread over the architecture steps."""
        if self.arch_lr is not None:
            return self.arch_lr
        steps = max(self.search_epochs - self.warmup, 1) * max(steps_per_epoch, 1)
        return self.arch_travel / steps

    @property
    def aug_mode(self) -> str:
        if self.augment_search is not None:
            return self.augment_search
        return "joint" if self.space == "medpipe" else "off"

    def search_preprocess(self) -> PreprocessConfig:
        return self.preprocess.model_copy(update={
            "slices": self.search_slices or self.preprocess.slices,
            "size": self.search_size or self.preprocess.size,
            "resize": None if self.search_size else self.preprocess.resize,
        })

    @property
    def fit_input(self) -> tuple[int, int, int] | None:
        """The input (D, H, W) the space's strides are fitted to; None: not fitted."""
        if not self.fit_strides:
            return None
        pre = self.search_preprocess()
        return (pre.slices, *pre.size)

    def search_train_config(self) -> TrainConfig:
        """The TrainConfig the search loop itself runs with (reduced input, search optimiser)."""
        base = {k: getattr(self, k) for k in TrainConfig.model_fields}
        base.update({
            "preprocess": self.search_preprocess(),
            "epochs": self.search_epochs,
            "batch_size": self.search_batch_size or self.batch_size,
            "optimizer": self.weight_optimizer,
            "lr": self.weight_lr,
            "augment": self.augment,
            "model": f"supernet:{self.space}",
            "time_budget": None,  # the search's budget is split by volnas.search.budget
            "last_epoch_batches": None,
        })
        return TrainConfig.model_validate(base)
