"""Annotated copies: boxes and labels drawn, inputs untouched, nothing overwritten unasked."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from emorec.draw import annotate, save_annotated
from emorec.results import FaceResult

FACE = FaceResult((20, 30, 60, 60), {"happy": 0.9, "sad": 0.1}, 0.99)


def test_annotate_draws_without_changing_input():
    image = np.zeros((160, 160, 3), np.uint8)
    drawn = annotate(image, [FACE])
    assert drawn.any() and not image.any()
    assert drawn[30, 50].any()  # the box's top edge
    crop = annotate(np.zeros((48, 48, 3), np.uint8), [FaceResult(None, {"happy": 0.9, "sad": 0.1})])
    assert crop[:12].any()  # a whole-image face gets its label in the top-left corner


def test_save_annotated_is_atomic_and_refuses_to_overwrite(tmp_path):
    image = np.full((120, 120, 3), 90, np.uint8)
    path = save_annotated(image, [FACE], tmp_path / "sub" / "a.jpg")
    assert cv2.imread(str(path)).shape == image.shape
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        save_annotated(image, [], path)
    assert path.read_bytes() == before
    save_annotated(image, [], path, exist_ok=True)
    assert path.read_bytes() != before
    webp = save_annotated(image, [FACE], tmp_path / "b.webp")
    assert webp.suffix == ".webp" and cv2.imread(str(webp)) is not None  # encoded as PNG inside
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["a.jpg"]  # no temporary files left
