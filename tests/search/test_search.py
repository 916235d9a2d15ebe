"""Architecture search: sampler, supernet, genotypes, the bi-level step, the CLI end to end."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from volnas.models.genotype import Genotype
from volnas.models.mbconv import MBConv3D
from volnas.models.profile import count_params
from volnas.models.spaces import layer_specs
from volnas.search.sampler import (
    ChoiceLogits,
    TemperatureSchedule,
    score_function_gradient,
    st_gumbel_softmax,
)
from volnas.search.supernet import ChoiceLayer, SuperNet


def test_st_gumbel_is_hard_forward_soft_backward() -> None:
    logits = torch.zeros(5, requires_grad=True)
    w, idx = st_gumbel_softmax(logits, tau=1.0, generator=torch.Generator().manual_seed(0))
    assert w.tolist().count(1.0) == 1 and w.sum().item() == pytest.approx(1.0)
    assert int(idx) == int(w.argmax())
    (w * torch.arange(5.0)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # samples follow the distribution: a dominant logit is drawn most of the time
    g = torch.Generator().manual_seed(1)
    picks = [int(st_gumbel_softmax(torch.tensor([3.0, 0, 0]), 1.0, g)[1]) for _ in range(400)]
    assert 0.8 < picks.count(0) / 400 < 0.98  # softmax([3,0,0])[0] = 0.909


def test_temperature_schedule() -> None:
    s = TemperatureSchedule(5.0, 0.5, "exp")
    assert s(0) == pytest.approx(5.0) and s(1) == pytest.approx(0.5)
    assert s(0.5) == pytest.approx(math.sqrt(5.0 * 0.5))
    assert TemperatureSchedule(4, 1, "linear")(0.5) == pytest.approx(2.5)


class _Scale(nn.Module):
    def __init__(self, s: float) -> None:
        super().__init__()
        self.s = s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.s


class _Noisy(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.randn_like(x)


def test_logits_move_to_the_better_candidate_and_indifferent_layer_stays_uniform() -> None:
    torch.manual_seed(0)
    # The straight-through gradient of a candidate is dL/d(scale of its output): zero for the
    # exact one, positive (pushed down) for a noisy or a sign-flipped one.
    good = ChoiceLayer([_Scale(1.0), _Noisy(), _Scale(-1.0)], ("id", "noisy", "neg"))
    same = ChoiceLayer([nn.Identity(), nn.Identity(), nn.Identity()], ("a", "b", "c"))
    alpha = ChoiceLogits([3, 3], ["good", "same"])
    opt = torch.optim.Adam(alpha.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        x = torch.randn(16, 4)
        sample = alpha.sample(gen)
        for layer, (w, i) in zip((good, same), sample, strict=True):
            layer.index, layer.weight = i, w
        loss = F.mse_loss(same(good(x)), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    p_good, p_same = alpha.probs()
    assert p_good[0] > 0.8, p_good
    h_same = alpha.entropy()[1]
    assert h_same > 0.9 * math.log(3), p_same


def test_score_function_gradient_is_the_gradient_of_the_expected_loss() -> None:
    """Averaged over many groups of paths, the leave-one-out REINFORCE estimate equals the
    analytic gradient of E[loss] = sum_c p_c L_c (row 0), and a row the loss ignores gets a
    gradient of about zero (row 1)."""
    torch.manual_seed(0)
    logits = [torch.tensor([0.5, -0.2, 0.1, 0.0]), torch.zeros(3)]
    cost = torch.tensor([1.0, 0.2, 0.6, 0.9])
    p = torch.softmax(logits[0], -1)
    exact = p * (cost - (p * cost).sum())
    gen = torch.Generator().manual_seed(1)
    total = [torch.zeros(4), torch.zeros(3)]
    groups = 6000
    for _ in range(groups):
        paths = [[int(torch.multinomial(torch.softmax(a, -1), 1, generator=gen)) for a in logits]
                 for _ in range(4)]
        losses = torch.stack([cost[q[0]] + 0.3 * torch.randn((), generator=gen) for q in paths])
        for t, g in zip(total, score_function_gradient(logits, paths, losses), strict=True):
            t += g / groups
    assert torch.allclose(total[0], exact, atol=0.01), (total[0], exact)
    assert total[1].abs().max() < 0.01, total[1]
    # the batch's difficulty (a constant added to every path's loss) changes nothing
    paths = [[0, 1], [2, 0], [1, 2]]
    losses = torch.tensor([0.3, 0.7, 0.4])
    for a, b in zip(score_function_gradient(logits, paths, losses),
                    score_function_gradient(logits, paths, losses + 5.0), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match=">= 2 paths"):
        score_function_gradient(logits, paths[:1], losses[:1])


def test_decision_measures_distance_from_uniform_and_warns_when_undecided() -> None:
    from volnas.search.run import UNDECIDED_RATIO, undecided_warning

    alpha = ChoiceLogits([3, 5])
    d = alpha.decision()
    assert d["entropy_ratio"] == pytest.approx(1.0)
    assert d["argmax_prob"] == pytest.approx(d["start_prob"]) == pytest.approx((1 / 3 + 1 / 5) / 2)
    with torch.no_grad():
        alpha.logits[0][1] = 20.0  # row 0 decided, row 1 uniform
    d = alpha.decision()
    assert d["entropy"] == pytest.approx(math.log(5) / 2, rel=1e-6)
    assert d["entropy_ratio"] == pytest.approx(math.log(5) / (math.log(3) + math.log(5)), rel=1e-6)
    assert d["argmax_prob"] == pytest.approx((1 + 1 / 5) / 2, rel=1e-6)
    assert d["entropy_ratio"] < UNDECIDED_RATIO
    assert undecided_warning({"architecture": d}) is None
    msg = undecided_warning({"architecture": d,
                             "augmentation": ChoiceLogits([3, 3]).decision()})
    assert msg is not None and "augmentation entropy 100.0% of its start" in msg
    assert "architecture" not in msg and "--search-epochs" in msg


def test_decision_of_an_older_run_from_its_search_log(tmp_path) -> None:
    from volnas.data.augment import AUG_TYPES, candidates
    from volnas.search.run import decision_from_log

    (tmp_path / "search").mkdir()
    (tmp_path / "search" / "search_log.csv").write_text(
        "epoch,mean_entropy,aug_entropy\n1,1.0,2.0\n2,0.5,1.5\n")  # the last epoch counts
    d = decision_from_log(tmp_path, "medpipe", "joint")
    sizes = [len(sp.candidates) for sp in layer_specs("medpipe") if sp.searchable]
    u_arch = sum(math.log(n) for n in sizes) / len(sizes)
    u_aug = sum(math.log(len(candidates(t))) for t in AUG_TYPES) / len(AUG_TYPES)
    assert d["architecture"]["entropy_ratio"] == pytest.approx(0.5 / u_arch)
    assert d["augmentation"]["entropy_ratio"] == pytest.approx(1.5 / u_aug)
    assert set(decision_from_log(tmp_path, "medpipe", "only")) == {"augmentation"}
    assert decision_from_log(tmp_path / "missing", "medpipe", "joint") == {}


def test_exactly_one_candidate_runs_per_layer() -> None:
    net = SuperNet("medpipe", 1, 2)
    calls: dict[int, int] = {}
    for li, layer in enumerate(net.choice_layers):
        for cand in layer.candidates:
            cand.register_forward_hook(lambda *_, li=li: calls.__setitem__(li, calls.get(li, 0) + 1))
    net.train()
    net(torch.randn(2, 1, 8, 16, 16))
    assert len(calls) == len(net.choice_layers) == len(net.alpha)
    assert set(calls.values()) == {1}


def test_logits_receive_gradient_through_the_supernet() -> None:
    """Whole-output weighting: every row gets a gradient. Branch weighting (the default): a
    row gets what its sampled branch adds (nothing for skip, nothing while a zero-initialised
    block is still the identity), and the same value of the output either way."""
    torch.manual_seed(0)
    net = SuperNet("covidnet3d-s", 1, 2)
    net.train()
    x, y = torch.randn(2, 1, 8, 16, 16), torch.tensor([0, 1])

    def grads(branch: bool) -> tuple[torch.Tensor, list]:
        net.branch_gradient = branch
        net.generator = torch.Generator().manual_seed(5)
        out = net(x)
        return out, list(torch.autograd.grad(F.cross_entropy(out, y), net.arch_parameters(),
                                             allow_unused=True))

    out_whole, whole = grads(False)
    assert all(g is not None and g.abs().sum() > 0 for g in whole)
    out_branch, at_init = grads(True)
    assert torch.equal(out_whole, out_branch)
    assert all(g is None or g.abs().sum() == 0 for g in at_init)  # every block is the identity
    with torch.no_grad():  # blocks that have learnt something
        for m in net.modules():
            if isinstance(m, MBConv3D) and m.residual:
                m.project[1].weight.normal_()
    _, trained = grads(True)
    ops = [layer.names[layer.index] for layer in net.choice_layers]
    assert "skip" in ops and any(op != "skip" for op in ops)
    for op, g in zip(ops, trained, strict=True):
        assert (g is None) == (op == "skip"), op
        assert g is None or g.abs().sum() > 0


def test_genotype_round_trip_and_derived_equals_supernet_path(tmp_path) -> None:
    torch.manual_seed(0)
    net = SuperNet("medpipe", 1, 3)
    gen = torch.Generator().manual_seed(3)
    idx = [int(torch.randint(0, len(layer.candidates), (1,), generator=gen)) for layer in net.choice_layers]
    geno = net.genotype(idx, input_shape=(1, 8, 16, 16))
    assert Genotype.from_string(geno.to_string(), num_classes=3).ops == geno.ops
    geno.save(tmp_path / "g.json")
    back = Genotype.load(tmp_path / "g.json")
    assert back.to_dict() == geno.to_dict()
    derived = back.build()
    assert count_params(derived) == net.path_params(idx)
    derived.load_state_dict(net.path_state_dict(idx), strict=True)
    net.eval()
    net.fixed_path = idx
    x = torch.randn(2, 1, 8, 16, 16)
    torch.testing.assert_close(derived.eval()(x), net(x))
    # the derived net holds no unused candidates
    assert len(derived.state_dict()) == len(net.path_state_dict(idx))


def test_genotype_rejects_bad_ops() -> None:
    ops = [s.candidates[0] for s in layer_specs("covidnet3d-s")]
    ops[3] = "k9e9"
    with pytest.raises(ValueError, match="cell1.layer2"):
        Genotype("covidnet3d-s", ops)
    with pytest.raises(ValueError, match="layers"):
        Genotype("covidnet3d-s", ops[:-1])


def _search_trainer(tmp_path, **settings) -> tuple:
    """A SearchTrainer over covidnet3d-s built from settings as ``volnas search`` builds them."""
    from volnas.search.run import load_search_config
    from volnas.search.search import SearchTrainer

    cfg = load_search_config(None, {"data": "unused.csv", "slices": 8, "size": (16, 16),
                                    **settings})
    torch.manual_seed(0)
    net = SuperNet(cfg.space, 1, 2)
    trainer = SearchTrainer(net, cfg.search_train_config(), cfg, cfg.preprocess.input_shape,
                            class_names=["a", "b"], positive_class="b",
                            device=torch.device("cpu"), run_dir=tmp_path)
    return trainer, net


@pytest.mark.parametrize("target", [3.5, 7.0])
def test_target_params_steers_expected_params(tmp_path, target: float) -> None:
    """--target-params: the trainer's own penalty moves the expected size towards the target."""
    trainer, net = _search_trainer(tmp_path, target_params=target, arch_lr=0.05)
    start = net.expected_params().item() / 1e6
    assert 3.5 < start < 7.0  # the targets lie on both sides of the start
    for _ in range(30):
        penalty = trainer.cost_penalty()
        params = net.arch_parameters()
        trainer._apply_logit_grads(params, torch.autograd.grad(penalty, params))
    end = net.expected_params().item() / 1e6
    assert abs(math.log(end / target)) < 0.7 * abs(math.log(start / target)), (start, end)
    skip_prob = [p[-1].item() for p in net.alpha.probs()]  # "skip" is the last candidate
    assert (min(skip_prob) > 1 / 8) == (target < start)


