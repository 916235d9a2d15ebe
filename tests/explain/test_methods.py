"""The method registry, deletion / insertion curves and the randomisation sanity check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from volnas.data.preprocess import PreprocessConfig
from volnas.data.readers import read_scan
from volnas.explain.api import explain_volumes
from volnas.explain.cam import ClassArg, ExplainError, Explanation, normalize_maps
from volnas.explain.faithfulness import model_probs, saliency_curve
from volnas.explain.methods import (
    DEFAULT_METHOD,
    METHODS,
    IntegratedGradients,
    Occlusion,
    list_methods,
    make_explainer,
    stage_layers,
)
from volnas.explain.sanity import randomized_copy, rank_correlation, sanity_check

# small, fast options for the input-space methods
FAST = {"occlusion": {"box": (2, 8, 8)}, "smoothgrad": {"samples": 4},
        "intgrad": {"samples": 4}}


class SmallNet(nn.Module):
    """Five-block conv net with a GAP + linear head (CAM-exact), two resolutions."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.layers = nn.Sequential(
            nn.Conv3d(1, 6, 3, padding=1), nn.Softplus(),
            nn.Conv3d(6, 8, 3, stride=2, padding=1), nn.Softplus(),
            nn.Conv3d(8, 8, 3, padding=1),
        )
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.layers(x)).flatten(1))


def test_registry_lists_every_method() -> None:
    assert set(list_methods()) == {"cam", "gradcam", "gradcampp", "layercam", "layercam-fused",
                                   "occlusion", "smoothgrad", "intgrad"}
    assert METHODS == tuple(list_methods()) and DEFAULT_METHOD in METHODS
    with pytest.raises(ExplainError, match="expected one of"):
        make_explainer(SmallNet().eval(), "lime")


def test_stage_layers_last_module_per_resolution() -> None:
    assert stage_layers(SmallNet().eval(), torch.rand(1, 1, 4, 8, 8)) == ["layers.1", "layers.4"]


