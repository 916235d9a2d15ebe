"""`volnas train --time-budget`: the epochs that fit are set before the first, the run stops
on time and is tested, and sizing the budget changes nothing else of the run."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from volnas.cli.main import app
from volnas.data.synth import synthesize
from volnas.training.config import TrainConfig

runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, tiny_genotype) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("budget")
    res = synthesize(root / "d", scans=30, fmt="npz", classes=2, shape=(8, 16, 16), seed=4)
    return next(res.out.glob("*.npz")), tiny_genotype(root / "g.json")


def _train(data: tuple[Path, str], out: Path, *extra: str) -> None:
    _invoke(["train", "--data", str(data[0]), "--model", data[1], "--out", str(out),
             "--slices", "8", "--size", "16x16", "--batch-size", "4", "--seed", "2",
             "--device", "cpu", "--tta", "none", *extra])


def _resume(run: Path, *extra: str) -> None:
    _invoke(["train", "--out", str(run), "--resume", *extra])


def _invoke(args: list[str]) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = runner.invoke(app, args)
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output + repr(result.exception)


def _history(run: Path) -> list[dict[str, str]]:
    with (run / "history.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_time_budget_parses_durations() -> None:
    assert TrainConfig(time_budget="1.5m").time_budget == 90.0
    assert TrainConfig(time_budget=12).time_budget == 12.0
    with pytest.raises(ValueError, match="--time-budget"):
        TrainConfig(time_budget="ten minutes")


def test_a_budgeted_run_fits_its_epochs_stops_on_time_and_is_tested(data: tuple[Path, str],
                                                                   tmp_path: Path) -> None:
    budget = 6.0
    _train(data, tmp_path / "run", "--epochs", "500", "--time-budget", f"{budget}s")
    run = tmp_path / "run"
    info = json.loads((run / "run.json").read_text())
    record, plan = info["time_budget"], info["fill_plan"]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    history = _history(run)
    # the epochs were sized from timed steps, then re-planned on the first epoch's measured
    # time: far fewer than the 500 asked, and saved so a resume or a reader sees the
    # schedule the run used
    assert 1 <= record["epochs"] < 500 and record["epochs_asked"] == 500
    assert record["epoch_seconds_estimate"] > 0
    assert 1 <= plan["epochs"] < 500 and plan["epoch_seconds"] > 0
    assert saved["epochs"] == plan["epochs"] and saved["time_budget"] == budget
    assert saved["last_epoch_batches"] == plan["last_epoch_batches"]
    assert 1 <= len(history) <= plan["epochs"]
    # the work after training (calibration and the test pass) is planned from epoch 1's
    # validation pass
    assert plan["after_training_seconds_estimate"] > 0
    # no epoch ran past the budget less the reserve kept for calibration and the test pass
    assert sum(float(r["seconds"]) for r in history) <= budget - record["reserve_seconds"]
    assert json.loads((run / "metrics.json").read_text())["auc"] is not None


def test_sizing_the_budget_changes_nothing_else(data: tuple[Path, str], tmp_path: Path) -> None:
    """A budget that fits every epoch asked gives the unbudgeted run's numbers: the timed
    steps of the estimate run on a copy of the network and outside the seeded RNG."""
    _train(data, tmp_path / "plain", "--epochs", "2")
    _train(data, tmp_path / "budget", "--epochs", "2", "--time-budget", "1h")
    assert json.loads((tmp_path / "budget" / "run.json").read_text())["time_budget"]["epochs"] == 2
    keys = ("train_loss", "val_loss", "val_auc")
    plain = [[r[k] for k in keys] for r in _history(tmp_path / "plain")]
    budgeted = [[r[k] for k in keys] for r in _history(tmp_path / "budget")]
    assert plain == budgeted and len(plain) == 2


def test_a_resumed_budgeted_run_is_charged_the_epochs_it_ran(tmp_path: Path) -> None:
    """A resume keeps the saved epochs and gets what is left of the budget after the epochs
    already run (time lost to a kill is not charged)."""
    from rich.console import Console

    from volnas.training.run import _fit_budget

    (tmp_path / "history.csv").write_text("epoch,seconds\n1,30.0\n2,40.0\n")
    (tmp_path / "run.json").write_text(json.dumps({"time_budget": {"seconds": 100.0,
                                                                   "epochs": 5}}))
    cfg = TrainConfig(time_budget=100, epochs=5)
    now = time.time()
    out, deadline, record = _fit_budget(cfg, tmp_path, torch.nn.Linear(1, 1), (10, 5),
                                        resume=True, started=now, deadline=None,
                                        console=Console(quiet=True))
    assert out.epochs == 5 and record["epochs"] == 5
    assert deadline - now == pytest.approx(100 * 0.97 - 70, abs=1.0)
    # an earlier deadline given by the caller (a search's stage) wins
    _, earlier, _ = _fit_budget(cfg, tmp_path, torch.nn.Linear(1, 1), (10, 5), resume=True,
                                started=now, deadline=now + 5, console=Console(quiet=True))
    assert earlier == now + 5


def test_the_epoch_estimate_times_the_trainers_step() -> None:
    """The timed steps run in the Trainer's memory format (channels_last_3d is 1.6-5x faster
    for 3D convolutions on CPU, so timing the default format planned too few epochs)."""
    from volnas.training.budget import estimate_epoch_seconds

    class Spy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv3d(1, 2, 3)
            self.formats: list[bool] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.conv(x)  # 2 channels: its layout tells the formats apart (1 does not)
            self.formats.append(h.is_contiguous(memory_format=torch.channels_last_3d))
            return h.mean((2, 3, 4))

    for channels_last in (True, False):
        net = Spy()
        cfg = TrainConfig(batch_size=2, preprocess={"slices": 4, "size": (4, 4)}, device="cpu",
                          channels_last=channels_last)
        assert estimate_epoch_seconds(net, cfg, 8, 2) > 0
        assert net.formats == [channels_last] * 4


def test_a_bad_time_budget_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--data", str(tmp_path / "x.npz"), "--out",
                                 str(tmp_path / "run"), "--time-budget", "soon"])
    assert result.exit_code == 2
    assert "expected a duration like 45m" in result.output
    assert not (tmp_path / "run").exists()


def test_the_work_after_training_is_counted_in_validation_passes() -> None:
    from volnas.training.run import after_training_passes

    # tta none: the validation split once (calibration), the test split once
    assert after_training_passes("none", 300, 100) == pytest.approx(1 + 3)
    # tta auto: none (1 pass) and flips (4) on validation, then up to 4 passes of test
    assert after_training_passes("auto", 300, 100) == pytest.approx(5 + 4 * 3)
    assert after_training_passes("flips", 50, 100) == pytest.approx(4 + 4 * 0.5)


def test_the_fill_plan_cuts_the_last_epoch_to_what_fits() -> None:
    from volnas.training.budget import fill_plan

    # epochs of 10 s training + 2 s validation, 20 batches (0.5 s each); 30 s left after
    # epoch 1: two more whole epochs (24 s), then 6 s: 2 s of validation, 8 batches
    assert fill_plan(30.0, 10.0, 2.0, 20, cap=100) == (4, 8)
    # 25 s: two whole epochs, then 1 s, less than validation alone: no cut epoch
    assert fill_plan(25.0, 10.0, 2.0, 20, cap=100) == (3, None)
    assert fill_plan(30.0, 10.0, 2.0, 20, cap=3) == (3, None)  # the cap wins, whole
    assert fill_plan(-5.0, 10.0, 2.0, 20, cap=100) == (1, None)  # out of time already
    assert fill_plan(5.0, 10.0, 2.0, 20, cap=100) == (2, 6)  # a cut second epoch


def test_a_replanned_run_equals_the_run_planned_that_way_from_the_start(
        data: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The re-plan after epoch 1 changes the schedule's length and cuts the last epoch; the
    run is then the same, number for number, as one given those epochs and that cut from the
    start (epoch 1's learning rate does not depend on the schedule's length), and its last
    epoch trains on the cut's batches only. The plan is fixed here (a roomy budget, the
    planner replaced, the clock's say over the last epoch off) so that the machine's speed
    cannot change it."""
    import volnas.training.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "fill_plan", lambda *a, **k: (3, 2))
    monkeypatch.setattr(trainer_module.Trainer, "_deadline_cut", lambda self, batches: None)
    _train(data, tmp_path / "budget", "--epochs", "6", "--time-budget", "1h")
    info = json.loads((tmp_path / "budget" / "run.json").read_text())
    assert info["time_budget"]["epochs"] == 6  # the estimate fitted all 6 asked...
    assert (info["fill_plan"]["epochs"], info["fill_plan"]["last_epoch_batches"]) == (3, 2)
    saved = yaml.safe_load((tmp_path / "budget" / "config.yaml").read_text())
    assert (saved["epochs"], saved["last_epoch_batches"]) == (3, 2)  # ...the re-plan kept 3
    config = tmp_path / "planned.yaml"
    config.write_text(yaml.safe_dump({"last_epoch_batches": 2}))
    _train(data, tmp_path / "planned", "--epochs", "3", "--config", str(config))
    _train(data, tmp_path / "whole", "--epochs", "3")
    keys = ("lr", "train_loss", "train_acc", "val_loss", "val_auc")
    budgeted, planned, whole = (
        [[r[k] for k in keys] for r in _history(tmp_path / name)]
        for name in ("budget", "planned", "whole"))
    assert len(budgeted) == 3 and budgeted == planned
    assert whole[:2] == planned[:2] and whole[2] != planned[2]  # the cut changed epoch 3 only