def test_no_cost_settings_mean_no_penalty(tmp_path) -> None:
    trainer, net = _search_trainer(tmp_path)
    assert trainer.cost_penalty() is None
    trainer, net = _search_trainer(tmp_path, cost_weight=0.1)
    assert trainer.cost_penalty().item() == pytest.approx(0.1 * net.expected_params().item() / 1e6)


def test_stride_budget_bounds_sampled_and_exported_paths() -> None:
    """medpipe: paths far beyond the paper strides' activation memory are never run."""
    from volnas.models.spaces import REFERENCE_STRIDES

    net = SuperNet("medpipe", 1, 2, stride_budget=2.0)
    ref = net.stride_cost(REFERENCE_STRIDES)
    assert net.stride_cost((1,) * 7) > 50 * ref and net.stride_cost((2,) * 7) < ref
    rows = net._stride_rows
    assert len(rows) == 7
    # logits that strongly prefer stride 1 everywhere: samples and the argmax stay in budget
    with torch.no_grad():
        for r in rows:
            net.alpha.logits[r].copy_(torch.tensor([3.0, 0.0]))
    net.train()
    net.generator = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(100):
        idx = net.sample_path()
        strides = net.path_strides(idx)
        seen.add(strides)
        assert net.stride_cost(strides) <= 2.0 * ref + 1e-9
    assert len(seen) > 3  # still a distribution, not one forced pattern
    best = net.path_strides(net.argmax_path())
    assert net.stride_cost(best) <= 2.0 * ref and best.count(1) >= 2
    assert net.genotype().ops == net.genotype(net.argmax_path()).ops
    # the straight-through weights still carry a gradient to the stride logits
    loss = F.cross_entropy(net(torch.randn(2, 1, 8, 16, 16)), torch.tensor([0, 1]))
    grads = torch.autograd.grad(loss, [net.alpha.logits[r] for r in rows], allow_unused=True)
    assert sum(g is not None and g.abs().sum() > 0 for g in grads) >= 4
    # without a budget the all-stride-1 path is allowed
    free = SuperNet("medpipe", 1, 2, stride_budget=None)
    assert free.feasible([0] * len(free.alpha))
    assert not net.feasible([0] * len(net.alpha))


