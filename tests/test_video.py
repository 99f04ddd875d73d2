"""Video files through the recognizer: per-frame CSV, annotated video, smoothing, Ctrl-C."""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest
from conftest import FER_CLASSES, write_video

from emorec.config import PredictConfig
from emorec.results import FaceResult
from emorec.video import predict_video, smooth_faces, webcam_index


def test_video_csv_and_annotated_video(recognizer, tmp_path):
    video = write_video(tmp_path / "clip.mp4")
    config = PredictConfig(sources=[str(video)], stride=2, smooth=0.5)
    summary = predict_video(video, config, tmp_path / "clip.csv", tmp_path / "out" / "clip.mp4", recognizer, progress=False)
    assert summary.frames == 10 and summary.classified_frames == 5 and summary.face_rows == 5
    with open(tmp_path / "clip.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["time_s", "frame", "face", "track", "x", "y", "w", "h", *FER_CLASSES, "emotion"]
    assert [r[1] for r in rows[1:]] == ["0", "2", "4", "6", "8"]
    assert rows[2][0] == "0.200" and rows[1][2] == "1" and {r[3] for r in rows[1:]} == {"1"}
    assert sum(float(v) for v in rows[3][8:15]) == pytest.approx(1.0, abs=1e-3)
    capture = cv2.VideoCapture(str(tmp_path / "out" / "clip.mp4"))
    assert capture.isOpened() and int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 10
    capture.release()
    with pytest.raises(FileExistsError):
        predict_video(video, config, tmp_path / "clip.csv", recognizer=recognizer, progress=False)


def test_every_frame_is_classified_in_order_with_stride_one(recognizer, tmp_path):
    video = write_video(tmp_path / "clip.avi", frames=30)
    summary = predict_video(video, PredictConfig(sources=[str(video)]), tmp_path / "c.csv", recognizer=recognizer,
                            progress=False)
    with open(tmp_path / "c.csv", newline="") as handle:
        frames = [int(row["frame"]) for row in csv.DictReader(handle)]
    assert frames == list(range(30)) and summary.classified_frames == 30


def test_ctrl_c_on_a_video_file_leaves_no_outputs_and_exits_130(seven_class_model, tmp_path):
    video = write_video(tmp_path / "long.mp4", frames=3000, size=(640, 480))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "emorec", "predict", str(seven_class_model), str(video), "--save-annotated", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out.is_dir() and any(out.iterdir())) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)  # wait until the temporary outputs are being written
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err[-2000:]
    assert "interrupted" in err and "Traceback" not in err
    assert list(out.iterdir()) == []  # neither long.csv nor long.mp4, nor their temporary files


def test_smoothing_is_exponential_per_face_index():
    previous = {}
    first = [FaceResult((0, 0, 9, 9), {"happy": 1.0, "sad": 0.0})]
    second = [FaceResult((1, 0, 9, 9), {"happy": 0.0, "sad": 1.0}), FaceResult(None, {"happy": 0.5, "sad": 0.5})]
    smooth_faces(first, previous, 0.75)
    [a, b] = smooth_faces(second, previous, 0.75)
    assert a.probabilities == pytest.approx({"happy": 0.75, "sad": 0.25}) and a.box == (1, 0, 9, 9)
    assert b.probabilities == {"happy": 0.5, "sad": 0.5}  # a new face index starts unsmoothed
    assert smooth_faces(first, {}, 0.0) is first


def test_webcam_index(tmp_path, monkeypatch):
    assert webcam_index("0") == 0 and webcam_index(2) == 2 and webcam_index("clip.mp4") is None
    monkeypatch.chdir(tmp_path)
    Path("3").write_text("a file named like an index")
    assert webcam_index("3") is None
