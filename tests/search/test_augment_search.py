"""Joint search of augmentation and architecture (MedPipe)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from volnas.cli.main import app
from volnas.data.augment import Policy
from volnas.data.synth import synthesize
from volnas.models.genotype import Genotype
from volnas.models.spaces import layer_specs
from volnas.search.augment_search import AugmentSearch
from volnas.search.config import SearchConfig
from volnas.search.search import SearchTrainer

runner = CliRunner()


def test_augment_layer_passes_gradient_to_its_logits() -> None:
    aug = AugmentSearch()
    x = torch.rand(4, 1, 8, 16, 16, requires_grad=True)
    out = aug(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    (out * torch.randn_like(out)).sum().backward()
    grads = [p.grad for p in aug.alpha.logits]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert x.grad is not None
    # the same generator seed reproduces the same batch
    a = aug(x.detach(), torch.Generator().manual_seed(5))
    b = aug(x.detach(), torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b)


def test_argmax_policy_and_identity_start() -> None:
    aug = AugmentSearch()
    pol = aug.policy()  # at the start the identity (p = 0) is each type's most likely candidate
    assert isinstance(pol, Policy) and len(pol) == 13
    assert pol.describe() == []
    with torch.no_grad():
        aug.alpha.logits[4][aug.choices[4].index(((-15.0, 15.0), 0.8))] = 5.0
    assert pol.describe() == [] and aug.policy().describe() == ["(rotate_v; (-15, 15); 0.8)"]


def _level_mass(aug: AugmentSearch) -> list[dict[float, float]]:
    out = []
    for probs, cands in zip(aug.alpha.probs(), aug.choices, strict=True):
        mass: dict[float, float] = {}
        for pr, (_, p) in zip(probs.tolist(), cands, strict=True):
            mass[p] = mass.get(p, 0.0) + pr
        out.append(mass)
    return out


def test_probability_prior_gives_each_level_a_third_and_candidates_prior_is_uniform() -> None:
    prob, cand = AugmentSearch(), AugmentSearch(prior="candidates")
    for mass, cands in zip(_level_mass(prob), prob.choices, strict=True):
        assert mass == pytest.approx({0.0: 1 / 3, 0.5: 1 / 3, 0.8: 1 / 3}), cands
    # uniform over candidates: the identity is 1 of 2M + 1 (rotations: M = 25 -> 1/51)
    sizes = [len(c) for c in cand.choices]
    for mass, n in zip(_level_mass(cand), sizes, strict=True):
        assert mass[0.0] == pytest.approx(1 / n)
    assert max(sizes) == 51
    # expected probability of applying an op: (0 + 0.5 + 0.8) / 3 against ~0.56
    assert prob.expected_strength() == pytest.approx(1.3 / 3)
    assert cand.expected_strength() > 0.55
    # both start "undecided"; only the uniform start exports an augmentation when undecided
    assert prob.alpha.decision()["entropy_ratio"] == pytest.approx(1.0)
    assert cand.alpha.decision()["entropy_ratio"] == pytest.approx(1.0)
    assert prob.policy().describe() == []
    # the sampler draws from the prior: about a third of rotate_v's draws are the identity
    k = prob.types.index("rotate_v")
    gen = torch.Generator().manual_seed(0)
    prob.alpha.tau = cand.alpha.tau = 1.0
    draws = [prob.alpha.sample(gen)[k][1] for _ in range(600)]
    assert abs(sum(i == 0 for i in draws) / 600 - 1 / 3) < 0.06
    draws = [cand.alpha.sample(gen)[k][1] for _ in range(600)]
    assert sum(i == 0 for i in draws) / 600 < 0.06
    with pytest.raises(ValueError, match="unknown augmentation prior"):
        AugmentSearch(prior="flat")  # type: ignore[arg-type]


def test_unknown_aug_prior_is_refused_before_anything_runs(manifest: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["search", "--data", str(manifest), "--out", str(tmp_path / "r"),
                              "--space", "medpipe", "--aug-prior", "flat"])
    assert res.exit_code == 2 and "--aug-prior" in res.output and "probability" in res.output
    assert not (tmp_path / "r").exists()


def test_saved_search_config_without_aug_prior_keeps_the_prior_it_ran_with(tmp_path: Path) -> None:
    from volnas.search.run import load_saved_search_config

    assert SearchConfig(data="x.npz").aug_prior == "probability"
    saved = SearchConfig(data="x.npz", space="medpipe").model_dump(mode="json")
    saved.pop("aug_prior")  # written before the field existed
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(saved))
    assert load_saved_search_config(tmp_path / "old.yaml").aug_prior == "candidates"
    saved["aug_prior"] = "probability"
    (tmp_path / "new.yaml").write_text(yaml.safe_dump(saved))
    assert load_saved_search_config(tmp_path / "new.yaml").aug_prior == "probability"
    saved["aug_prior"] = "flat"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(ValueError, match="bad.yaml"):
        load_saved_search_config(tmp_path / "bad.yaml")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("augsearch")
    res = synthesize(root / "data", scans=24, fmt="npz", classes=2, shape=(8, 16, 16), seed=9)
    return next(res.out.glob("*.npz"))


def _search(manifest: Path, out: Path, *extra: str) -> dict:
    # covidnet3d-s keeps the supernet cheap (fixed strides, unfitted: its late cells run on
    # 1^3 maps; fitting is tested in test_search); medpipe runs in test_cli
    args = ["search", "--data", str(manifest), "--space", "covidnet3d-s", "--out", str(out),
            "--no-fit-strides",
            "--epochs", "2", "--topk", "1", "--probe-epochs", "1", "--retrain-epochs", "1",
            "--slices", "8", "--size", "16x16", "--batch-size", "4", "--arch-lr", "0.05",
            "--strategy", "differentiable", *extra]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    return json.loads((out / "result.json").read_text())


def _aug_logits(run: Path) -> dict[str, torch.Tensor]:
    from volnas.core.files import load_tensors

    ckpt = json.loads((run / "search" / "checkpoint" / "last.json").read_text())
    t = load_tensors(run / "search" / "checkpoint" / ckpt["file"])
    return {k: v for k, v in t.items() if k.startswith("model.aug.")}


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "objective", "prior"),
                         [("joint", "paper", None), ("joint", "unrolled", "candidates"),
                          ("only", "paper", None), ("decoupled", "paper", "probability"),
                          ("off", "paper", None)])
def test_every_mode_end_to_end(manifest: Path, tmp_path: Path, monkeypatch, mode: str,
                               objective: str, prior: str | None) -> None:
    monkeypatch.setenv("VOLNAS_CACHE_DIR", str(tmp_path / "cache"))
    run = tmp_path / "run"
    extra = ("--aug-prior", prior) if prior else ()
    result = _search(manifest, run, "--augment-search", mode, "--objective", objective, *extra)
    saved = yaml.safe_load((run / "search_config.yaml").read_text())
    assert saved["aug_prior"] == (prior or "probability")
    logits = _aug_logits(run)
    # how decided the search ended, beside the result; 2 epochs cannot decide 13 layers
    decision = result["decision"]
    assert set(decision) == ({"augmentation"} if mode == "only" else {"architecture"}
                             if mode == "off" else {"architecture", "augmentation"})
    # (above 1 where a prior start has moved towards uniform)
    assert all(0.9 < d["entropy_ratio"] < 1.1 for d in decision.values()), decision
    if "architecture" in decision:  # skip layers of the exported (argmax) architecture
        last = list(csv.DictReader((run / "search" / "search_log.csv").open()))[-1]
        ops = Genotype.from_string(last["genotype"]).ops
        assert decision["architecture"]["skip_layers"] == ops.count("skip")
        assert decision["architecture"]["skippable_layers"] == sum(
            "skip" in sp.candidates for sp in layer_specs("covidnet3d-s")) == 21
    if mode == "off":
        assert logits == {} and result["policy"] is None
        return
    assert len(logits) == 13
    assert max(float(v.abs().max()) for v in logits.values()) > 1e-3  # the logits moved
    log = list(csv.DictReader((run / "search" / "search_log.csv").open()))
    assert all(r["policy_json"] for r in log)
    geno = json.loads((run / "genotype.json").read_text())
    assert "augment_policy" in geno["extra"]
    # the retrain trains with the searched policy, pinned in its run folder
    assert (run / "final" / "augment_policy.json").exists()
    assert Policy.load(run / "final" / "augment_policy.json").to_list() == geno["extra"]["augment_policy"]
    out = runner.invoke(app, ["genotype", "show", str(run / "genotype.json")]).output
    assert "augmentation policy" in out


def test_evaluation_never_augments(manifest: Path, tmp_path: Path, monkeypatch) -> None:
    """The evaluation path (validation and test) never calls the augmentation."""
    calls = {"train": 0, "eval": 0}
    real = SearchTrainer.augment

    def spy(self, x):
        calls["eval" if not self.net.training else "train"] += 1
        return real(self, x)

    monkeypatch.setattr(SearchTrainer, "augment", spy)
    real_predict = SearchTrainer.predict

    def predict(self, loader):
        before = dict(calls)
        out = real_predict(self, loader)
        assert calls == before, "augmentation ran during evaluation"
        return out

    monkeypatch.setattr(SearchTrainer, "predict", predict)
    monkeypatch.setenv("VOLNAS_CACHE_DIR", str(tmp_path / "cache"))
    _search(manifest, tmp_path / "run", "--augment-search", "joint")
    assert calls["train"] > 0 and calls["eval"] == 0


def test_search_config_modes() -> None:
    assert SearchConfig(space="medpipe").aug_mode == "joint"
    assert SearchConfig(space="covidnet3d-s").aug_mode == "off"
    assert SearchConfig(space="covidnet3d-s", augment_search="only").aug_mode == "only"


@pytest.mark.parametrize("prior", ["probability", "candidates"])
def test_logit_weight_decay_pulls_towards_the_start_not_zero(tmp_path: Path, prior: str) -> None:
    from volnas.search.supernet import SuperNet

    search = SearchConfig(data="x.npz", space="covidnet3d-s", augment_search="joint",
                          aug_prior=prior, arch_lr=0.05, arch_weight_decay=0.1)
    trainer = SearchTrainer(SuperNet("covidnet3d-s"), search.search_train_config(), search,
                            (1, 8, 16, 16), class_names=["0", "1"], positive_class="1",
                            device=torch.device("cpu"), run_dir=tmp_path)
    assert trainer.aug is not None
    start = [t.clone() for t in trainer.aug.alpha.start_logits()]
    with torch.no_grad():
        for p in [*trainer.supernet.alpha.logits, *trainer.aug.alpha.logits]:
            p.add_(1.0)  # move every logit off its start by the same amount
    params = [*trainer.supernet.alpha.logits, *trainer.aug.alpha.logits]
    for _ in range(10):  # no loss gradient: only the decay acts (Adam: ~lr a step)
        trainer._apply_logit_grads(params, tuple(torch.zeros_like(p) for p in params))
    for p, s in zip(trainer.aug.alpha.logits, start, strict=True):
        off = (p.detach() - s)
        assert torch.allclose(off, off[0].expand_as(off))  # the shape of the prior is kept
        assert 0.0 < float(off[0]) < 1.0  # and the offset shrinks towards it
    for p in trainer.supernet.alpha.logits:  # uniform start: towards zero, as Adam's L2
        assert 0.0 < float(p.detach()[0]) < 1.0
    # the distributions are still the start's: decay towards the start changes no probability
    for probs, s in zip(trainer.aug.alpha.probs(), start, strict=True):
        torch.testing.assert_close(probs, torch.softmax(s, -1))