def test_top_k_leaves_out_the_warm_up_epochs_argmax() -> None:
    """During warm-up the logits are at their start: the argmax is a tie-break, not a pick."""
    from volnas.search.run import top_k

    log = [{"epoch": 1, "score": 0.90, "genotype": "first-candidates"},
           {"epoch": 2, "score": 0.90, "genotype": "first-candidates"},
           {"epoch": 3, "score": 0.70, "genotype": "a"},
           {"epoch": 4, "score": 0.80, "genotype": "b"},
           {"epoch": 5, "score": 0.80, "genotype": "a"}]
    picked = top_k(log, 2, warmup=2)
    assert [r["genotype"] for r in picked] == ["a", "b"]  # tie 0.80: the later epoch first
    assert picked[0]["record"] == {"search_epoch": 5, "search_score": 0.80}
    # a search that is all warm-up still returns its candidates
    assert [r["genotype"] for r in top_k(log[:2], 3, warmup=2)] == ["first-candidates"]


def test_kernel_geometry_finds_the_layers_where_kernels_coincide() -> None:
    """At 28^3 covidnet3d-s runs cells 3-6 on 2^3 and 1^3 maps, where k3, k5 and k7 compute
    the same function: the layers' 8 candidates are 4 functions; at 56^3 only cells 5-6."""
    from volnas.models.spaces import acts_as, degenerate_layers_warning, kernel_geometry

    rows = kernel_geometry("covidnet3d-s", (28, 28, 28))
    assert len(rows) == 21
    assert [r["extent"][0] for r in rows] == [7] * 4 + [4] * 4 + [2] * 8 + [1] * 5
    assert [r["distinct"] for r in rows] == [8] * 8 + [4] * 13
    # the function is the same: k7 with its centre 3^3 taps equals k3 on a 2^3 map
    x = torch.randn(1, 4, 2, 2, 2)
    w7 = torch.randn(4, 1, 7, 7, 7)
    y7 = F.conv3d(x, w7, padding=3, groups=4)
    y3 = F.conv3d(x, w7[:, :, 2:5, 2:5, 2:5], padding=1, groups=4)
    assert torch.allclose(y7, y3, atol=1e-5)
    assert "13 of 21" in degenerate_layers_warning("covidnet3d-s", (28, 28, 28))
    assert [r["distinct"] for r in kernel_geometry("covidnet3d-s", (56, 56, 56))].count(4) == 5
    assert degenerate_layers_warning("covidnet3d-s", (56, 56, 56)) is None
    assert acts_as("k7e3", (2, 2, 2)) == "3x3x3" and acts_as("k5e4", (1, 4, 4)) == "1x5x5"
    assert acts_as("k3e6", (1, 1, 1)) == "1x1x1"
    assert acts_as("k7e3", (7, 7, 7)) is None and acts_as("skip", (1, 1, 1)) is None


