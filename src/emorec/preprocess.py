"""The one way pixels become model inputs, shared by training, evaluation and prediction.

`to_bgr8` turns any image array (gray, BGR, BGRA, RGB(A), 16-bit, float) into
8-bit BGR, and `to_model_input` turns 8-bit BGR into the (size, size,
channels) raw-pixel input a model takes. Training writes its clean view of
the data with these two functions, evaluation loads with them, and
prediction crops faces and feeds them through them, so a file is always
seen the same way. Only NumPy and OpenCV are needed here.
"""

from __future__ import annotations

import cv2
import numpy as np


def to_bgr8(image: np.ndarray, rgb: bool = False) -> np.ndarray:
    """An 8-bit BGR copy (or view) of an image array.

    Accepts (H, W), (H, W, 1), (H, W, 3) and (H, W, 4) arrays of uint8,
    uint16 (scaled by 1/257) or floats (values in [0, 1] are scaled by 255,
    anything else is clipped to [0, 255]). Colour arrays are BGR(A) like
    OpenCV's unless rgb is True. Raises ValueError for other shapes and for
    empty arrays.
    """
    array = np.asarray(image)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ValueError(f"expected an image array (H, W), (H, W, 3) or (H, W, 4), got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"empty image array of shape {array.shape}")
    array = to_uint8(array)
    if array.ndim == 2 or array.shape[2] == 1:
        return cv2.cvtColor(array.reshape(array.shape[:2]), cv2.COLOR_GRAY2BGR)
    if array.shape[2] == 4:
        return cv2.cvtColor(array, cv2.COLOR_RGBA2BGR if rgb else cv2.COLOR_BGRA2BGR)
    return cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if rgb else np.ascontiguousarray(array)


def to_uint8(array: np.ndarray) -> np.ndarray:
    """The array itself if it is uint8, else an 8-bit copy: uint16 scaled by 1/257, floats as in `to_bgr8`."""
    # Large images pass through here (a 16-bit 8000x8000 RGB is 366 MiB), so no float64
    # copies: OpenCV scales 16-bit samples row by row into the 8-bit result, and floats
    # are worked on in one float32 copy, in place.
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return cv2.convertScaleAbs(np.ascontiguousarray(array), alpha=1 / 257)
    values = array.astype(np.float32)
    finite = np.isfinite(values)
    if finite.any() and values.min(where=finite, initial=0) >= 0 and values.max(where=finite, initial=0) <= 1.0:
        values *= 255  # floats in [0, 1] (skimage, matplotlib)
    del finite
    np.copyto(values, 0, where=np.isnan(values))
    np.clip(values, 0, 255, out=values)  # infinities become 0 or 255
    return np.rint(values, out=values).astype(np.uint8)


def to_model_input(bgr: np.ndarray, size: int, channels: int) -> np.ndarray:
    """An 8-bit BGR image as a (size, size, channels) uint8 model input (gray, or RGB for 3 channels).

    Shrinking uses INTER_AREA (an average over each output pixel's area, so
    no aliasing) and enlarging INTER_LINEAR, for every caller alike.
    """
    if channels == 1:
        image = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    else:
        image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    height, width = image.shape[:2]
    if (height, width) != (size, size):
        shrinking = height * width >= size * size
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return image.reshape(size, size, channels)
