"""Annotated copies: boxes and labels drawn, inputs untouched, nothing overwritten unasked."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from emorec.draw import annotate, save_annotated, track_color
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


def test_tracked_faces_are_labelled_with_their_id_in_a_colour_of_their_own():
    image = np.zeros((200, 300, 3), np.uint8)
    faces = [FaceResult((20, 60, 60, 60), {"happy": 0.81, "sad": 0.19}, 0.9, track=2),
             FaceResult((160, 60, 60, 60), {"happy": 0.3, "sad": 0.7}, 0.9, track=3)]
    drawn = annotate(image, faces)
    assert tuple(drawn[60 + 30, 20]) == track_color(2) and tuple(drawn[60 + 30, 160]) == track_color(3)
    assert track_color(2) != track_color(3) and track_color(2) == track_color(2)
    untracked = annotate(image, [FaceResult(faces[0].box, faces[0].probabilities, 0.9)])
    assert not np.array_equal(untracked, annotate(image, faces[:1]))  # the "#2 " before the label


def test_track_colours_are_bright_and_distinct_for_many_ids():
    colours = [track_color(i) for i in range(1, 13)]
    assert len(set(colours)) == 12 and all(max(c) >= 200 for c in colours)
