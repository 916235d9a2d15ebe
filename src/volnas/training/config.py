"""Run configuration: papers' defaults, a YAML file may fill them, CLI flags override."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from volnas.core.durations import parse_duration
from volnas.data.preprocess import PreprocessConfig

C = TypeVar("C", bound="TrainConfig")


class CVFold(BaseModel):
    """Which fold of a cross-validation on the training split a run trains
    (:meth:`volnas.data.dataset.DataSource.fold`)."""

    model_config = ConfigDict(extra="forbid")
    folds: int = Field(5, ge=2)
    index: int = Field(0, ge=0)  # 0-based; the folder is fold<index + 1>
    seed: int = 0  # of the patients' assignment to folds (the same for every model compared)

    @model_validator(mode="after")
    def _index_in_range(self) -> CVFold:
        if self.index >= self.folds:
            raise ValueError(f"fold index {self.index} of {self.folds} folds")
        return self


class TrainConfig(BaseModel):
    """Everything a training run depends on; written to RUN_DIR/config.yaml."""

    model_config = ConfigDict(extra="forbid")
    # Settings added after runs were first saved, with the value those runs used: a saved
    # config.yaml without one resumes and evaluates as it ran (not with today's default).
    SAVED_BEFORE_FIELD: ClassVar[dict[str, Any]] = {"tta": "none"}

    data: str = ""
    model: str = "resnet3d_18"
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    epochs: int = Field(200, ge=1)  # CovidNet3D trained baselines for 200 epochs
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)  # Adam, as both papers
    weight_decay: float = Field(5e-4, ge=0)
    min_lr: float = Field(1e-5, ge=0)  # cosine annealing floor
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    momentum: float = 0.9  # sgd only
    # auto: a genotype's searched policy if it has one, else flip (CovidNet3D: random H or V
    # flip); none; flip; or a policy JSON file (volnas.data.augment.Policy)
    augment: str = "auto"
    select_metric: Literal["auc", "f1", "accuracy", "loss"] = "auc"
    # none: plain cross-entropy (the papers); balanced: class c weighted n / (k * n_c) by its
    # share of the training split (scikit-learn's "balanced"), for imbalanced data
    class_weight: Literal["none", "balanced"] = "none"
    # test-time augmentation of validation/test/predict probabilities (volnas.training.tta):
    # auto keeps flips only if it beats none on the validation select_metric
    tta: Literal["none", "flips", "auto"] = "auto"
    # the threshold on P(positive) at which the test report gives sensitivity, specificity,
    # PPV and NPV, chosen on the validation split: youden | sensitivity:S | specificity:S
    # (volnas.training.metrics.choose_threshold); the argmax metrics are reported as well
    operating_point: str = "youden"
    patience: int | None = Field(None, ge=1)  # early stopping on the validation metric
    # Before each validation, re-estimate BatchNorm statistics on this many clean training
    # batches (train mode, no gradient; 0: off). With few steps per epoch the running
    # averages lag the weights and shift every prediction to one class.
    bn_recalibration: int = Field(32, ge=0)
    seed: int = 0
    num_workers: int = Field(0, ge=0)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    channels_last: bool = True  # channels_last_3d memory format
    sync_bn: bool = False  # synchronised batch norm across ranks (torchrun on CUDA)
    cache_dir: str | None = None  # default: $VOLNAS_CACHE_DIR or ~/.cache/volnas
    positive_class: str | None = None  # default: from the manifest
    # refuse a run whose training step would not fit in the device's memory (estimated from
    # a small forward pass before the first epoch); false: run anyway
    memory_check: bool = True
    # wall-clock seconds for the whole run ("45m", "90s", "1.5h" or seconds): the epochs that
    # fit are set before the first one (at most ``epochs``), so the cosine schedule ends with
    # the budget, and no epoch starts that would end after it (volnas.training.budget)
    time_budget: float | None = Field(None, gt=0)
    # set by a time budget after the first epoch, not by hand: the last epoch stops after
    # this many training batches, so the training fills the budget instead of ending up to
    # an epoch early (volnas.training.trainer.Trainer.fill_epochs)
    last_epoch_batches: int | None = Field(None, ge=1)
    # set by `volnas cv` on each fold's run (volnas.training.cv), not by hand: the run trains
    # on the other folds of the training split and validates on this one, and has no test
    cv_fold: CVFold | None = None

    @field_validator("operating_point")
    @classmethod
    def _operating_point(cls, value: str) -> str:
        from volnas.training.metrics import parse_operating_rule

        parse_operating_rule(value)
        return value

    @field_validator("time_budget", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value


    @classmethod
    def from_saved(cls: type[C], data: dict[str, Any]) -> C:
        """A configuration volnas saved; fields it lacks get ``SAVED_BEFORE_FIELD``'s value."""
        return cls.model_validate({**cls.SAVED_BEFORE_FIELD, **data})


