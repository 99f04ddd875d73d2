"""Text, JSON and CSV output of prediction results."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import FER_CLASSES, PHOTOS, PHOTO_NAMES, require

from emorec.config import PredictConfig
from emorec.output import format_results, results_to_json, write_csv
from emorec.predict import predict_images
from emorec.results import FaceResult, ImageResult


def test_json_and_csv_outputs(recognizer, tmp_path):
    photo = require(PHOTOS / PHOTO_NAMES[0])
    results = predict_images(PredictConfig(sources=[str(photo)]), progress=False, recognizer=recognizer)
    results += [ImageResult("blank.png"), ImageResult("bad.jpg", error="bad.jpg: empty file (0 bytes)")]
    data = json.loads(results_to_json(results))
    assert data[0]["faces"][0]["emotion"] in FER_CLASSES and data[1]["no_face"] and data[2]["error"]
    with open(write_csv(results, tmp_path / "r.csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["face"] for r in rows] == ["1", "", ""]
    assert rows[0]["emotion"] in FER_CLASSES and rows[1]["emotion"] == "" and rows[2]["error"].startswith("bad.jpg")


def test_csv_columns_do_not_depend_on_whether_a_face_was_found(tmp_path):
    no_faces = [ImageResult("blank.png"), ImageResult("bad.jpg", error="bad.jpg: empty file (0 bytes)")]
    with open(write_csv(no_faces, tmp_path / "r.csv", FER_CLASSES), newline="") as handle:
        header = next(csv.reader(handle))
    assert header == ["source", "face", "x", "y", "w", "h", *FER_CLASSES, "emotion", "error"]


def test_json_is_strict(tmp_path):
    broken = [ImageResult("x.png", [FaceResult(None, {"happy": float("nan"), "sad": 0.5})])]
    with pytest.raises(ValueError):
        results_to_json(broken)  # never prints NaN, which JSON parsers refuse


def test_text_lines_name_each_file_once():
    results = [
        ImageResult("a.jpg", [FaceResult((1, 2, 30, 40), {"happy": 0.8, "sad": 0.2}, 0.9)]),
        ImageResult("b.png"),
        ImageResult("c.jpg", error="c.jpg: empty file (0 bytes)"),
        ImageResult("d.jpg", [FaceResult(None, {"happy": 0.1, "sad": 0.9})]),
    ]
    assert format_results(results).splitlines() == [
        "a.jpg  face 1 (1,2,30,40)  happy 0.80",
        "b.png  no face found",
        "c.jpg  error: empty file (0 bytes)",
        "d.jpg  face 1 (whole image)  sad 0.90",
    ]


def test_a_videos_line_and_json_name_its_tracks():
    import numpy as np

    from emorec.results import Track, VideoSummary

    track = Track(2, ["happy", "sad"], np.array([0.0, 0.5, 1.0]), np.array([[0.9, 0.1], [0.4, 0.6], [0.8, 0.2]]))
    video = VideoSummary("clip.mp4", frames=30, classified_frames=3, face_rows=3, fps=3.0, csv_path="clip.csv",
                         emotions={"happy": 2, "sad": 1}, tracks=[track])
    line = format_results([ImageResult("clip.mp4", video=video)])
    assert line == "clip.mp4  video: 30 frames, 3 classified, 3 face rows, 1 tracked, mostly happy; csv clip.csv"
    [data] = json.loads(results_to_json([ImageResult("clip.mp4", video=video)]))
    assert data["video"]["tracks"] == [{
        "id": 2, "first_time": 0.0, "last_time": 1.0, "frames": 3, "dominant": "happy",
        "mean_probabilities": {"happy": 0.7, "sad": 0.3}, "time_share": {"happy": 0.666667, "sad": 0.333333}}]
