"""A training run end to end: data -> model -> Trainer.fit -> test once; the folder it
writes is described in :mod:`volnas.training.rundir`."""

from __future__ import annotations

import copy
import functools
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape

from volnas.core.distributed import broadcast_object, init_distributed
from volnas.core.distributed import info as dist_info
from volnas.core.files import atomic_write_text, remove_stale_temporaries
from volnas.core.markup import make_console
from volnas.data.dataset import DataSource, make_loader, open_source
from volnas.training.budget import (
    RESERVE,
    TTA_SHARE,
    epoch_seconds,
    estimate_step_seconds,
    fit_epochs,
)
from volnas.training.checkpoint import load_model_state
from volnas.training.config import TrainConfig, dump_config, load_saved_config
from volnas.training.device import resolve_device, seed_everything
from volnas.training.evaluate import (
    CALIBRATION,
    evaluate_and_write,
    read_operating_point,
    write_predictions,
)
from volnas.training.memory import MEMORY_HINT, check_run_memory
from volnas.training.metrics import (
    apply_temperature,
    choose_threshold,
    compute_metrics,
    ece,
    fit_temperature,
    nll,
    select_metric,
)
from volnas.training.plots import plot_history
from volnas.training.rundir import (
    build_datasets,
    build_model,
    check_start,
    epochs_seconds,
    history_seconds,
    model_profile,
    pin_augment,
    pin_genotype,
    positive_of,
    prepare_run_dir,
    remove_failed_start,
    resumed_config,
    run_dir_held,
)
from volnas.training.trainer import Trainer
from volnas.training.tta import COST as TTA_COST
from volnas.training.tta import TTA_MODES, predict_tta

# A cross-validation fold's predictions of its held-out scans (volnas.training.cv)
FOLD_PREDICTIONS = "predictions_fold.csv"


def run_training(
    cfg: TrainConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    given: dict[str, Any] | None = None,
    console: Console | None = None,
    test: bool = True,
    model: torch.nn.Module | None = None,
    deadline: float | None = None,
    fill: int | None = None,
) -> dict[str, Any]:
    """Train, pick the best validation checkpoint, test it once; returns the test metrics.

    With ``resume`` the run continues its saved configuration and ``cfg`` is not used:
    ``given`` holds the settings set at resume (YAML and flags, no defaults); those that
    would change the result are refused before anything is written. A new run that fails
    before its first checkpoint removes what it made, so the same ``run_dir`` can be retried.
    With ``test=False`` (architecture probes) the test split is not touched and the best
    validation metrics are returned instead. ``model`` overrides building ``cfg.model``.
    ``deadline`` (``time.time()``) stops the training before an epoch that would end after
    it (:class:`Trainer`); the best checkpoint so far is then tested. With ``fill`` as well
    (a search's budgeted retrain; ``cfg.time_budget`` sets it itself), the epochs are
    re-planned after the first, at most ``fill``, to end at the deadline (:attr:`Trainer.fill_epochs`).
    """
    started = time.time()
    console = console or make_console()
    run_dir = Path(run_dir)
    init_distributed(cfg.device)
    existed = run_dir.exists()
    if resume:
        prepare_run_dir(run_dir, resume)
        saved_epochs = load_saved_config(run_dir / "config.yaml").epochs
        cfg = resumed_config(run_dir, given)  # a refused change is refused before the lock
        with run_dir_held(run_dir):
            if dist_info().is_main:
                remove_stale_temporaries(run_dir)
            return _train(cfg, run_dir, resume=True, console=console, test=test, model=model,
                          saved_epochs=saved_epochs, deadline=deadline, started=started,
                          fill=fill)
    check_start(cfg, model_given=model is not None)
    prepare_run_dir(run_dir, resume)
    with run_dir_held(run_dir):
        prepare_run_dir(run_dir, resume)  # still empty now that it is ours
        try:
            return _train(cfg, run_dir, resume=False, console=console, test=test, model=model,
                          deadline=deadline, started=started, fill=fill)
        except Exception:
            if dist_info().is_main and not (run_dir / "checkpoint" / "last.json").exists():
                remove_failed_start(run_dir, existed)
            raise