def test_a_replanned_run_resumes_to_the_same_end(
        data: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed after the re-plan, a budgeted run resumes with the saved plan (its epochs and
    the cut last epoch) and ends with the unbroken run's numbers; extended afterwards, the
    new epochs are whole."""
    import volnas.training.trainer as trainer_module
    from volnas.training.trainer import Trainer

    monkeypatch.setattr(trainer_module, "fill_plan", lambda *a, **k: (3, 2))
    monkeypatch.setattr(Trainer, "_deadline_cut", lambda self, batches: None)
    _train(data, tmp_path / "full", "--epochs", "6", "--time-budget", "1h")
    real_epoch = Trainer.train_epoch

    def killed(self, loader, epoch, total=None, limit=None):  # noqa: ANN001, ANN202
        if epoch == 3:
            raise KeyboardInterrupt("simulated kill")
        return real_epoch(self, loader, epoch, total, limit)

    monkeypatch.setattr(Trainer, "train_epoch", killed)
    with pytest.raises(AssertionError, match=r"SystemExit\(130\)"):  # the CLI's exit on a kill
        _train(data, tmp_path / "broken", "--epochs", "6", "--time-budget", "1h")
    monkeypatch.setattr(Trainer, "train_epoch", real_epoch)
    monkeypatch.setattr(trainer_module, "fill_plan", lambda *a, **k: (6, None))  # unused now
    _resume(tmp_path / "broken")
    keys = ("lr", "train_loss", "val_loss", "val_auc")
    full, broken = ([[r[k] for k in keys] for r in _history(tmp_path / name)]
                    for name in ("full", "broken"))
    assert len(full) == 3 and full == broken
    plan = json.loads((tmp_path / "broken" / "run.json").read_text())["fill_plan"]
    assert (plan["epochs"], plan["last_epoch_batches"]) == (3, 2)  # the resume kept the record
    _resume(tmp_path / "broken", "--epochs", "4")
    saved = yaml.safe_load((tmp_path / "broken" / "config.yaml").read_text())
    assert (saved["epochs"], saved["last_epoch_batches"]) == (4, None)
    assert len(_history(tmp_path / "broken")) == 4


def test_a_filled_run_cuts_the_epoch_that_would_end_late(tmp_path: Path) -> None:
    """When the epochs run slower than the plan assumed, the epoch that would end after the
    deadline (less the time kept for calibration and the test) trains only the batches that
    fit, and is recorded; an epoch that fits is not cut, and with no time left none runs.
    The planned last epoch takes what fits, up to a whole epoch."""
    from rich.console import Console

    from volnas.training.trainer import Trainer

    trainer = Trainer(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)),
                      TrainConfig(epochs=10, device="cpu"), class_names=["a", "b"],
                      positive_class="b", device=torch.device("cpu"), run_dir=tmp_path,
                      console=Console(quiet=True))
    records: list[tuple[str, dict]] = []
    trainer.on_plan = lambda cfg, key, record: records.append((key, record))
    trainer.fill_epochs, trainer.post_seconds = 10, 4.0
    trainer._timing = [(10.0, 20, 2.0)]  # epochs of 20 batches: 0.5 s each, then 2 s
    trainer.epoch = 3
    trainer.deadline = time.time() + 4.0 + 30.0  # 30 s to go: a 12 s epoch fits
    assert trainer._deadline_cut(20) is None and not records
    trainer.deadline = time.time() + 4.0 + 7.2  # 7.2 s: 2 s validation, 10 batches
    assert trainer._deadline_cut(20) == 10
    assert records == [("deadline_cut", {"epoch": 4, "batches": 10, "planned": 20,
                                         "planned_epochs": 10})]
    trainer.deadline = time.time() + 4.0 + 1.0  # less than the validation alone
    assert trainer._deadline_cut(20) == 0
    # the planned last epoch (cut to 6 batches) gets what fits: more than planned when the
    # epochs ran faster than the first, up to a whole epoch, and nothing changes if as planned
    trainer.cfg = trainer.cfg.model_copy(update={"epochs": 4, "last_epoch_batches": 6})
    trainer.deadline = time.time() + 4.0 + 7.2
    assert trainer._deadline_cut(20) == 10
    trainer.deadline = time.time() + 4.0 + 30.0
    assert trainer._deadline_cut(20) == 20
    trainer.deadline = time.time() + 4.0 + 5.2
    assert trainer._deadline_cut(20) is None  # 6 batches fit, as planned
    trainer.fill_epochs = None  # a run that is not filled stops on whole epochs only
    assert trainer._deadline_cut(20) is None


def test_a_cut_epoch_is_the_last(data: tuple[Path, str], tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from volnas.training.trainer import Trainer

    monkeypatch.setattr(Trainer, "_deadline_cut",
                        lambda self, batches: 2 if self.epoch == 2 else None)
    _train(data, tmp_path / "cut", "--epochs", "6", "--time-budget", "1h")
    monkeypatch.undo()
    _train(data, tmp_path / "whole", "--epochs", "6")
    cut, whole = _history(tmp_path / "cut"), _history(tmp_path / "whole")
    assert len(cut) == 3 and len(whole) == 6
    keys = ("lr", "train_loss", "val_auc")
    assert [[r[k] for k in keys] for r in cut[:2]] == [[r[k] for k in keys] for r in whole[:2]]
    assert cut[2]["lr"] == whole[2]["lr"] and cut[2]["train_loss"] != whole[2]["train_loss"]
    assert json.loads((tmp_path / "cut" / "metrics.json").read_text())["auc"] is not None


def test_a_budget_too_short_for_one_epoch_cuts_the_first(
        data: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When one epoch and the calibration and test passes do not fit the budget (MC3-18 on
    one core in ten minutes: a 412 s epoch, then 272 s of set-up, calibration and test), the
    first epoch, planned as the only one, trains the batches that fit; the post-training
    time is part of the plan from the start."""
    import volnas.training.run as run_module

    monkeypatch.setattr(run_module, "estimate_step_seconds", lambda net, cfg: 1.0)
    _train(data, tmp_path / "run", "--epochs", "3", "--time-budget", "6s")
    record = json.loads((tmp_path / "run" / "run.json").read_text())["time_budget"]
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    # 21 training scans in batches of 4: 5 steps of "1 s", plus 3 validation scans and 5
    # BatchNorm batches at a third of a step: a 7 s epoch against 5.8 s usable, less the
    # "0.33 s" validation pass times (1 + 6 / 3) passes after training
    assert record["epoch_seconds_estimate"] == pytest.approx(7.0)
    assert record["after_training_seconds_estimate"] == pytest.approx(1.0, abs=0.01)
    assert record["epochs"] == 1 and 1 <= record["first_epoch_batches"] < 5
    # the real steps take milliseconds, not the "1 s" estimated: timed on the cut first
    # epoch, the re-plan after it fills the budget with the 2 epochs left of the 3 asked
    plan = json.loads((tmp_path / "run" / "run.json").read_text())["fill_plan"]
    assert (plan["epochs"], plan["last_epoch_batches"]) == (3, None) == (
        saved["epochs"], saved["last_epoch_batches"])
    assert len(_history(tmp_path / "run")) == 3


def test_the_time_left_after_a_cut_first_epoch_is_filled(tmp_path: Path) -> None:
    """A first epoch cut to the batches the estimate said fit (the only epoch planned) is
    timed per batch; when it ran faster than estimated, the re-plan after it adds the
    batches that fit before the deadline less the work after training, and nothing when
    none do."""
    from rich.console import Console

    from volnas.training.trainer import Trainer

    trainer = Trainer(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)),
                      TrainConfig(epochs=1, last_epoch_batches=8, device="cpu"),
                      class_names=["a", "b"], positive_class="b", device=torch.device("cpu"),
                      run_dir=tmp_path, console=Console(quiet=True))
    records: list[tuple[str, dict]] = []
    trainer.on_plan = lambda cfg, key, record: records.append((key, record))
    trainer.fill_epochs, trainer.post_passes = 10, 2.0
    trainer._timing = [(4.0, 8, 1.0)]  # 8 of 20 batches at 0.5 s, then 1 s of validation
    trainer.epoch = 1
    # 1 s validation passes, 2 of them after training; 15 s free after those: one whole
    # epoch (10 s + 1 s), then 4 s: 1 s of validation and 6 batches
    trainer.deadline = time.time() + 2.0 + 15.2
    trainer._fill(1.0, 20)
    assert (trainer.cfg.epochs, trainer.cfg.last_epoch_batches) == (3, 6)
    key, record = records[-1]
    assert key == "fill_plan" and record["epoch_seconds"] == pytest.approx(11.0)  # a whole epoch
    trainer.cfg = trainer.cfg.model_copy(update={"epochs": 1, "last_epoch_batches": 8})
    trainer.deadline = time.time() + 2.0 + 0.5  # as estimated: nothing more fits
    trainer._fill(1.0, 20)
    assert (trainer.cfg.epochs, trainer.cfg.last_epoch_batches) == (1, 8)  # as it ran
    assert records[-1][1]["last_epoch_batches"] == 8


