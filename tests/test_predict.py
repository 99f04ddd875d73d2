"""Predicting on photos, folders, arrays and videos with a real (untrained) model and real detector."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from emorec.config import PredictConfig
from emorec.model import ModelInfo, build_model, save_model
from emorec.predict import (
    FaceResult,
    ImageResult,
    Recognizer,
    annotate,
    format_results,
    iter_sources,
    predict_images,
    predict_video,
    results_to_json,
    run_predict,
    smooth_faces,
    to_bgr,
    webcam_index,
    write_csv,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PHOTOS = DATA / "photos"
FER_HAPPY = DATA / "fer2013" / "val" / "happy"
CLASSES = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
PHOTO_NAMES = ["Arnaud_Lagardere_0001.jpg", "Beyonce_Knowles_0001.jpg", "Carson_Palmer_0004.jpg"]

needs_data = pytest.mark.skipif(not PHOTOS.is_dir(), reason=f"shared data not found at {DATA}")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    model = build_model("seed", (48, 48, 1), len(CLASSES), seed=0)
    return save_model(model, tmp_path_factory.mktemp("model") / "tiny.keras", ModelInfo(class_names=CLASSES))


@pytest.fixture(scope="module")
def recognizer(model_path) -> Recognizer:
    return Recognizer(model_path)


def photo(name: str = PHOTO_NAMES[0]) -> np.ndarray:
    return cv2.imread(str(PHOTOS / name))


def tinted(image: np.ndarray) -> np.ndarray:
    """A colourful BGR version of a gray photo, so channel order matters."""
    out = image.astype(np.float32)
    out[..., 0] *= 0.3
    out[..., 2] = np.clip(out[..., 2] * 1.2 + 30, 0, 255)
    return out.astype(np.uint8)


def cfg(sources, model_path, **kw) -> PredictConfig:
    return PredictConfig(sources=[str(s) for s in sources], model=str(model_path), **kw)


def assert_distribution(face) -> None:
    assert list(face.probabilities) == CLASSES
    assert sum(face.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    assert face.emotion in CLASSES and face.confidence == max(face.probabilities.values())


@needs_data
def test_multi_face_image_gives_faces_left_to_right(recognizer):
    tiles = [cv2.resize(photo(n), (240, 240)) for n in PHOTO_NAMES]
    gap = np.zeros((240, 60, 3), np.uint8)
    image = np.hstack([tiles[0], gap, tiles[1], gap, tiles[2]])
    faces = recognizer.predict(image)
    assert len(faces) == 3
    centres = [x + w / 2 for x, _, w, _ in (f.box for f in faces)]
    for i, centre in enumerate(centres):  # each face lies in its own tile, in order
        assert 300 * i <= centre < 300 * i + 240
    for face in faces:
        assert_distribution(face)
        assert face.score is not None


def test_blank_image_has_no_face_but_a_small_one_is_a_crop(recognizer, tmp_path):
    assert recognizer.predict(np.full((400, 400, 3), 128, np.uint8)) == []
    small = recognizer.predict(np.full((48, 48), 128, np.uint8))  # 2-D gray, too small to search
    assert len(small) == 1 and small[0].box is None and small[0].score is None
    cv2.imwrite(str(tmp_path / "blank.png"), np.full((300, 300, 3), 255, np.uint8))
    [result] = predict_images(cfg([tmp_path / "blank.png"], "unused"), progress=False, recognizer=recognizer)
    assert result.no_face and result.error is None
    assert format_results([result]).endswith("blank.png  no face found")


@needs_data
def test_fer_crop_is_classified_whole(recognizer, model_path):
    image = cv2.imread(str(sorted(FER_HAPPY.glob("*.jpg"))[0]))
    assert image.shape[:2] == (48, 48)
    [face] = Recognizer(model_path, detect=False).predict(image)
    assert face.box is None
    assert_distribution(face)
    # With detection on, a small image gives one face either way: a detected
    # one, or the whole image when the detector finds nothing (auto rule).
    for path in sorted(FER_HAPPY.glob("*.jpg"))[:10]:
        faces = recognizer.predict(path)
        assert len(faces) == 1
        if not recognizer.detector.detect(cv2.imread(str(path))):
            assert faces[0].box is None


@needs_data
def test_bad_files_in_a_folder_are_errors_and_the_rest_works(recognizer, tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.jpg").write_bytes((PHOTOS / PHOTO_NAMES[0]).read_bytes())
    (folder / "sub" / "b.jpg").write_bytes((PHOTOS / PHOTO_NAMES[1]).read_bytes())
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "notes.txt").write_text("ignored")
    assert [p.name for p in iter_sources([folder])] == ["a.jpg", "corrupt.png", "empty.jpg", "b.jpg"]
    results = predict_images(cfg([folder], "unused"), progress=False, recognizer=recognizer)
    by_name = {Path(r.source).name: r for r in results}
    assert "empty.jpg" in by_name["empty.jpg"].error and "\n" not in by_name["empty.jpg"].error
    assert "corrupt.png" in by_name["corrupt.png"].error
    for name in ("a.jpg", "b.jpg"):
        assert by_name[name].error is None and len(by_name[name].faces) == 1
    text = format_results(results)
    assert "corrupt.png  error: " in text and "a.jpg  face 1 (" in text
    (corrupt_line,) = [line for line in text.splitlines() if "corrupt.png" in line]
    assert corrupt_line.count("corrupt.png") == 1  # the path is said once


@needs_data
def test_rgb_and_bgr_arrays_agree(recognizer):
    bgr = tinted(photo())
    rgb = np.ascontiguousarray(bgr[..., ::-1])
    from_bgr = recognizer.predict(bgr)
    from_rgb = recognizer.predict(rgb, rgb=True)
    assert len(from_bgr) == len(from_rgb) == 1
    assert from_bgr[0].box == from_rgb[0].box
    for c in CLASSES:
        assert from_rgb[0].probabilities[c] == pytest.approx(from_bgr[0].probabilities[c], abs=1e-5)
    from_path = recognizer.predict(PHOTOS / PHOTO_NAMES[0])
    gray = recognizer.predict(cv2.cvtColor(photo(), cv2.COLOR_BGR2GRAY))
    assert gray[0].box == from_path[0].box


@needs_data
def test_predict_batch_matches_single_predictions(recognizer):
    images = [photo(n) for n in PHOTO_NAMES[:2]] + [np.full((200, 200, 3), 0, np.uint8)]
    batch = recognizer.predict_batch(images)
    assert [len(faces) for faces in batch] == [1, 1, 0]
    single = recognizer.predict(images[1])
    assert batch[1][0].probabilities["happy"] == pytest.approx(single[0].probabilities["happy"], abs=1e-5)


@needs_data
def test_save_annotated_refuses_to_overwrite(recognizer, tmp_path):
    out = tmp_path / "out"
    config = cfg([PHOTOS / PHOTO_NAMES[0]], "unused", save_annotated=str(out))
    [result] = predict_images(config, progress=False, recognizer=recognizer)
    saved = cv2.imread(str(out / PHOTO_NAMES[0]))
    assert saved.shape == photo().shape
    assert not np.array_equal(saved, photo())
    before = (out / PHOTO_NAMES[0]).read_bytes()
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        predict_images(config, progress=False, recognizer=recognizer)
    assert (out / PHOTO_NAMES[0]).read_bytes() == before
    config.exist_ok = True
    predict_images(config, progress=False, recognizer=recognizer)
    assert [p.name for p in out.iterdir()] == [PHOTO_NAMES[0]]  # no temporary files left


def test_annotate_draws_without_changing_input(recognizer):
    image = np.zeros((48, 48, 3), np.uint8)
    faces = recognizer.predict(image)
    drawn = annotate(image, faces)
    assert drawn.any() and not image.any()


@needs_data
def test_json_and_csv_outputs(recognizer, tmp_path):
    results = predict_images(cfg([PHOTOS / PHOTO_NAMES[0]], "unused"), progress=False, recognizer=recognizer)
    results += [ImageResult("blank.png"), ImageResult("bad.jpg", error="bad.jpg: empty file (0 bytes)")]
    data = json.loads(results_to_json(results))
    assert data[0]["faces"][0]["emotion"] in CLASSES and data[1]["no_face"] and data[2]["error"]
    with open(write_csv(results, tmp_path / "r.csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["face"] for r in rows] == ["1", "", ""]
    assert rows[0]["emotion"] in CLASSES and rows[1]["emotion"] == "" and rows[2]["error"].startswith("bad.jpg")


def write_video(path: Path, frames: int = 10) -> Path:
    frame = cv2.copyMakeBorder(cv2.resize(photo(), (200, 200)), 20, 20, 60, 60, cv2.BORDER_CONSTANT)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (frame.shape[1], frame.shape[0]))
    for _ in range(frames):
        writer.write(frame)
    writer.release()
    return path


@needs_data
def test_video_csv_and_annotated_video(recognizer, tmp_path):
    video = write_video(tmp_path / "clip.mp4")
    config = cfg([video], "unused", stride=2, smooth=0.5)
    summary = predict_video(video, config, tmp_path / "clip.csv", tmp_path / "out" / "clip.mp4", recognizer, progress=False)
    assert summary.frames == 10 and summary.classified_frames == 5 and summary.face_rows == 5
    with open(tmp_path / "clip.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["time_s", "frame", "face", "x", "y", "w", "h", *CLASSES, "emotion"]
    assert [r[1] for r in rows[1:]] == ["0", "2", "4", "6", "8"]
    assert rows[2][0] == "0.200" and rows[1][2] == "1"
    assert sum(float(v) for v in rows[3][7:14]) == pytest.approx(1.0, abs=1e-3)
    capture = cv2.VideoCapture(str(tmp_path / "out" / "clip.mp4"))
    assert capture.isOpened() and int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 10
    capture.release()
    with pytest.raises(FileExistsError):
        predict_video(video, config, tmp_path / "clip.csv", recognizer=recognizer, progress=False)


@needs_data
def test_run_predict_routes_videos_and_images(model_path, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_video(folder / "clip.avi", frames=3)
    (folder / "a.jpg").write_bytes((PHOTOS / PHOTO_NAMES[2]).read_bytes())
    out = tmp_path / "out"
    results = run_predict(cfg([folder], model_path, save_annotated=str(out)), progress=False)
    assert [Path(r.source).name for r in results] == ["a.jpg", "clip.avi"]
    assert len(results[0].faces) == 1 and results[1].video.frames == 3
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg", "clip.csv", "clip.mp4"]
    again = run_predict(cfg([folder / "clip.avi"], model_path, save_annotated=str(out)), progress=False)
    assert "already exists" in again[0].error
    assert "video: 3 frames" in format_results(results)


def test_run_predict_reports_a_folder_without_media(untrained_model_path, tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no photos here")
    results = run_predict(cfg([tmp_path / "empty"], untrained_model_path), progress=False)
    assert len(results) == 1 and "no images or videos" in results[0].error
    assert str(tmp_path / "empty") in results[0].error


def test_smoothing_is_exponential_per_face_index():
    previous = {}
    first = [FaceResult((0, 0, 9, 9), {"happy": 1.0, "sad": 0.0})]
    second = [FaceResult((1, 0, 9, 9), {"happy": 0.0, "sad": 1.0}), FaceResult(None, {"happy": 0.5, "sad": 0.5})]
    smooth_faces(first, previous, 0.75)
    [a, b] = smooth_faces(second, previous, 0.75)
    assert a.probabilities == pytest.approx({"happy": 0.75, "sad": 0.25}) and a.box == (1, 0, 9, 9)
    assert b.probabilities == {"happy": 0.5, "sad": 0.5}  # a new face index starts unsmoothed
    assert smooth_faces(first, {}, 0.0) is first


def test_array_and_source_conversions(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert to_bgr(gray).shape == (3, 4, 3)
    assert to_bgr(np.ones((3, 4, 3), np.float32))[0, 0].tolist() == [255, 255, 255]
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 200
    assert to_bgr(rgba, rgb=True)[0, 0].tolist() == [0, 0, 200]
    with pytest.raises(ValueError, match="shape"):
        to_bgr(np.zeros((2, 2, 5), np.uint8))
    assert webcam_index("0") == 0 and webcam_index(2) == 2 and webcam_index("clip.mp4") is None
