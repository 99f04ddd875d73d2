"""Distillation targets: teacher probabilities in the student's classes, softened and mixed with the labels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import FER, copy_fer_subset, require

import keras

from emorec import distill
from emorec.cli import main
from emorec.errors import UsageError
from emorec.images import read_image
from emorec.preprocess import to_model_input
from emorec.runtime import load_runtime, probabilities


def _fer_faces(count: int = 12) -> np.ndarray:
    files = sorted((require(FER) / "val" / "happy").iterdir())[:count // 2]
    files += sorted((FER / "val" / "sad").iterdir())[:count // 2]
    return np.stack([to_model_input(read_image(path), 48, 1) for path in files])


def test_soften_flattens_and_keeps_the_ranking():
    probs = np.array([[0.7, 0.2, 0.1]], np.float32)
    soft = distill.soften(probs, 2.0)
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, rtol=1e-6)
    assert (np.argsort(soft) == np.argsort(probs)).all()
    assert soft.max() < probs.max() and soft.min() > probs.min()
    np.testing.assert_allclose(soft, np.sqrt(probs) / np.sqrt(probs).sum())
    assert distill.soften(probs, 1.0) is probs


def test_mixed_targets_make_the_loss_a_weighted_sum_of_label_and_teacher_losses():
    rng = np.random.default_rng(0)
    labels = keras.utils.to_categorical(rng.integers(0, 4, 32), 4).astype(np.float32)
    teacher = rng.dirichlet(np.ones(4), 32).astype(np.float32)
    student = rng.dirichlet(np.ones(4), 32).astype(np.float32)
    weight, temperature = 0.3, 2.0
    loss = keras.losses.CategoricalCrossentropy()
    mixed = loss(distill.mix_targets(labels, teacher, weight, temperature), student)
    parts = (1 - weight) * loss(labels, student) + weight * loss(distill.soften(teacher, temperature), student)
    np.testing.assert_allclose(float(mixed), float(parts), rtol=1e-5)


def test_binary_targets_take_the_teachers_second_class():
    labels = np.array([[1.0], [0.0]], np.float32)
    teacher = np.array([[0.2, 0.8], [0.6, 0.4]], np.float32)
    np.testing.assert_allclose(distill.mix_targets(labels, teacher, 0.5, 1.0), [[0.9], [0.2]])


def test_teacher_columns_follow_the_students_classes_by_name():
    probs = np.array([[0.1, 0.6, 0.3]], np.float32)  # teacher classes: angry, happy, sad
    ordered = distill._in_student_order(probs, ["angry", "happy", "sad"], ["sad", "happy", "contempt"])
    np.testing.assert_allclose(ordered, [[0.3 / 0.9, 0.6 / 0.9, 0.0]], rtol=1e-6)


def test_teacher_probabilities_are_the_bundled_models_flip_tta_probabilities():
    faces = _fer_faces()
    classes = ["happy", "sad", "neutral"]
    probs = distill.teacher_probabilities("ferplus", faces, classes)
    runtime = load_runtime("ferplus")
    expected = distill._in_student_order(probabilities(runtime, faces, "flip"), runtime.info.class_names, classes)
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    assert probs[:6, 0].mean() > probs[:6, 1].mean()  # the happy faces look happier than sad to the teacher
    two = distill.teacher_probabilities("ferplus,fer2013", faces, classes)
    both = (expected + distill.teacher_probabilities("fer2013", faces, classes)) / 2
    np.testing.assert_allclose(two, both, atol=1e-6)


def test_teacher_of_another_input_size_is_refused():
    faces = np.zeros((2, 40, 40, 1), np.uint8)
    with pytest.raises(UsageError, match="teacher ferplus: takes"):
        distill.teacher_probabilities("ferplus", faces, ["happy", "sad"])


def test_teacher_cache_is_reused_only_for_the_same_images(tmp_path):
    faces = _fer_faces(4)
    first = distill.cached_teacher_probabilities(tmp_path, "fer2013", faces, ["happy", "sad"])
    stamp = (tmp_path / distill.CACHE_NAME).stat().st_mtime_ns
    again = distill.cached_teacher_probabilities(tmp_path, "fer2013", faces, ["happy", "sad"])
    np.testing.assert_array_equal(first, again)
    assert (tmp_path / distill.CACHE_NAME).stat().st_mtime_ns == stamp
    other = distill.cached_teacher_probabilities(tmp_path, "fer2013", faces[::-1], ["happy", "sad"])
    np.testing.assert_allclose(other, first[::-1], atol=1e-6)


def test_missing_teacher_is_one_line_before_any_data_is_read(tmp_path, capsys):
    code = main(["train", str(tmp_path / "nowhere"), "--teacher", str(tmp_path / "missing.onnx"),
                 "--project", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code != 0 and "missing.onnx" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_train_a_compact_student_with_a_teacher_on_real_faces(tmp_path):
    data = copy_fer_subset(tmp_path / "data", "train", ("happy", "sad", "surprise"), 24)
    runs = tmp_path / "runs"
    args = ["train", str(data), "--arch", "compact-s", "--teacher", "ferplus", "--teacher-weight", "0.7",
            "--temperature", "3", "--epochs", "1", "--batch-size", "16", "--project", str(runs), "--name", "kd"]
    assert main(args) == 0
    run = runs / "kd"
    config = json.loads((run / "config.json").read_text())
    assert (config["arch"], config["teacher"], config["teacher_weight"], config["temperature"]) == \
        ("compact-s", "ferplus", 0.7, 3.0)
    with np.load(run / distill.CACHE_NAME) as cached:
        probs = cached["probs"]
    assert probs.shape == (72 - int(0.2 * 72), 3)  # a row per training image (keras holds out 20%), 3 classes
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (run / "weights" / "best.keras").is_file()
