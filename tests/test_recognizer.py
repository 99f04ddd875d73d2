"""Recognizer: faces found and classified in arrays and files, with a real (untrained) model and real detector."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import FER, PHOTO_NAMES, PHOTOS, assert_distribution, photo, require

from emorec.images import ImageReadError, read_image
from emorec.preprocess import to_model_input
from emorec.recognizer import WHOLE_IMAGE, Recognizer, to_bgr
from emorec.runtime import KerasModel, load_runtime


def tinted(image: np.ndarray) -> np.ndarray:
    """A colourful BGR version of a gray photo, so channel order matters."""
    out = image.astype(np.float32)
    out[..., 0] *= 0.3
    out[..., 2] = np.clip(out[..., 2] * 1.2 + 30, 0, 255)
    return out.astype(np.uint8)


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


def test_blank_image_has_no_face_but_a_small_one_is_the_face(recognizer):
    assert recognizer.locate(np.full((400, 400, 3), 128, np.uint8)) == []
    assert recognizer.predict(np.full((400, 400, 3), 128, np.uint8)) == []
    small = np.full((48, 48), 128, np.uint8)  # 2-D gray, too small to search
    assert recognizer.locate(to_bgr(small)) == [WHOLE_IMAGE]
    [face] = recognizer.predict(small)
    assert face.box is None and face.score is None and face.whole_image


def test_fer_crop_is_classified_whole_without_detection(recognizer, seven_class_model):
    paths = sorted(require(FER / "val" / "happy").glob("*.jpg"))
    image = cv2.imread(str(paths[0]))
    assert image.shape[:2] == (48, 48)
    [face] = Recognizer(seven_class_model, detect=False).predict(image)
    assert face.box is None
    assert_distribution(face)
    # With detection on, a crop under 64 px is classified whole too, even where
    # a detector would find the face inside it.
    assert any(recognizer.detector.detect(cv2.imread(str(path))) for path in paths[:10])
    for path in paths[:10]:
        [face] = recognizer.predict(path)
        assert face.box is None


def test_predict_and_evaluate_give_the_same_top_class_on_fer_crops(fer_tree):
    """The same FER2013 val crops through `predict` (automatic detection) and `evaluate`: one verdict per file."""
    from emorec.evaluate import compute_metrics, evaluate_model

    tree = fer_tree(classes=("angry", "happy", "sad", "surprise"), per_class=12, split="val")
    runtime = load_runtime("bundled")
    report = evaluate_model(runtime, tree, progress=False)
    recognizer = Recognizer(runtime=runtime)
    names = runtime.info.class_names
    truth, predicted = [], []
    for path in sorted(tree.glob("*/*.jpg")):
        [face] = recognizer.predict(path)
        assert face.box is None  # classified whole, not re-cropped by the detector
        truth.append(names.index(path.parent.name))
        predicted.append(names.index(face.emotion))
    assert compute_metrics(np.array(truth), np.array(predicted), names).confusion == report.confusion


def test_images_of_64_px_and_more_are_searched_for_faces(recognizer):
    assert recognizer.locate(np.full((63, 300, 3), 128, np.uint8)) == [WHOLE_IMAGE]  # a crop: never searched
    assert recognizer.locate(np.full((64, 64, 3), 128, np.uint8)) == []  # no face found, no guess
    assert recognizer.locate(np.full((96, 96, 3), 128, np.uint8)) == []


def test_whole_image_input_is_what_evaluation_feeds_the_model():
    """One preprocessing path: a FER2013 file reaches the model the same way in evaluate and predict."""
    path = sorted(require(FER / "val" / "sad").glob("*.jpg"))[0]
    recognizer = Recognizer("bundled", detect=False)
    prepared = recognizer.prepare(to_bgr(path))
    evaluation_input = to_model_input(read_image(path), 48, 1)
    np.testing.assert_array_equal(prepared.crops[0], evaluation_input)


def test_rgb_and_bgr_arrays_agree(recognizer):
    bgr = tinted(photo())
    rgb = np.ascontiguousarray(bgr[..., ::-1])
    from_bgr = recognizer.predict(bgr)
    from_rgb = recognizer.predict(rgb, rgb=True)
    assert len(from_bgr) == len(from_rgb) == 1
    assert from_bgr[0].box == from_rgb[0].box
    for name, p in from_bgr[0].probabilities.items():
        assert from_rgb[0].probabilities[name] == pytest.approx(p, abs=1e-5)
    from_path = recognizer.predict(PHOTOS / PHOTO_NAMES[0])
    gray = recognizer.predict(cv2.cvtColor(photo(), cv2.COLOR_BGR2GRAY))
    assert gray[0].box == from_path[0].box


def test_predict_batch_matches_single_predictions(recognizer):
    images = [photo(n) for n in PHOTO_NAMES[:2]] + [np.full((200, 200, 3), 0, np.uint8)]
    batch = recognizer.predict_batch(images)
    assert [len(faces) for faces in batch] == [1, 1, 0]
    single = recognizer.predict(images[1])
    assert batch[1][0].probabilities["happy"] == pytest.approx(single[0].probabilities["happy"], abs=1e-5)


def test_onnx_and_keras_bundled_models_recognize_the_same(tmp_path):
    from emorec.model import load_model

    onnx_faces = Recognizer().predict_batch([photo(n) for n in PHOTO_NAMES])
    keras_faces = Recognizer(runtime=KerasModel(*load_model("bundled"))).predict_batch([photo(n) for n in PHOTO_NAMES])
    for onnx_face, keras_face in zip(sum(onnx_faces, []), sum(keras_faces, [])):
        assert onnx_face.box == keras_face.box and onnx_face.emotion == keras_face.emotion
        assert onnx_face.confidence == pytest.approx(keras_face.confidence, abs=1e-4)


@pytest.mark.parametrize("array, message", [
    (np.zeros((0, 0, 3), np.uint8), "empty image"),
    (np.zeros((4, 0), np.uint8), "empty image"),
    (np.zeros((2, 2, 5), np.uint8), "shape"),
    (np.zeros(5, np.uint8), "shape"),
])
def test_arrays_that_are_not_images_are_value_errors(recognizer, array, message):
    with pytest.raises(ValueError, match=message):
        recognizer.predict(array)


def test_unreadable_path_is_an_image_read_error(recognizer, tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty.jpg"):
        recognizer.predict(tmp_path / "empty.jpg")


def test_folder_and_video_pipelines_load_the_model_with_the_threads_the_workers_leave(monkeypatch):
    from emorec.config import PredictConfig
    from emorec.pipeline import model_threads
    from emorec.predict import predict_images

    built = []
    monkeypatch.setattr(Recognizer, "from_config", classmethod(lambda cls, cfg, threads=0: built.append(threads) or
                                                               cls(cfg.model, threads=threads)))
    predict_images(PredictConfig(sources=[str(require(PHOTOS / PHOTO_NAMES[0]))]), progress=False)
    assert built == [model_threads()]
    session = Recognizer(threads=1).runtime.session
    assert session.get_session_options().intra_op_num_threads == 1
