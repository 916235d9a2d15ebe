"""Baseline model zoo: every registered model builds, trains and profiles on tiny volumes."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from volnas.models import (
    count_flops,
    count_params,
    create_model,
    get_spec,
    list_models,
    profile_model,
    size_mb,
)
from volnas.models.video import midplanes

NUM_CLASSES = 3
CL = torch.channels_last_3d
BASELINES = {
    "resnet3d_18",
    "resnet3d_50",
    "resnet3d_101",
    "densenet3d_121",
    "mc3_18",
    "r2plus1d_18",
    "r3d_18",
}


# Numeric tests (backward, channels_last) run the models up to this size. Larger ones are
# deeper variants of a family tested below the cap (resnet3d_50/101: the blocks of
# resnet3d_18's family); for them the shape test runs on the meta device (no compute).
NUMERIC_CAP = 40_000_000


def _meta_params(name: str, in_channels: int, num_classes: int) -> int:
    with torch.device("meta"):
        return count_params(create_model(name, in_channels=in_channels, num_classes=num_classes))


def _small(name: str) -> bool:
    return _meta_params(name, 1, NUM_CLASSES) <= NUMERIC_CAP


NUMERIC = [n for n in list_models() if _small(n)]


@functools.cache
def _model(name: str) -> nn.Module:
    """One instance per name for the whole session (building ResNet-101 takes ~1 s)."""
    torch.manual_seed(0)
    return create_model(name, in_channels=1, num_classes=NUM_CLASSES)


def test_all_baselines_registered() -> None:
    assert BASELINES <= set(list_models())
    assert list_models("resnet3d_*") == ["resnet3d_101", "resnet3d_18", "resnet3d_50"]


def test_numeric_cap_leaves_only_deeper_variants_out() -> None:
    left_out = set(list_models()) - set(NUMERIC)
    assert left_out == {"resnet3d_50", "resnet3d_101"}
    for name in left_out:
        with torch.device("meta"):
            out = create_model(name, in_channels=1, num_classes=NUM_CLASSES)(
                torch.empty(2, 1, 16, 32, 32))
        assert out.shape == (2, NUM_CLASSES)
        assert get_spec(name).family == get_spec("resnet3d_18").family


@pytest.mark.parametrize("name", NUMERIC)
def test_train_step_channels_last(name: str) -> None:
    model = _model(name).train().to(memory_format=CL)
    model.zero_grad(set_to_none=True)
    x = torch.randn(2, 1, 16, 32, 32).to(memory_format=CL)
    out = model(x)
    assert out.shape == (2, NUM_CLASSES)
    nn.functional.cross_entropy(out, torch.tensor([0, 2])).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads), "some parameter got no gradient"
    assert all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", NUMERIC)
def test_channels_last_matches_contiguous(name: str) -> None:
    model = _model(name).eval()
    x = torch.randn(2, 1, 28, 28, 28)
    with torch.no_grad():
        ref = model.to(memory_format=torch.contiguous_format)(x)
        out = model.to(memory_format=CL)(x.to(memory_format=CL))
    assert ref.shape == (2, NUM_CLASSES)
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", list_models())
def test_cam_layer_is_last_feature_map(name: str) -> None:
    spec = get_spec(name)
    assert spec.cam_layer is not None
    model = _model(name).eval()
    seen: list[torch.Tensor] = []
    handle = model.get_submodule(spec.cam_layer).register_forward_hook(
        lambda _m, _i, o: seen.append(o.detach().clone())
    )
    try:
        with torch.no_grad():
            model(torch.randn(1, 1, 16, 32, 32))
    finally:
        handle.remove()
    (feat,) = seen
    assert feat.ndim == 5
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert feat.shape[1] == head.in_features, "CAM layer is not the map the classifier pools"
    assert feat.min() >= 0, "CAM layer output is not after the activation"


# (name, published MB, num_classes reproducing it at 3 input channels, source)
PUBLISHED_MB = [
    ("resnet3d_101", 325.21, 2, "CovidNet3D Table 3"),
    ("densenet3d_121", 43.06, 2, "CovidNet3D Table 3"),
    ("mc3_18", 43.84, 2, "CovidNet3D Table 3"),
    ("r2plus1d_18", 119.41, 3, "MedPipe Table VI"),
    ("resnet3d_18", 126.53, 2, "MedPipe Table VI"),
]


@pytest.mark.parametrize(("name", "published", "nc", "source"), PUBLISHED_MB)
def test_published_size(name: str, published: float, nc: int, source: str) -> None:
    for in_channels in (1, 3):
        for classes in (2, 3):
            mb = _meta_params(name, in_channels, classes) * 4 / 2**20
            assert abs(mb - published) / published < 0.01, (name, in_channels, classes, mb, source)
    if name != "resnet3d_18":  # MedPipe's ResNet3D18 figure matches no MONAI variant exactly
        assert round(_meta_params(name, 3, nc) * 4 / 2**20, 2) == published


@pytest.mark.parametrize(
    ("name", "torchvision_params"),
    [("r3d_18", 33_371_472), ("mc3_18", 11_695_440), ("r2plus1d_18", 31_505_325)],
)
def test_video_nets_match_torchvision_counts(name: str, torchvision_params: int) -> None:
    # torchvision's Kinetics-400 models: 3 input channels, 400 classes.
    n = _meta_params(name, 3, 400)
    assert abs(n - torchvision_params) / torchvision_params < 0.01
    assert n == torchvision_params


def test_r2plus1d_midplanes() -> None:
    model = _model("r2plus1d_18")
    pair = model.layer2[0].conv1[0]  # first conv of the first 128-channel block
    spatial, temporal = pair[0], pair[3]
    assert spatial.kernel_size == (1, 3, 3) and spatial.stride == (1, 2, 2)
    assert temporal.kernel_size == (3, 1, 1) and temporal.stride == (2, 1, 1)
    m = (3 * 3**2 * 64 * 128) // (3**2 * 64 + 3 * 128)  # Tran et al. Sec. 3.5
    assert m == midplanes(64, 128) == 230 == spatial.out_channels == temporal.in_channels
    full = 3 * 3 * 3 * 64 * 128
    factorised = spatial.weight.numel() + temporal.weight.numel()
    assert abs(factorised - full) / full < 0.01
    assert model.stem[0].out_channels == 45 and model.stem[0].kernel_size == (1, 7, 7)


def test_mc3_stages() -> None:
    model = _model("mc3_18")
    assert model.layer1[0].conv1[0].kernel_size == (3, 3, 3)
    for stage in (model.layer2, model.layer3, model.layer4):
        assert stage[0].conv1[0].kernel_size == (1, 3, 3)
        assert stage[0].conv1[0].stride == (1, 2, 2)
        assert stage[0].downsample[0].stride == (1, 2, 2)


def test_flops_are_two_per_mac() -> None:
    conv = nn.Conv3d(1, 4, 3, padding=1, bias=False)
    assert count_flops(conv, (1, 4, 4, 4)) == 2 * (4 * 27) * 4**3


@pytest.mark.parametrize("name", NUMERIC)
def test_flops_scale_with_voxels(name: str) -> None:
    model = _model(name).train()
    f1 = count_flops(model, (1, 16, 32, 32))
    f2 = count_flops(model, (1, 32, 32, 32))
    assert model.training, "count_flops must restore train mode"
    assert f1 > 0
    assert abs(f2 / f1 - 2) < 0.2


def test_profile_model() -> None:
    prof = profile_model("mc3_18", input_shape=(1, 8, 32, 32), num_classes=3)
    assert set(prof) == {"params", "size_mb", "flops"}
    assert prof["size_mb"] == pytest.approx(prof["params"] * 4 / 2**20)
    model = _model("mc3_18")
    assert prof["params"] == count_params(model)
    assert size_mb(model) == pytest.approx(prof["size_mb"])
    assert profile_model(model, input_shape=(1, 8, 32, 32))["flops"] == prof["flops"]