def test_strides_fitted_to_a_small_input_leave_no_layer_on_a_degenerate_map() -> None:
    """Fitted to 28^3, covidnet3d-s drops the downsampling of cells 3 and 5: every cell from
    the third runs on 4^3, all 8 candidates of all 21 layers differ, the parameters are
    those of the unfitted net, and a few-slice input keeps its in-plane downsampling."""
    from volnas.models.genotype import Genotype
    from volnas.models.spaces import (
        degenerate_layers_warning,
        fit_strides,
        fitted_strides_note,
        kernel_geometry,
    )
    from volnas.search.ranking import path_of

    strides = (2, 2, 2, 2, 1, 2, 1)
    assert fit_strides(strides, (28, 28, 28)) == [(2, 2, 2)] * 3 + [(1, 1, 1)] * 4
    assert fit_strides(strides, (16, 48, 48)) == [(2, 2, 2), (2, 2, 2), (1, 2, 2)] + [(1, 1, 1)] * 4
    assert fit_strides(strides, (128, 128, 128)) == [(s,) * 3 for s in strides]
    assert layer_specs("covidnet3d-s", (128, 128, 128)) == layer_specs("covidnet3d-s")
    assert fitted_strides_note("covidnet3d-s", (128, 128, 128)) is None
    assert "cell3.calib 1x1x1, cell5.calib 1x1x1" in fitted_strides_note("covidnet3d-s", (28, 28, 28))

    rows = kernel_geometry("covidnet3d-s", (28, 28, 28), fitted=True)
    assert [r["extent"][0] for r in rows] == [7] * 4 + [4] * 17
    assert all(r["distinct"] == r["candidates"] == 8 for r in rows)
    assert degenerate_layers_warning("covidnet3d-s", (28, 28, 28), fitted=True) is None

    plain, fitted = SuperNet("covidnet3d-s", 1, 2), SuperNet("covidnet3d-s", 1, 2, spatial=(16, 48, 48))
    path = [3] * len(plain.choice_layers)
    g_plain, g_fit = plain.genotype(path), fitted.genotype(path)
    assert g_fit.ops[6] == "conv_s1x2x2" and g_fit.ops[11] == g_fit.ops[21] == "conv_s1"
    again = Genotype.from_string(g_fit.to_string())  # the fitted strides travel in the genotype
    net = again.build().eval()
    assert net.features(torch.zeros(1, 1, 16, 48, 48)).shape[2:] == (4, 6, 6)
    assert g_plain.build().features(torch.zeros(1, 1, 16, 48, 48)).shape[2:] == (1, 2, 2)
    assert sum(p.numel() for p in net.parameters()) == plain.path_params(path)
    with pytest.raises(ValueError, match="fitted to another input"):
        path_of(plain, g_fit)
    assert path_of(fitted, g_fit) == path


