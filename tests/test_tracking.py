"""FaceTracker on boxes and descriptors: stable ids through crossings, misses, strides and returns."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import photo

from emorec.tracking import DESCRIPTOR_SIZE, FaceTracker, face_descriptor

FPS = 25.0


def _looks(count: int, seed: int = 0) -> np.ndarray:
    """count distinct unit descriptors (one per person)."""
    vectors = np.random.default_rng(seed).normal(size=(count, DESCRIPTOR_SIZE)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _run(tracker: FaceTracker, frames: list[tuple[int, list[tuple[int, tuple]]]], looks: np.ndarray) -> list[dict]:
    """Feed (frame index, [(person, box), ...]) frames; return {person: track id} per frame."""
    out = []
    for index, faces in frames:
        ids = tracker.update(index, np.array([box for _, box in faces]).reshape(-1, 4),
                             np.array([looks[person] for person, _ in faces]).reshape(len(faces), DESCRIPTOR_SIZE))
        out.append({person: track for (person, _), track in zip(faces, ids)})
    return out


def _one_id_per_person(per_frame: list[dict]) -> dict[int, set[int]]:
    ids: dict[int, set[int]] = {}
    for frame in per_frame:
        for person, track in frame.items():
            ids.setdefault(person, set()).add(track)
    return ids


def test_two_faces_crossing_keep_their_ids():
    looks = _looks(2)
    frames = [(i, [(0, (40 + 12 * i, 100, 80, 80)), (1, (520 - 12 * i, 130, 80, 80))]) for i in range(40)]
    ids = _one_id_per_person(_run(FaceTracker(FPS), frames, looks))
    assert ids == {0: {1}, 1: {2}}


def test_crossing_faces_that_look_alike_follow_their_motion():
    looks = np.repeat(_looks(1), 2, axis=0)  # motion alone must carry them
    frames = [(i, [(0, (40 + 12 * i, 100, 80, 80)), (1, (520 - 12 * i, 150, 80, 80))]) for i in range(40)]
    assert _one_id_per_person(_run(FaceTracker(FPS), frames, looks)) == {0: {1}, 1: {2}}


def test_a_face_passing_behind_another_comes_back_under_its_own_id():
    looks = _looks(2)
    frames = []
    for i in range(50):
        walker = (1, (40 + 10 * i, 110, 80, 80))
        hidden = 250 <= walker[1][0] <= 390  # behind the still face at x=320
        frames.append((i, [(0, (320, 100, 90, 90))] + ([] if hidden else [walker])))
    ids = _one_id_per_person(_run(FaceTracker(FPS), frames, looks))
    assert ids == {0: {1}, 1: {2}}


def test_a_covered_face_keeps_its_id_within_the_buffer_and_gets_a_new_one_after():
    looks = _looks(1)
    seen = lambda i: (i, [(0, (200 + i, 100, 80, 80))])  # noqa: E731 - a slow drift
    gap_1s = [seen(i) for i in range(10)] + [(i, []) for i in range(10, 35)] + [seen(i) for i in range(35, 45)]
    assert _one_id_per_person(_run(FaceTracker(FPS, buffer_seconds=2.0), gap_1s, looks)) == {0: {1}}
    assert _one_id_per_person(_run(FaceTracker(FPS, buffer_seconds=0.5), gap_1s, looks)) == {0: {1, 2}}


def test_a_stranger_where_a_lost_face_was_gets_a_new_id():
    looks = _looks(2)
    frames = [(i, [(0, (200, 100, 80, 80))]) for i in range(10)] + [(i, [(1, (205, 100, 80, 80))]) for i in range(20, 30)]
    assert _one_id_per_person(_run(FaceTracker(FPS), frames, looks)) == {0: {1}, 1: {2}}


def test_a_stride_keeps_tracks_of_fast_crossing_faces():
    looks = _looks(2)
    frames = [(i, [(0, (40 + 6 * i, 100, 80, 80)), (1, (560 - 6 * i, 140, 80, 80))]) for i in range(0, 90, 5)]
    assert _one_id_per_person(_run(FaceTracker(FPS), frames, looks)) == {0: {1}, 1: {2}}


def test_new_faces_get_new_ids_and_frames_must_go_forward():
    tracker = FaceTracker(FPS)
    looks = _looks(3)
    assert tracker.update(0, np.zeros((0, 4)), np.zeros((0, DESCRIPTOR_SIZE), np.float32)) == []
    assert tracker.update(1, np.array([[10, 10, 50, 50], [300, 10, 50, 50]]), looks[:2]) == [1, 2]
    assert tracker.update(2, np.array([[300, 12, 50, 50], [10, 12, 50, 50], [150, 200, 50, 50]]),
                          looks[[1, 0, 2]]) == [2, 1, 3]
    with pytest.raises(ValueError, match="frames must go forward"):
        tracker.update(2, np.zeros((0, 4)), np.zeros((0, DESCRIPTOR_SIZE), np.float32))


def test_face_descriptor_tells_people_apart_and_ignores_lighting():
    faces = [cv2.resize(photo(name), (48, 48))[:, :, :1] for name in ("Beyonce_Knowles_0001.jpg", "Idi_Amin_0001.jpg")]
    first, second = (face_descriptor(face) for face in faces)
    brighter = face_descriptor(cv2.convertScaleAbs(faces[0], alpha=0.7, beta=40)[..., None])
    assert first.shape == (DESCRIPTOR_SIZE,) and first.dtype == np.float32
    assert np.linalg.norm(first) == pytest.approx(1.0, abs=1e-5)
    assert float(first @ brighter) > 0.95
    assert float(first @ second) < float(first @ brighter) - 0.2
    assert np.allclose(face_descriptor(cv2.cvtColor(faces[0][..., 0], cv2.COLOR_GRAY2BGR)), first, atol=1e-5)


def test_a_bad_rate_or_buffer_is_refused():
    with pytest.raises(ValueError, match="fps"):
        FaceTracker(0)
    with pytest.raises(ValueError, match="buffer_seconds"):
        FaceTracker(25, buffer_seconds=-1)