def _train(
    cfg: TrainConfig,
    run_dir: Path,
    *,
    resume: bool,
    console: Console,
    test: bool,
    model: torch.nn.Module | None,
    saved_epochs: int | None = None,
    deadline: float | None = None,
    started: float | None = None,
    fill: int | None = None,
) -> dict[str, Any]:
    if not resume:  # a resumed run's files are pinned already
        if dist_info().is_main:
            if model is None:
                cfg = pin_genotype(cfg, run_dir)
            cfg = pin_augment(cfg, run_dir)
        cfg = broadcast_object(cfg)
    seed_everything(cfg.seed)
    source = open_source(cfg.data)
    if cfg.cv_fold is not None:  # a fold of `volnas cv`: the training split only
        if test:
            raise ValueError("a cross-validation fold has no test split: run it with test=False "
                             "(volnas cv does)")
        if cfg.patience is not None:
            raise ValueError("early stopping would choose on the held-out fold: volnas cv "
                             "trains every fold for --epochs (set patience to null)")
        f = cfg.cv_fold
        source = source.fold(f.folds, f.index, f.seed)
    positive = positive_of(cfg, source)
    ds = build_datasets(cfg, source, ("train", "val"))
    train_loader = make_loader(ds["train"], cfg.batch_size, train=True,
                               num_workers=cfg.num_workers, seed=cfg.seed)
    val_loader = make_loader(ds["val"], cfg.batch_size, train=False, num_workers=cfg.num_workers)
    if model is None:
        model = build_model(cfg.model, len(source.class_names), run_dir)
    device = resolve_device(cfg.device)
    if cfg.memory_check:  # before the budget's timed steps, which would not fit either
        check_run_memory(model, cfg.preprocess.input_shape, cfg.batch_size, unrolled=False,
                         augment=False, device=device, optimizer=cfg.optimizer,
                         channels_last=cfg.channels_last, what=f"training {cfg.model}",
                         hint=MEMORY_HINT)
    budget: dict[str, Any] = {}
    # calibration and the test pass, in validation passes (planned by a budget)
    n_test = len(source.split("test")) if test else 0
    planned = test and (cfg.time_budget is not None or fill is not None)
    passes = after_training_passes(cfg.tta, n_test, len(ds["val"])) if planned else 0.0
    if cfg.time_budget is not None:
        cfg, deadline, budget = _fit_budget(cfg, run_dir, model, (len(ds["train"]), len(ds["val"])),
                                            resume=resume, started=started or time.time(),
                                            deadline=deadline, console=console,
                                            post_passes=passes, n_test=n_test)
        passes = after_training_passes(cfg.tta, n_test, len(ds["val"])) if planned else 0.0
    earlier = _earlier_info(run_dir) if resume else {}
    extended = list(earlier.get("extended", []))
    if saved_epochs is not None and cfg.epochs != saved_epochs:
        extended.append({"from_epochs": saved_epochs, "to_epochs": cfg.epochs})
        cfg = cfg.model_copy(update={"last_epoch_batches": None})  # the new epochs are whole
    info = {
        "classes": source.class_names,
        "positive_class": positive,
        "data": str(cfg.data),
        "n_train": len(ds["train"]),
        "n_val": len(ds["val"]),
        "seed": cfg.seed,
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        **model_profile(model, cfg),
        **({"extended": extended} if extended else {}),
        **({"time_budget": budget} if budget else {}),
        **{k: earlier[k] for k in ("fill_plan", "deadline_cut") if k in earlier},
    }
    if dist_info().is_main:
        text = dump_config(cfg)
        path = run_dir / "config.yaml"
        if not path.is_file() or path.read_text() != text:
            atomic_write_text(path, text)
        atomic_write_text(run_dir / "run.json", json.dumps(info, indent=2))
    else:
        console = make_console(quiet=True)
    console.print(
        f"[bold]{escape(cfg.model)}[/]: {info['params']:,} params ({info['model_size_mb']:.2f} MB), "
        f"input {cfg.preprocess.input_shape}, {len(ds['train'])} train / {len(ds['val'])} val "
        f"scans, device {device}"
    )
    counts = [ds["train"].labels.count(i) for i in range(len(source.class_names))]
    trainer = Trainer(model, cfg, class_names=source.class_names, positive_class=positive,
                      device=device, run_dir=run_dir, console=console, class_counts=counts)
    trainer.deadline = deadline
    if budget:
        fill = int(budget.get("epochs_asked", cfg.epochs))
    if fill is not None and deadline is not None:
        trainer.fill_epochs = fill
        trainer.post_passes = passes
        trainer.post_seconds = ((info.get("fill_plan") or budget or {}).get(
            "after_training_seconds_estimate"))  # measured on epoch 1, else estimated
        if planned and cfg.tta == "auto":  # re-checked on epoch 1's measured validation pass
            stage = cfg.time_budget or max(deadline - time.time(), 0.0)
            trainer.plan_tta = functools.partial(plan_tta, "auto", n_test, len(ds["val"]),
                                                 budget_seconds=stage)

        def save_plan(planned: TrainConfig, key: str, record: dict[str, Any]) -> None:
            info[key] = record
            if dist_info().is_main:
                atomic_write_text(run_dir / "config.yaml", dump_config(planned))
                atomic_write_text(run_dir / "run.json", json.dumps(info, indent=2))

        trainer.on_plan = save_plan
    trainer.fit(train_loader, val_loader, resume=resume)
    if dist_info().is_main:
        plot_history(trainer.history, run_dir / "curves.png", best_epoch=trainer.best_epoch)
    # The epochs' own wall times: a resumed run counts the epochs of every process, not
    # only this one's (an epoch cut off by a stop is not counted).
    train_seconds = epochs_seconds(trainer.history)
    if cfg.cv_fold is not None:  # the held-out fold, predicted by the final weights
        probs, labels, _ = trainer.predict(val_loader)
        if dist_info().is_main:
            write_predictions(run_dir / FOLD_PREDICTIONS, ds["val"], labels, probs,
                              source.class_names)
    if not test:
        best = json.loads((run_dir / "best_val_metrics.json").read_text())
        return best | {"best_epoch": trainer.best_epoch, "train_seconds": train_seconds}
    temperature, tta = calibrate(trainer, val_loader, run_dir, console)
    metrics = test_once(trainer, cfg, source, run_dir, console, temperature, tta)
    metrics.update({"best_epoch": trainer.best_epoch, "train_seconds": train_seconds,
                    "world_size": dist_info().world_size})
    if started is not None:  # this process's wall time, from its start to the test's end
        metrics["run_seconds"] = round(time.time() - started, 2)
    if dist_info().is_main:
        atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2))
    return metrics


