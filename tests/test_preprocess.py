"""The one conversion to 8-bit BGR and the one way to a model input."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import traced_peak

from emorec.preprocess import to_bgr8, to_model_input


def test_to_bgr8_accepts_the_usual_array_kinds():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert to_bgr8(gray).shape == (3, 4, 3) and to_bgr8(gray[..., None]).shape == (3, 4, 3)
    assert to_bgr8(np.ones((3, 4, 3), np.float32))[0, 0].tolist() == [255, 255, 255]  # floats in [0, 1]
    assert to_bgr8(np.full((2, 2), 300.0))[0, 0].tolist() == [255, 255, 255]  # other floats are clipped
    assert to_bgr8(np.full((2, 2), 65535, np.uint16))[0, 0].tolist() == [255, 255, 255]
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 200
    assert to_bgr8(rgba, rgb=True)[0, 0].tolist() == [0, 0, 200]
    assert to_bgr8(rgba)[0, 0].tolist() == [200, 0, 0]  # BGRA by default
    nan = np.full((2, 2), np.nan, np.float32)
    assert to_bgr8(nan).max() == 0


@pytest.mark.parametrize("shape", [(0, 0), (3, 0, 3), (2, 2, 2), (2, 2, 5), (5,), (1, 2, 2, 3)])
def test_to_bgr8_refuses_what_is_not_an_image(shape):
    with pytest.raises(ValueError):
        to_bgr8(np.zeros(shape, np.uint8))


def test_to_model_input_shrinks_by_area_and_enlarges_linearly():
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    gray_big = cv2.cvtColor(big, cv2.COLOR_BGR2GRAY)
    np.testing.assert_array_equal(to_model_input(big, 48, 1)[..., 0],
                                  cv2.resize(gray_big, (48, 48), interpolation=cv2.INTER_AREA))
    small = big[:24, :24]
    rgb_small = cv2.cvtColor(small, cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(to_model_input(small, 48, 3),
                                  cv2.resize(rgb_small, (48, 48), interpolation=cv2.INTER_LINEAR))
    same = big[:48, :48]
    np.testing.assert_array_equal(to_model_input(same, 48, 3), cv2.cvtColor(same, cv2.COLOR_BGR2RGB))


@pytest.mark.parametrize("dtype, bound", [(np.uint16, 1.0), (np.float32, 1.5)])
def test_deep_arrays_become_8_bit_without_float64_copies(dtype, bound):
    rng = np.random.default_rng(0)
    shape = (500, 500, 3)
    deep = rng.integers(0, 65536, shape).astype(dtype) if dtype == np.uint16 else rng.random(shape, dtype)
    image, peak = traced_peak(lambda: to_bgr8(deep))
    expected = np.round(deep / 257 if dtype == np.uint16 else deep * 255).astype(np.uint8)
    np.testing.assert_array_equal(image, expected)
    assert peak < bound * deep.nbytes  # 16-bit: the 8-bit result only; floats: one float32 working copy