@pytest.mark.parametrize("method", list_methods())
def test_maps_on_input_grid_and_batch_independent(method: str) -> None:
    model = SmallNet().eval()
    x = torch.rand(3, 1, 6, 16, 16)
    ex = make_explainer(model, method, **FAST.get(method, {}))(x, [1, 0, 1])
    assert ex.maps.shape == (3, 6, 16, 16)
    assert float(ex.maps.min()) >= 0.0 and float(ex.maps.max()) <= 1.0 + 1e-6
    assert ex.classes.tolist() == [1, 0, 1]
    one = make_explainer(model, method, **FAST.get(method, {}))(x[1:2], 0)
    torch.testing.assert_close(one.maps[0], ex.maps[1], atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    from volnas.data.synth import synthesize

    root = tmp_path_factory.mktemp("fmt")
    out = []
    for fmt in ("png", "tiff", "nifti", "dicom", "npz"):
        res = synthesize(root / fmt, scans=2, fmt=fmt, shape=(9, 24, 20), seed=1,
                         scans_per_patient=(1, 1))
        s = res.scans[0]
        out.append(f"{s.path}#{s.split}/{s.index}" if fmt == "npz" else str(s.path))
    return out


@pytest.mark.parametrize("method", list_methods())
def test_maps_on_source_grid_every_format(method: str, scans: list[str]) -> None:
    pre = PreprocessConfig(slices=6, size=(16, 16))
    vols = [read_scan(s) for s in scans]
    explainer = make_explainer(SmallNet().eval(), method, **FAST.get(method, {}))
    for vol, ex in zip(vols, explain_volumes(explainer, vols, pre, target=1), strict=True):
        assert ex.heatmap.shape == vol.shape
        assert ex.model_map.shape == (6, 16, 16)
        assert ex.model_input is not None and ex.model_input.shape == (1, 6, 16, 16)


def test_intgrad_completeness() -> None:
    model = SmallNet(seed=3).double().eval()
    x = torch.rand(1, 1, 4, 8, 8, dtype=torch.float64)
    ig = IntegratedGradients(model, samples=64, batch_size=32)
    with torch.no_grad():
        gap = float(model(x)[0, 1] - model(torch.zeros_like(x))[0, 1])
    total = float(ig.attributions(x, 1).sum())
    assert abs(gap) > 1e-3
    assert total == pytest.approx(gap, rel=1e-2, abs=1e-5)
    # too few steps is measurably less complete: the tolerance above is not vacuous
    coarse = float(IntegratedGradients(model, samples=1).attributions(x, 1).sum())
    assert abs(coarse - gap) > abs(total - gap)


class RegionModel(nn.Module):
    """Evidence known by construction: the class-1 logit is 12 x (mean of a box - 0.5)."""

    def __init__(self, region: tuple[slice, slice, slice]) -> None:
        super().__init__()
        self.region = region

    def forward(self, x: Tensor) -> Tensor:
        m = x[:, 0][(slice(None), *self.region)].mean(dim=(1, 2, 3))
        z = 12.0 * (m - 0.5)
        return torch.stack([-z, z], dim=1)


def test_deletion_curve_faster_for_true_evidence() -> None:
    region = (slice(2, 5), slice(4, 9), slice(3, 8))
    model = RegionModel(region).eval()
    torch.manual_seed(0)
    x = 0.8 + 0.2 * torch.rand(1, 1, 8, 16, 16)
    true_map = np.zeros((8, 16, 16))
    true_map[region] = 1.0
    rand_map = np.random.default_rng(0).random((8, 16, 16))
    prob = model_probs(model)
    d_true = saliency_curve(prob, x, true_map, 1, "deletion", steps=20)
    d_rand = saliency_curve(prob, x, rand_map, 1, "deletion", steps=20)
    assert d_true.probs[0] == pytest.approx(d_rand.probs[0]) and d_true.probs[0] > 0.97
    assert d_true.fractions[0] == 0 and d_true.fractions[-1] == 1
    # the box is 75 of 2048 voxels: blanking it first drops p(1) at the first step
    assert d_true.probs[1] < 0.01
    assert d_true.auc < 0.05 and d_rand.auc > 0.25 and d_rand.auc > 10 * d_true.auc
    zeros = torch.zeros_like(x)
    i_true = saliency_curve(prob, x, true_map, 1, "insertion", baseline=zeros)
    i_rand = saliency_curve(prob, x, rand_map, 1, "insertion", baseline=zeros)
    assert i_true.auc > 0.9 and i_rand.auc < i_true.auc - 0.3
    # integrated gradients on this model finds the box: its deletion AUC is the true map's
    ig = make_explainer(model, "intgrad", samples=8, smooth=1)(x, 1)
    d_ig = saliency_curve(prob, x, ig.maps[0].numpy(), 1, "deletion", steps=20)
    assert d_ig.auc == pytest.approx(d_true.auc, abs=1e-3)


class EdgeExplainer:
    """A 'method' that ignores the network: input gradient magnitude (an edge detector)."""

    target_layer = "input"

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __call__(self, x: Tensor, class_idx: ClassArg = None) -> Explanation:
        with torch.no_grad():
            logits = self.model(x)
        dz, dy, dx = torch.gradient(x[:, 0], dim=(1, 2, 3))
        edges = (dz**2 + dy**2 + dx**2).sqrt()
        classes = logits.argmax(1) if class_idx is None else torch.as_tensor(class_idx)
        return Explanation(normalize_maps(edges), edges, logits, classes.expand(len(x)))


def _blobs(n: int = 3) -> Tensor:
    """Smooth structured volumes (blurred noise), so edges and saliency have structure."""
    torch.manual_seed(1)
    x = torch.rand(n, 1, 8, 16, 16)
    return F.avg_pool3d(x, 3, stride=1, padding=1)


def test_sanity_check_fails_a_weight_ignoring_method() -> None:
    model = SmallNet(seed=5).eval()
    x = _blobs()
    edge = sanity_check(EdgeExplainer, model, x, 1)
    assert edge.correlations == pytest.approx([1.0] * 3)
    assert not edge.passed
    used = sanity_check(lambda m: make_explainer(m, "layercam", "layers.2"), model, x, 1)
    assert used.passed and used.mean < 0.5
    # cascading: re-initialising only the head already changes a head-reading map
    head_only = randomized_copy(model, "cascading", depth=1)
    assert not torch.equal(head_only.fc.weight, model.fc.weight)
    torch.testing.assert_close(head_only.layers[0].weight, model.layers[0].weight)


def test_smooth_averages_the_attribution_over_a_cube() -> None:
    model = SmallNet(seed=4).eval()
    x = torch.rand(1, 1, 6, 12, 12)
    fine = make_explainer(model, "intgrad", samples=4, smooth=1)(x, 1).raw
    cube = make_explainer(model, "intgrad", samples=4)(x, 1).raw  # default smooth=3
    assert float(cube[0, 2, 5, 5]) == pytest.approx(float(fine[0, 1:4, 4:7, 4:7].mean()),
                                                    rel=1e-5)
    assert float(cube[0, 0, 0, 0]) == pytest.approx(float(fine[0, :2, :2, :2].mean()), rel=1e-5)
    with pytest.raises(ExplainError, match="odd"):
        make_explainer(model, "intgrad", smooth=2)


def test_rank_correlation() -> None:
    a = np.arange(24.0).reshape(2, 3, 4)
    assert rank_correlation(a, a**3) == pytest.approx(1.0)
    assert rank_correlation(a, -a) == pytest.approx(-1.0)
    assert rank_correlation(a, np.ones_like(a)) == 0.0


def test_occlusion_batched_equals_unbatched() -> None:
    model = SmallNet(seed=2).eval()
    x = torch.rand(2, 1, 6, 16, 16)
    one = Occlusion(model, box=(3, 6, 6), stride=(2, 5, 5), batch_size=1)(x, 1)
    many = Occlusion(model, box=(3, 6, 6), stride=(2, 5, 5), batch_size=7)(x, 1)
    torch.testing.assert_close(one.raw, many.raw, atol=1e-6, rtol=1e-5)
    # boxes cover the whole grid, the last box of each axis ends at the edge
    pos = one_positions = Occlusion(model, box=(3, 6, 6), stride=(2, 5, 5)).positions((6, 16, 16))
    assert max(p[0] for p in pos) == 3 and max(p[1] for p in one_positions) == 10
    assert float(one.raw.abs().sum()) > 0


def test_deletion_curve_rejects_bad_input(tmp_path: Path) -> None:
    model = RegionModel((slice(0, 1),) * 3)
    with pytest.raises(ValueError, match="voxels"):
        saliency_curve(model_probs(model), torch.rand(1, 1, 4, 4, 4), np.zeros((3, 4, 4)), 1)
    with pytest.raises(ValueError, match="kind"):
        saliency_curve(model_probs(model), torch.rand(1, 1, 4, 4, 4), np.zeros((4, 4, 4)), 1,
                       kind="sideways")