def test_stride_rule_cell1_moves_cell1s_downsampling_later(tmp_path: Path) -> None:
    """--stride-rule cell1: where fitting must drop a stride, cell 1 keeps the stem's map
    and a later cell downsamples instead; the net ends on the same 4^3, with the same
    parameters, and the rule travels in the genotype. An input that needs no fitting is
    left alone; an unknown rule is refused."""
    from volnas.models.genotype import Genotype
    from volnas.models.spaces import fit_strides, fitted_strides_note, kernel_geometry
    from volnas.search.config import SearchConfig

    strides = (2, 2, 2, 2, 1, 2, 1)
    assert fit_strides(strides, (28, 28, 28), "cell1") == [
        (2, 2, 2), (1, 1, 1), (2, 2, 2), (2, 2, 2), (1, 1, 1), (1, 1, 1), (1, 1, 1)]
    assert fit_strides(strides, (16, 48, 48), "cell1") == [
        (2, 2, 2), (1, 1, 1), (2, 2, 2), (1, 2, 2), (1, 1, 1), (1, 1, 1), (1, 1, 1)]
    assert fit_strides(strides, (128, 128, 128), "cell1") == [(s,) * 3 for s in strides]
    with pytest.raises(ValueError, match="stride rule"):
        fit_strides(strides, (28, 28, 28), "middle")
    assert "cell1.calib 1x1x1" in fitted_strides_note("covidnet3d-s", (28, 28, 28), "cell1")
    rows = kernel_geometry("covidnet3d-s", (28, 28, 28), fitted=True, rule="cell1")
    assert [r["extent"][0] for r in rows] == [14] * 4 + [7] * 4 + [4] * 13

    end = SuperNet("covidnet3d-s", 1, 2, spatial=(28, 28, 28))
    cell1 = SuperNet("covidnet3d-s", 1, 2, spatial=(28, 28, 28), stride_rule="cell1")
    path = [2] * len(end.choice_layers)
    g = cell1.genotype(path)
    assert (g.ops[1], g.ops[6], g.ops[11]) == ("conv_s1", "conv_s2", "conv_s2")
    net = Genotype.from_string(g.to_string()).build().eval()
    assert net.features(torch.zeros(1, 1, 28, 28, 28)).shape[2:] == (4, 4, 4)
    assert cell1.path_params(path) == end.path_params(path)
    assert SearchConfig().stride_rule == "cell1"
    assert SearchConfig.from_saved({"data": "x.npz"}).stride_rule == "end"  # older runs
    from volnas.search.random_search import draw_genotypes

    cfg = SearchConfig(data="x.npz", space="covidnet3d-s", stride_rule="cell1",
                       preprocess={"slices": 28, "size": (28, 28)}, random_samples=3)
    ops = [Genotype.from_string(d["genotype"]).ops for d in draw_genotypes(cfg, 2)]
    assert all((o[1], o[11]) == ("conv_s1", "conv_s2") for o in ops)
    from typer.testing import CliRunner

    from volnas.cli.main import app

    res = CliRunner().invoke(app, ["search", "--data", "x.npz", "--space", "covidnet3d-s",
                                   "--stride-rule", "middle", "--out", str(tmp_path / "r")])
    assert res.exit_code != 0 and "stride_rule" in res.output
    assert not (tmp_path / "r").exists()