def test_auto_tta_tries_flips_only_where_that_fits_a_tenth_of_the_budget() -> None:
    from volnas.training.run import plan_tta

    # 100 validation and 300 test scans: auto needs 1 + 4 validation passes and up to 4 x 3
    # for the test, none 1 + 3; flips costs 13 passes more
    assert plan_tta("auto", 300, 100, 1.0, budget_seconds=600.0) == ("auto", 17.0, {})  # 13 s
    mode, passes, record = plan_tta("auto", 300, 100, 5.0, budget_seconds=600.0)  # 65 s > 60
    assert (mode, passes) == ("none", 4.0)
    assert record["flips_seconds_estimate"] == pytest.approx(65.0)
    assert record["tta_asked"] == "auto" and "10%" in record["why"]
    # a mode the user set is theirs, whatever it costs
    assert plan_tta("flips", 300, 100, 100.0, budget_seconds=600.0) == ("flips", 16.0, {})
    assert plan_tta("none", 300, 100, 100.0, budget_seconds=600.0) == ("none", 4.0, {})


def test_a_budget_that_cannot_spare_the_flips_trial_plans_without_it(
        data: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MC3-18 in ten minutes on one core: trying flips after training would take a quarter
    of the budget, kept from the training and then unused when validation prefers no TTA.
    Such a run plans tta none from the start; one with room for it keeps auto."""
    import volnas.training.run as run_module

    monkeypatch.setattr(run_module, "estimate_step_seconds", lambda net, cfg: 1.0)
    _train(data, tmp_path / "tight", "--epochs", "3", "--time-budget", "6s", "--tta", "auto")
    run = tmp_path / "tight"
    record = json.loads((run / "run.json").read_text())["time_budget"]
    # "1/3 s" validation passes (3 scans, one batch): none needs 1 + 6 / 3 of them after
    # training, auto 5 + 4 x 2; the 10 passes more (3.3 s) are over 10 % of 6 s
    assert record["tta_plan"]["tta"] == "none"
    assert record["tta_plan"]["flips_seconds_estimate"] == pytest.approx(10 / 3, abs=0.01)
    assert record["after_training_seconds_estimate"] == pytest.approx(1.0, abs=0.01)
    assert yaml.safe_load((run / "config.yaml").read_text())["tta"] == "none"
    calibration = json.loads((run / "calibration.json").read_text())
    assert calibration["tta"] == "none" and set(calibration["tta_val_scores"]) == {"none"}

    _train(data, tmp_path / "roomy", "--epochs", "2", "--time-budget", "1h", "--tta", "auto")
    run = tmp_path / "roomy"
    info = json.loads((run / "run.json").read_text())
    assert "tta_plan" not in info["time_budget"] and "tta_plan" not in info["fill_plan"]
    assert yaml.safe_load((run / "config.yaml").read_text())["tta"] == "auto"
    assert set(json.loads((run / "calibration.json").read_text())["tta_val_scores"]) == {
        "none", "flips"}


def test_the_replan_on_epoch_one_drops_a_flips_trial_that_no_longer_fits(
        tmp_path: Path) -> None:
    """A search's budgeted retrain has no timed steps before it: epoch 1's measured
    validation pass decides, and the time it frees goes to training."""
    import functools

    from rich.console import Console

    from volnas.training.run import plan_tta
    from volnas.training.trainer import Trainer

    plan = functools.partial(plan_tta, "auto", 300, 100, budget_seconds=20.0)

    trainer = Trainer(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)),
                      TrainConfig(epochs=1, device="cpu", tta="auto"),
                      class_names=["a", "b"], positive_class="b", device=torch.device("cpu"),
                      run_dir=tmp_path, console=Console(quiet=True))
    records: list[tuple[str, dict]] = []
    trainer.on_plan = lambda cfg, key, record: records.append((key, record))
    trainer.fill_epochs, trainer.post_passes, trainer.plan_tta = 10, 17.0, plan
    trainer._timing = [(10.0, 20, 1.0)]  # a whole epoch: 20 batches at 0.5 s, 1 s validation
    trainer.epoch = 1
    # 1 s validation passes: flips would take 13 s more, over 2 s (10 % of 20): none's 4
    # passes are kept, and 15.2 s after them fit one more epoch and 6 batches
    trainer.deadline = time.time() + 4.0 + 15.2
    trainer._fill(1.0, 20)
    assert trainer.cfg.tta == "none" and trainer.post_passes == pytest.approx(4.0)
    assert (trainer.cfg.epochs, trainer.cfg.last_epoch_batches) == (3, 6)
    key, record = records[-1]
    assert key == "fill_plan" and record["tta_plan"]["tta"] == "none"
    assert record["after_training_seconds_estimate"] == pytest.approx(4.0)
