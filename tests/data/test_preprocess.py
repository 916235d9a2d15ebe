from __future__ import annotations

import numpy as np
import pytest

from volnas.data.preprocess import (
    PreprocessConfig,
    normalize_intensity,
    prepare_stack,
    resize_crop,
    sample_slices,
)
from volnas.data.volume import DataError, Volume


@pytest.mark.parametrize(
    ("n", "t", "expected"),
    [
        (10, 4, [1, 3, 5, 7]),  # stride 10//4=2 from the middle slice 5: 5,3,7,1
        (9, 3, [1, 4, 7]),  # stride 3 from 4: 4,1,7
        (7, 3, [1, 3, 5]),  # stride 2 from 3: 3,1,5
        (3, 7, [0, 0, 1, 1, 1, 2, 2]),  # each slice twice, the 1 left over from the middle
        (4, 6, [0, 1, 1, 2, 2, 3]),  # each once, then 2 (middle) and 1 (its left)
        (5, 5, [0, 1, 2, 3, 4]),
    ],
)
def test_symmetrical_sampling_matches_spec(n: int, t: int, expected: list[int]) -> None:
    assert sample_slices(n, t, "symmetrical").tolist() == expected


def test_symmetrical_is_deterministic_and_ordered_for_many_sizes() -> None:
    for n in range(1, 80):
        for t in (1, 4, 16, 32):
            a = sample_slices(n, t, "symmetrical")
            assert len(a) == t
            assert (np.diff(a) >= 0).all()
            assert a.min() >= 0 and a.max() < n
            assert a.tolist() == sample_slices(n, t, "symmetrical").tolist()
            if n >= t:
                assert len(set(a.tolist())) == t  # no repeats when enough slices
            else:
                counts = np.bincount(a, minlength=n)
                assert counts.min() >= t // n and counts.max() <= t // n + 1


def test_random_sampling_keeps_order_and_varies() -> None:
    rng = np.random.default_rng(0)
    draws = {tuple(sample_slices(40, 8, "random", rng)) for _ in range(20)}
    assert len(draws) > 10
    for d in draws:
        assert list(d) == sorted(d) and len(set(d)) == 8
    up = sample_slices(5, 12, "random", rng)
    assert len(up) == 12 and set(up.tolist()) == set(range(5))  # every slice kept, some repeated
    assert (np.diff(up) >= 0).all()
    with pytest.raises(ValueError, match="rng"):
        sample_slices(40, 8, "random", None)


def test_hu_window_and_minmax() -> None:
    cfg = PreprocessConfig()
    hu = np.array([[[-2000.0, -1000.0, -300.0, 400.0, 3000.0]]], dtype=np.float32)
    out = normalize_intensity(hu, cfg, is_hu=True)
    np.testing.assert_allclose(out.ravel(), [0, 0, 0.5, 1, 1], atol=1e-6)
    raw = np.array([[[100.0, 200.0, 300.0]]], dtype=np.float32)
    np.testing.assert_allclose(normalize_intensity(raw, cfg, is_hu=False).ravel(), [0, 0.5, 1])
    fixed = PreprocessConfig(intensity="range", window=(0, 255))
    np.testing.assert_allclose(normalize_intensity(raw, fixed, False).ravel(), [100 / 255, 200 / 255, 1])


def test_resize_then_centre_crop_geometry() -> None:
    stack = np.zeros((3, 100, 80), np.float32)
    stack[:, 40:60, 30:50] = 1.0  # a centred square
    cfg = PreprocessConfig(slices=3, size=(40, 40), resize=(50, 60))
    out, geom = resize_crop(stack, cfg)
    assert out.shape == (3, 40, 40)
    assert geom.source_shape == (3, 100, 80)
    assert geom.resized_hw == (50, 60) and geom.crop_offset == (5, 10)
    # the square stays centred after resize + crop
    ys, xs = np.nonzero(out[0] > 0.5)
    assert abs(ys.mean() - 19.5) < 1 and abs(xs.mean() - 19.5) < 1
    with pytest.raises(ValueError, match="smaller than the crop"):
        resize_crop(stack, PreprocessConfig(size=(64, 64), resize=(32, 32)))


def test_prepare_stack_rejects_bad_volumes() -> None:
    cfg = PreprocessConfig(size=(8, 8))
    with pytest.raises(DataError, match="scan.nii.*at least 2 slices"):
        prepare_stack(Volume(np.zeros((1, 8, 8), np.float32), source="scan.nii"), cfg)
    bad = np.zeros((4, 8, 8), np.float32)
    bad[2, 3, 3] = np.nan
    with pytest.raises(DataError, match="nan.nii.*NaN"):
        prepare_stack(Volume(bad, source="nan.nii"), cfg)


def test_settings_hash_changes_with_stack_settings_only() -> None:
    a = PreprocessConfig(slices=16, size=(64, 64))
    assert a.stack_key() == PreprocessConfig(slices=32, size=(64, 64)).stack_key()
    assert a.stack_key() != PreprocessConfig(slices=16, size=(32, 32)).stack_key()
    assert a.stack_key() != PreprocessConfig(size=(64, 64), window=(-1200, 600)).stack_key()