def _fit_budget(
    cfg: TrainConfig, run_dir: Path, model: torch.nn.Module, splits: tuple[int, int], *,
    resume: bool, started: float, deadline: float | None, console: Console,
    post_passes: float = 0.0, n_test: int = 0,
) -> tuple[TrainConfig, float, dict[str, Any]]:
    """``cfg.time_budget`` applied: the epochs that fit (a new run; a resumed one keeps its
    own), the deadline of the last epoch (the budget less :data:`RESERVE` for calibration and
    the test pass; a resume is charged the epochs already run, not the time lost to a kill),
    and what run.json records of it. ``post_passes`` validation passes follow the training
    (:func:`after_training_passes` of ``cfg.tta`` and ``n_test`` test scans); ``tta: auto``
    becomes ``none`` where trying flips would not fit (:func:`plan_tta`)."""
    assert cfg.time_budget is not None
    usable = cfg.time_budget * (1 - RESERVE)
    record: dict[str, Any] = {"seconds": cfg.time_budget,
                              "reserve_seconds": round(cfg.time_budget - usable, 2)}
    if resume:
        end = time.time() + usable - (history_seconds(run_dir) or 0.0)
        try:
            record = json.loads((run_dir / "run.json").read_text()).get("time_budget", record)
        except (OSError, ValueError, AttributeError):
            pass  # the first process's record is lost; this one's stands
    else:
        end = started + usable
        device = resolve_device(cfg.device)
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            per_step = estimate_step_seconds(copy.deepcopy(model), cfg)
        per_epoch = epoch_seconds(per_step, cfg, *splits)
        # calibration and the test pass, in validation passes of a third of a step per batch
        pass_seconds = per_step / 3 * math.ceil(splits[1] / cfg.batch_size)
        if n_test and cfg.tta == "auto":
            tta, passes, tta_record = plan_tta(cfg.tta, n_test, splits[1], pass_seconds,
                                               budget_seconds=cfg.time_budget)
            if tta != cfg.tta:
                cfg, post_passes = cfg.model_copy(update={"tta": tta}), passes
                record |= {"tta_plan": tta_record}
                console.print(f"time budget: {tta_record['why']}")
        post = post_passes * pass_seconds
        left = end - time.time() - post
        epochs = fit_epochs(per_epoch, left, cfg.epochs)
        first = None  # not even one epoch fits: the first (the only one planned) is cut to what does
        steps = max(splits[0] // cfg.batch_size, 1)
        if left < per_epoch:
            cut = max(int((left - (per_epoch - per_step * steps)) // per_step), 1)
            first = cut if cut < steps else None
        epochs, first = broadcast_object((int(epochs), first))
        record |= {"epoch_seconds_estimate": round(per_epoch, 2), "epochs_asked": cfg.epochs,
                   "epochs": epochs, "after_training_seconds_estimate": round(post, 2),
                   **({"first_epoch_batches": first} if first else {})}
        console.print(f"time budget {cfg.time_budget:.0f} s: {epochs} epoch(s) of about "
                      f"{per_epoch:.0f} s fit (at most {cfg.epochs} asked)"
                      + (f", cut to {first} of {steps} batches" if first else "")
                      + f"; about {post:.0f} s kept for calibration and the test")
        cfg = cfg.model_copy(update={"epochs": epochs, "last_epoch_batches": first})
    return cfg, end if deadline is None else min(deadline, end), record


def after_training_passes(tta: str, n_test: int, n_val: int) -> float:
    """The work after the last epoch in validation passes: choosing the test-time
    augmentation on the validation split (every mode tried), then the test pass with the
    costliest mode (:func:`calibrate`, :func:`test_once`)."""
    tried = list(TTA_MODES) if tta == "auto" else [tta]
    cost = {m: TTA_COST[m] for m in tried}
    return sum(cost.values()) + max(cost.values()) * n_test / max(n_val, 1)


def plan_tta(tta: str, n_test: int, n_val: int, pass_seconds: float, *,
             budget_seconds: float) -> tuple[str, float, dict[str, Any]]:
    """The test-time augmentation a budget of ``budget_seconds`` allows, the validation passes
    after training with it (:func:`after_training_passes`), and why (empty when ``tta``
    stands): ``auto`` tries flips only where that (its validation passes and the
    costlier test pass, beyond what ``none`` needs, at ``pass_seconds`` a validation pass)
    takes at most :data:`TTA_SHARE` of the budget, else it is ``none``. The time is kept
    before training starts, and is left unused whenever validation then prefers no TTA: a
    network whose epoch is most of the budget (MC3-18 in ten minutes on one core) would
    otherwise end a quarter of its budget early."""
    passes = after_training_passes(tta, n_test, n_val)
    if tta != "auto":
        return tta, passes, {}
    none = after_training_passes("none", n_test, n_val)
    extra = (passes - none) * pass_seconds
    if extra <= TTA_SHARE * budget_seconds:
        return tta, passes, {}
    return "none", none, {"tta_asked": "auto", "tta": "none", "flips_seconds_estimate": round(extra, 2),
                    "why": f"tta auto -> none: trying flips would take about {extra:.0f} s, "
                           f"more than {TTA_SHARE:.0%} of {budget_seconds:.0f} s"}


def _earlier_info(run_dir: Path) -> dict[str, Any]:
    """The run.json an earlier process of ``run_dir`` wrote (its extensions and budget
    plans are kept on resume); empty when missing or unreadable."""
    try:
        earlier = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return {}
    return earlier if isinstance(earlier, dict) else {}


def choose_tta(
    trainer: Trainer, val_loader: Any, console: Console,
) -> tuple[str, dict[str, Any], tuple[np.ndarray, np.ndarray]]:
    """The test-time augmentation of the run (``cfg.tta``; ``auto``: flips only if its
    validation ``select_metric`` beats none's), its record, and the validation probabilities
    and labels with it. Only the validation split is read."""
    mode = trainer.cfg.tta
    tried = list(TTA_MODES) if mode == "auto" else [mode]
    scores: dict[str, float] = {}
    preds: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for m in tried:
        probs, labels, loss = predict_tta(trainer, val_loader, m)
        metrics = compute_metrics(labels, probs, trainer.class_names, trainer.positive_class)
        metrics["loss"] = loss
        scores[m], preds[m] = select_metric(metrics, trainer.cfg.select_metric), (probs, labels)
    chosen = mode if mode != "auto" else ("flips" if scores["flips"] > scores["none"] else "none")
    record = {"tta": chosen, "tta_setting": mode, "tta_chosen_on": "val",
              "tta_select_metric": trainer.cfg.select_metric,
              "tta_val_scores": {m: _finite(v) for m, v in scores.items()}}
    if mode == "auto":
        console.print("test-time augmentation: " + ", ".join(
            f"{m} {_fmt(_finite(v))}" for m, v in scores.items())
            + f" (validation {trainer.cfg.select_metric}) -> {chosen}")
    return chosen, record, preds[chosen]


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def calibrate(
    trainer: Trainer, val_loader: Any, run_dir: Path, console: Console,
) -> tuple[float, str]:
    """With the best checkpoint, choose the test-time augmentation on the validation split
    (:func:`choose_tta`), then fit the temperature on the validation probabilities with it
    (never on test); write both to RUN_DIR/calibration.json; returns the temperature and
    the test-time augmentation."""
    load_model_state(trainer.net, run_dir / "model.safetensors")
    tta, tta_record, (probs, labels) = choose_tta(trainer, val_loader, console)
    t = fit_temperature(probs, labels)
    cal = apply_temperature(probs, t)
    record = {"temperature": t, "fitted_on": "val", "n_val": int(len(labels)), **tta_record,
              "best_epoch": trainer.best_epoch,
              "val_ece_before": ece(labels, probs), "val_ece_after": ece(labels, cal),
              "val_nll_before": nll(labels, probs), "val_nll_after": nll(labels, cal)}
    try:  # on the calibrated probabilities, as the test's are compared with it
        record["operating_point"] = choose_threshold(
            labels, cal, trainer.class_names, trainer.positive_class, trainer.cfg.operating_point)
    except ValueError as e:  # a validation split with one side only
        record["operating_point"] = None
        console.print(f"operating point: none ({e})")
    if dist_info().is_main:
        atomic_write_text(run_dir / CALIBRATION, json.dumps(record, indent=2))
    console.print(f"calibration: temperature {t:.3f} (validation ECE "
                  f"{record['val_ece_before']:.4f} -> {record['val_ece_after']:.4f})")
    op = record["operating_point"]
    if op:
        console.print(f"operating point ({op['rule']} on validation): P(positive) >= "
                      f"{op['threshold']:.3f}, validation sensitivity {op['sensitivity']:.3f}, "
                      f"specificity {op['specificity']:.3f}")
    return t, tta


def test_once(
    trainer: Trainer, cfg: TrainConfig, source: DataSource, run_dir: Path, console: Console,
    temperature: float | None = None, tta: str = "none",
) -> dict[str, Any]:
    """Load the best checkpoint and evaluate the test split — the only time it is read —
    with the test-time augmentation ``tta`` chosen on validation."""
    load_model_state(trainer.net, run_dir / "model.safetensors")
    test = build_datasets(cfg, source, ("test",))["test"]
    loader = make_loader(test, cfg.batch_size, train=False, num_workers=cfg.num_workers)
    metrics = evaluate_and_write(trainer, test, loader, run_dir, "test", temperature, tta,
                                 operating=read_operating_point(run_dir))
    cal = metrics["calibration"]
    cal_text = (f"  ECE {cal['ece']:.4f} -> {cal['ece_calibrated']:.4f} calibrated"
                if "ece_calibrated" in cal else f"  ECE {cal['ece']:.4f}")
    console.print(
        f"test ({metrics['n_scans']} scans, best epoch {trainer.best_epoch}): "
        f"acc {metrics['accuracy']:.4f}  f1 {metrics['f1']:.4f}  auc {_fmt(metrics['auc'])}"
        f"{_ci_text(metrics, 'auc')}{cal_text}" + ("  (TTA flips)" if tta != "none" else "")
    )
    op = metrics.get("operating_point")
    if op:
        ci = op["ci"]
        console.print(
            f"test at the validation operating point (P >= {op['threshold']:.3f}): " + "  ".join(
                f"{k} {_fmt(op[k])}" + (f" [{ci[k][0]:.3f}, {ci[k][1]:.3f}]" if ci[k] else "")
                for k in ("sensitivity", "specificity", "ppv", "npv")))
    return metrics


def _ci_text(metrics: dict[str, Any], key: str) -> str:
    ci = (metrics.get("ci") or {}).get(key)
    if not ci:
        return ""
    level = round(100 * metrics.get("ci_level", 0.95))
    return f" ({level}% CI {ci[0]:.3f}-{ci[1]:.3f}, {metrics.get('ci_unit', 'patient')}s resampled)"


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.4f}"