def merge_settings(path: Path | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """Raw settings: YAML file <- overrides (None values ignored), preprocessing keys nested."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ValueError(f"{path}: cannot read config: {e}") from e
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: config must be a mapping, got {type(loaded).__name__}")
        data.update(loaded)
    pre = dict(data.get("preprocess") or {})
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "preprocess":
            pre.update(value)
        elif key in PreprocessConfig.model_fields:
            pre[key] = value
        else:
            data[key] = value
    data["preprocess"] = pre
    return data


def load_config(path: Path | None, overrides: dict[str, Any], cls: type[C] | None = None) -> C:
    """Defaults <- YAML file <- overrides, validated as ``cls`` (default TrainConfig)."""
    model_cls = cls or TrainConfig
    data = merge_settings(path, overrides)
    try:
        return model_cls.model_validate(data)  # type: ignore[return-value]
    except ValidationError as e:
        where = f"{path}: " if path else ""
        raise ValueError(f"{where}invalid configuration:\n{e}") from e


def load_saved_config(path: Path, cls: type[C] | None = None) -> C:
    """A config volnas wrote into a run folder (settings it predates: ``SAVED_BEFORE_FIELD``)."""
    model_cls = cls or TrainConfig
    try:
        return model_cls.from_saved(merge_settings(path, {}))  # type: ignore[return-value]
    except ValidationError as e:
        raise ValueError(f"{path}: invalid configuration:\n{e}") from e


def dump_config(cfg: TrainConfig) -> str:
    """YAML text of the resolved configuration."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


# Settings that decide where and how fast a run computes, never what it computes: the only
# ones a resume may take from the command line.
RESUME_SAFE = frozenset({"device", "num_workers", "cache_dir", "memory_check"})


class ResumeConflict(ValueError):
    """Settings given at resume would change the run being resumed."""


def resume_config(
    saved: C,
    given: Mapping[str, Any],
    path: Path,
    *,
    finished_epochs: int | None = None,
) -> C:
    """The configuration a resumed run continues with: ``saved`` (read from ``path``), plus
    the settings in ``given`` (what the user set at resume: YAML and flags, no defaults) that
    cannot change its result (:data:`RESUME_SAFE`). A given value equal to the saved one is
    accepted; any other difference raises :class:`ResumeConflict` naming each setting.

    ``epochs`` may grow when ``finished_epochs`` (training runs: the epochs its checkpoint
    holds; None for runs that cannot be extended) says every saved epoch has finished: the
    run is then extended, its learning-rate schedule re-annealed over the new length from
    where it stands, so it differs from a run started with that many epochs.
    """
    raw = merge_settings(None, dict(given))
    base = saved.model_dump(mode="json")
    update = {k: v for k, v in raw.items() if k != "preprocess"}
    unknown = sorted(set(update) - set(base))
    if unknown:
        raise ResumeConflict(f"{path}: unknown settings given at resume: {', '.join(unknown)}")
    merged = {**base, **update, "preprocess": {**base["preprocess"], **raw["preprocess"]}}
    try:
        wanted = type(saved).model_validate(merged)
    except ValidationError as e:
        raise ValueError(f"invalid settings given at resume:\n{e}") from e
    changed: dict[str, tuple[Any, Any]] = {}
    for key in type(saved).model_fields:
        old, new = getattr(saved, key), getattr(wanted, key)
        if key == "preprocess":
            for sub in type(old).model_fields:
                if getattr(old, sub) != getattr(new, sub):
                    changed[sub] = (getattr(old, sub), getattr(new, sub))
        elif old != new and key not in RESUME_SAFE:
            changed[key] = (old, new)
    extend = changed.pop("epochs", None) if finished_epochs is not None else None
    note = ""
    if extend is not None and (extend[1] < extend[0] or finished_epochs != extend[0]):
        changed["epochs"] = extend
        why = ("fewer epochs than saved cannot" if extend[1] < extend[0] else
               f"only {finished_epochs} of its {extend[0]} epochs have finished")
        note = f" (--epochs may only extend a run whose saved epochs all finished: {why})"
        extend = None
    if changed:
        items = ", ".join(f"{k} (saved {old!r}, given {new!r})" for k, (old, new) in changed.items())
        raise ResumeConflict(
            f"{path}: a resume continues the saved configuration; these settings would change "
            f"the run: {items}{note}. Resume without them (only "
            f"{', '.join(sorted(RESUME_SAFE))} may be given), or start a new run with another --out"
        )
    safe = {k: getattr(wanted, k) for k in RESUME_SAFE}
    if extend is not None:
        safe["epochs"] = extend[1]
    return saved.model_copy(update=safe)
