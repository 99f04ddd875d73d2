"""Video files through the recognizer: per-frame CSV, annotated video, smoothing, Ctrl-C."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import FER_CLASSES, PHOTOS, require, write_video
from videos import GroundTruth, sprite, write_scene

import emorec
from emorec import cli
from emorec.config import PredictConfig
from emorec.results import FaceResult
from emorec.video import analyze_video, predict_video, smooth_faces


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

    def writing() -> bool:  # frames are going into the temporary outputs
        return out.is_dir() and any(path.is_file() and path.stat().st_size > 0 for path in out.iterdir())

    deadline = time.monotonic() + 600  # generous: a busy machine can take minutes to import and start
    while not writing() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # polls the condition; the signal goes as soon as it holds
    assert writing() and process.poll() is None, "the command never started writing frames"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=600)
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


# ----------------------------------------------------------------------------
# People followed through generated scenes (tests/videos.py): real faces with known identities
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundled_recognizer():
    """The default bundled model: it reads the scenes' happy and neutral faces clearly."""
    from emorec.recognizer import Recognizer

    return Recognizer()


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Factory: a generated scene video and its ground truth, written once per module."""
    folder = tmp_path_factory.mktemp("scenes")
    made: dict[tuple, tuple[Path, GroundTruth]] = {}

    def make(scene: str, grayscale: bool = False) -> tuple[Path, GroundTruth]:
        require(PHOTOS)
        if (scene, grayscale) not in made:
            path = folder / f"{scene}{'-gray' if grayscale else ''}.mp4"
            made[scene, grayscale] = path, write_scene(scene, path, fps=12.0, grayscale=grayscale)
        return made[scene, grayscale]

    return make


def _tracks_per_person(analysis, truth: GroundTruth) -> dict[int, set[int]]:
    """{person: the track ids their detected faces were given}."""
    ids: dict[int, set[int]] = {}
    for row in analysis.rows():
        if row["face"] is not None:
            person = truth.person_at(row["frame"], (row["x"], row["y"], row["w"], row["h"]))
            assert person is not None, f"frame {row['frame']}: a face where nobody is"
            ids.setdefault(person, set()).add(row["track"])
    return ids


@pytest.mark.parametrize("scene", ["crossing", "behind", "covered", "reenter", "five", "pan"])
def test_each_person_keeps_one_track_id(scene, scenes, bundled_recognizer):
    path, truth = scenes(scene)
    analysis = analyze_video(path, recognizer=bundled_recognizer)
    ids = _tracks_per_person(analysis, truth)
    assert len(ids) == len(truth.people)
    assert all(len(tracks) == 1 for tracks in ids.values()), ids
    assert len(set.union(*ids.values())) == len(truth.people), ids  # and nobody shares an id
    assert [track.id for track in analysis.tracks] == sorted(set.union(*ids.values()))


def test_a_returning_face_gets_a_new_id_once_the_buffer_is_over(scenes, bundled_recognizer):
    path, truth = scenes("covered")  # covered for 1 s
    ids = _tracks_per_person(analyze_video(path, recognizer=bundled_recognizer, track_buffer=0.5), truth)
    assert len(ids[0]) == 2 and len(ids[1]) == 1


def test_tracks_hold_with_a_stride_and_on_grayscale_video(scenes, bundled_recognizer):
    path, truth = scenes("crossing", grayscale=True)
    ids = _tracks_per_person(analyze_video(path, recognizer=bundled_recognizer, stride=3), truth)
    assert ids == {0: {1}, 1: {2}}


def test_smoothing_never_carries_one_persons_emotion_into_another(scenes, bundled_recognizer, tmp_path):
    path, truth = scenes("crossing")  # person 0 happy, person 1 neutral; they swap sides half-way
    alone = [bundled_recognizer.predict(sprite(name, 120))[0].emotion for name in truth.people]
    assert alone == ["happy", "neutral"]
    cfg = PredictConfig(sources=[str(path)], smooth=0.8)
    predict_video(path, cfg, tmp_path / "smoothed.csv", recognizer=bundled_recognizer, progress=False)
    with open(tmp_path / "smoothed.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["face"]]
    said = {}
    for row in rows:
        person = truth.person_at(int(row["frame"]), tuple(int(row[key]) for key in "xywh"))
        said.setdefault(person, []).append(row["emotion"])
    assert set(said[0]) == {"happy"} and set(said[1]) == {"neutral"}
    assert {row["face"] for row in rows} == {"1", "2"}  # the faces did swap places (face numbers go left to right)


def test_analyze_video_gives_each_persons_emotions_over_time(scenes, bundled_recognizer):
    path, truth = scenes("reenter")  # person 1 stays; person 0 walks out and comes back
    analysis = emorec.analyze_video(path, recognizer=bundled_recognizer)
    assert analysis.fps == truth.fps and analysis.duration == pytest.approx(truth.frames / truth.fps)
    assert analysis.class_names == bundled_recognizer.class_names
    walker = analysis.track(_tracks_per_person(analysis, truth)[0].pop())
    assert walker.dominant == "happy" and walker.frames == len(walker.times) < truth.frames
    assert walker.probabilities.shape == (walker.frames, len(analysis.class_names))
    assert np.all(np.diff(walker.times) > 0) and walker.first_time == walker.times[0] == 0.0
    gap = np.diff(walker.times).max()  # out of the frame for 0.6 s
    assert 0.5 < gap < 1.5 and walker.last_time == pytest.approx((truth.frames - 1) / truth.fps)
    assert sum(walker.time_share.values()) == pytest.approx(1.0)
    assert walker.mean_probabilities["happy"] == pytest.approx(walker.probabilities[:, 3 + 1].mean())
    assert walker.thumbnail.dtype == np.uint8 and walker.thumbnail.ndim == 3 and walker.thumbnail.shape[2] == 3
    assert bundled_recognizer.predict(walker.thumbnail)[0].emotion == "happy"
    frame = analysis.to_pandas()
    assert list(frame.columns[:4]) == ["time_s", "frame", "face", "track"] and len(frame) == len(analysis.rows())
    assert set(frame["track"].dropna()) == {track.id for track in analysis.tracks}


def test_json_lists_the_tracks_of_a_video(scenes, tmp_path, capsys, monkeypatch):
    path, truth = scenes("covered")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["predict", str(path), "--json", "--track-buffer", "1.5"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    tracks = result["video"]["tracks"]
    assert [track["id"] for track in tracks] == [1, 2]
    assert {track["dominant"] for track in tracks} == {"happy", "neutral"}
    assert all(track["frames"] <= truth.frames and track["last_time"] > track["first_time"] for track in tracks)
    assert set(tracks[0]) == {"id", "first_time", "last_time", "frames", "dominant", "mean_probabilities",
                              "time_share"}
    with open(tmp_path / f"{path.stem}.csv", newline="") as handle:
        assert {row["track"] for row in csv.DictReader(handle)} == {"1", "2"}
