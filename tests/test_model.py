"""Architectures, FaceAugment, inference copies, FLOP counts, and saving/loading self-describing models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import BUNDLED, DEFAULT_CLASSES, FER, require

import keras

from emorec.catalog import onnx_path
from emorec.config import ARCHITECTURES
from emorec.runtime import ModelError
from emorec.model import (
    BACKBONES,
    FaceAugment,
    ModelInfo,
    build_model,
    count_flops,
    inference_copy,
    load_model,
    load_weights_from,
    model_from_onnx,
    predict_probabilities,
    read_info,
    save_model,
    undo_class_weights,
)

FER_CLASSES = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]


def _pixels(n: int, shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape)).astype(np.uint8)


def test_config_and_model_agree_on_architectures():
    assert set(BACKBONES) == set(ARCHITECTURES)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_multiclass_model_shapes_and_probabilities(arch):
    model = build_model(arch, (48, 48, 1), 7, seed=0)
    assert model.input_shape == (None, 48, 48, 1)
    assert model.output_shape == (None, 7)
    assert model.layers[-1].activation.__name__ == "softmax"
    probs = predict_probabilities(model, _pixels(3, (48, 48, 1)))
    assert probs.shape == (3, 7) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (probs >= 0).all()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_binary_model_has_one_sigmoid_unit_and_two_probability_columns(arch):
    model = build_model(arch, (32, 32, 3), 2, seed=0)
    assert model.output_shape == (None, 1)
    assert model.layers[-1].activation.__name__ == "sigmoid"
    images = _pixels(4, (32, 32, 3))
    probs = predict_probabilities(model, images)
    assert probs.shape == (4, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    raw = keras.ops.convert_to_numpy(model(images.astype("float32"), training=False))[:, 0]
    np.testing.assert_allclose(probs[:, 1], raw, rtol=1e-6)


def test_build_rejects_bad_arguments():
    with pytest.raises(ValueError, match="mobilenet"):
        build_model("mobilenet", (48, 48, 1), 7)
    with pytest.raises(ValueError, match="two classes"):
        build_model("seed", (48, 48, 1), 1)


def test_face_augment_is_identity_at_inference_and_random_in_training():
    layer = FaceAugment(seed=0)
    images = np.random.default_rng(0).uniform(0, 1, (8, 48, 48, 1)).astype("float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(images, training=False)), images)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(images)), images)
    first = keras.ops.convert_to_numpy(layer(images, training=True))
    second = keras.ops.convert_to_numpy(layer(images, training=True))
    assert first.shape == images.shape and first.dtype == images.dtype
    assert not np.allclose(first, images)
    assert not np.allclose(first, second)
    # Warps and erasing do not invent values outside the input range.
    assert first.min() >= 0.0 and first.max() <= 1.0 + 1e-6


def test_face_augment_config_round_trip():
    layer = FaceAugment(rotation=5.0, zoom=0.1, shift=0.05, erase_prob=0.2, seed=3, name="aug")
    clone = FaceAugment.from_config(layer.get_config())
    assert (clone.rotation, clone.zoom, clone.shift, clone.erase_prob, clone.seed) == (5.0, 0.1, 0.05, 0.2, 3)


@pytest.mark.parametrize("arch, classes", [("seed", 3), ("vgg", 2)])
def test_inference_copy_drops_augmentation_and_keeps_predictions(arch, classes):
    model = build_model(arch, (48, 48, 1), classes, augment=True, seed=0)
    assert any(isinstance(layer, FaceAugment) for layer in model.layers)
    plain = inference_copy(model, arch)
    assert not any(isinstance(layer, FaceAugment) for layer in plain.layers)
    assert plain.count_params() == model.count_params()
    images = _pixels(5, (48, 48, 1))
    np.testing.assert_allclose(predict_probabilities(plain, images), predict_probabilities(model, images), atol=1e-6)


@pytest.mark.parametrize("weights", [[2.0, 0.5, 1.0], [4.0, 0.8]])
def test_undo_class_weights_divides_probabilities_by_the_weights(weights):
    model = build_model("seed", (48, 48, 1), len(weights), seed=0)
    images = _pixels(6, (48, 48, 1))
    before = predict_probabilities(model, images)
    undo_class_weights(model, weights)
    expected = before / np.array(weights)
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(predict_probabilities(model, images), expected, atol=1e-5)


def test_fine_tuning_puts_undone_class_weights_back(tmp_path):
    trained = build_model("seed", (48, 48, 1), 3, seed=0)
    bias = trained.layers[-1].get_weights()[1]
    undo_class_weights(trained, [2.0, 0.5, 1.0])
    info = ModelInfo(class_names=["a", "b", "c"], image_size=48, color_mode="grayscale", arch="seed",
                     extra={"class_weights_undone": [2.0, 0.5, 1.0]})
    path = save_model(trained, tmp_path / "m.keras", info)
    restarted = build_model("seed", (48, 48, 1), 3, seed=1)
    assert load_weights_from(restarted, path, ["a", "b", "c"])
    np.testing.assert_allclose(restarted.layers[-1].get_weights()[1], bias, atol=1e-6)


def test_save_and_load_round_trip(tmp_path):
    model = build_model("seed", (40, 40, 3), 3, seed=4)
    info = ModelInfo(class_names=["a", "b", "c"], image_size=40, color_mode="rgb", arch="seed", extra={"best_epoch": 2})
    path = save_model(model, tmp_path / "sub" / "m.keras", info)
    assert path == tmp_path / "sub" / "m.keras"
    assert not [p for p in path.parent.iterdir() if p != path]  # no temporary files left behind
    loaded, loaded_info = load_model(path)
    assert loaded_info == info
    assert loaded_info.input_shape == (40, 40, 3) and loaded_info.channels == 3
    assert read_info(path) == info
    images = _pixels(4, (40, 40, 3))
    np.testing.assert_allclose(predict_probabilities(loaded, images), predict_probabilities(model, images), atol=1e-6)


def test_load_weights_from_copies_everything_for_the_same_classes(tmp_path):
    trained = build_model("seed", (48, 48, 1), 3, seed=1)
    path = save_model(trained, tmp_path / "m.keras", ModelInfo(class_names=["a", "b", "c"]))
    fresh = build_model("seed", (48, 48, 1), 3, augment=True, seed=2)
    assert load_weights_from(fresh, path, ["a", "b", "c"]) == ["a", "b", "c"]
    images = _pixels(4, (48, 48, 1))
    np.testing.assert_allclose(predict_probabilities(fresh, images), predict_probabilities(trained, images), atol=1e-6)


def test_load_weights_from_other_classes_keeps_a_fresh_classifier(tmp_path):
    trained = build_model("seed", (48, 48, 1), 3, seed=1)
    path = save_model(trained, tmp_path / "m.keras", ModelInfo(class_names=["a", "b", "c"]))
    fresh = build_model("seed", (48, 48, 1), 3, seed=2)
    head_before = fresh.get_layer("emotion").get_weights()[0].copy()
    assert load_weights_from(fresh, path, ["x", "y", "z"]) == []
    np.testing.assert_array_equal(fresh.get_layer("emotion").get_weights()[0], head_before)
    first_conv = [[layer for layer in model.layers if layer.weights][0] for model in (trained, fresh)]
    np.testing.assert_array_equal(first_conv[1].get_weights()[0], first_conv[0].get_weights()[0])


def test_load_weights_from_moves_shared_classes_by_name_and_puts_their_class_weights_back(tmp_path):
    trained = build_model("seed", (48, 48, 1), 3, seed=1)
    kernel, bias = (w.copy() for w in trained.get_layer("emotion").get_weights())
    undo_class_weights(trained, [2.0, 0.5, 1.0])
    info = ModelInfo(class_names=["a", "b", "c"], extra={"class_weights_undone": [2.0, 0.5, 1.0]})
    path = save_model(trained, tmp_path / "m.keras", info)
    fresh = build_model("seed", (48, 48, 1), 4, seed=2)
    new_column = fresh.get_layer("emotion").get_weights()[0][:, 1].copy()
    assert load_weights_from(fresh, path, ["c", "new", "a", "b"]) == ["c", "a", "b"]
    new_kernel, new_bias = fresh.get_layer("emotion").get_weights()
    np.testing.assert_array_equal(new_kernel[:, [2, 3, 0]], kernel)
    np.testing.assert_allclose(new_bias[[2, 3, 0]], bias, atol=1e-6)
    np.testing.assert_array_equal(new_kernel[:, 1], new_column)


@pytest.mark.parametrize("arch, shape", [("vgg", (48, 48, 1)), ("seed", (40, 40, 1)), ("seed", (48, 48, 3))])
def test_load_weights_from_refuses_another_architecture_or_input(tmp_path, arch, shape):
    path = save_model(build_model("seed", (48, 48, 1), 2), tmp_path / "m.keras", ModelInfo(class_names=["a", "b"]))
    with pytest.raises(ValueError, match="m.keras: a seed model for"):
        load_weights_from(build_model(arch, shape, 2), path, ["a", "b"])


def test_save_refuses_to_overwrite(tmp_path):
    model = build_model("seed", (48, 48, 1), 2)
    info = ModelInfo(class_names=["a", "b"])
    path = save_model(model, tmp_path / "m.keras", info)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="m.keras"):
        save_model(build_model("seed", (48, 48, 1), 2, seed=9), path, info)
    assert path.read_bytes() == before
    save_model(model, path, ModelInfo(class_names=["x", "y"]), overwrite=True)
    assert read_info(path).class_names == ["x", "y"]


def test_save_requires_keras_suffix(tmp_path):
    with pytest.raises(ValueError, match=".keras"):
        save_model(build_model("seed", (48, 48, 1), 2), tmp_path / "m.h5", ModelInfo(class_names=["a", "b"]))


def test_plain_keras_loads_a_saved_model_without_emorec(tmp_path):
    model = build_model("seed", (48, 48, 1), 3, augment=True, seed=0)
    path = save_model(inference_copy(model, "seed"), tmp_path / "m.keras", ModelInfo(class_names=["a", "b", "c"]))
    code = (
        "import sys, numpy as np, keras\n"
        f"m = keras.models.load_model({str(path)!r}, compile=False)\n"
        "p = m.predict(np.zeros((2, 48, 48, 1), 'float32'), verbose=0)\n"
        "assert p.shape == (2, 3), p.shape\n"
        "assert not any(name.startswith('emorec') for name in sys.modules), 'emorec was imported'\n"
        "print('ok', m.input_shape)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240,
                          cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ok (None, 48, 48, 1)" in done.stdout


def test_read_info_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.keras"):
        read_info(tmp_path / "nothing.keras")
    not_zip = tmp_path / "fake.keras"
    not_zip.write_bytes(b"definitely not a zip file")
    with pytest.raises(ValueError, match="not a .keras model"):
        read_info(not_zip)
    bare = tmp_path / "bare.keras"
    build_model("seed", (48, 48, 1), 2).save(bare)
    with pytest.raises(ValueError, match="without emorec metadata"):
        read_info(bare)
    with pytest.raises(ValueError, match="without emorec metadata"):
        load_model(bare)


def test_saved_file_is_a_zip_with_metadata(tmp_path):
    path = save_model(build_model("seed", (48, 48, 1), 2), tmp_path / "m.keras", ModelInfo(class_names=["no", "yes"]))
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    assert "emorec.json" in names and "config.json" in names


def test_count_flops():
    seed, vgg = build_model("seed", (48, 48, 1), 7), build_model("vgg", (48, 48, 1), 7)
    assert 0 < count_flops(seed) < count_flops(vgg)
    # The seed model's first conv: 48x48 outputs x (3*3*1*32) weights x 2.
    first_conv = 2 * 48 * 48 * 3 * 3 * 1 * 32
    assert count_flops(seed) > first_conv
    tiny = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    assert count_flops(tiny) == 2 * 4 * 3


def test_compact_family_grows_within_its_flop_budget():
    flops = [count_flops(build_model(arch, (48, 48, 1), 8)) for arch in ("compact-s", "compact-m", "compact-l")]
    assert flops == sorted(flops)
    assert 20e6 <= flops[0] and flops[-1] <= 150e6
    assert flops[-1] < count_flops(build_model("vgg", (48, 48, 1), 8)) / 5
    # Depthwise layers count too: 48x48 outputs of the stem block's 3x3 depthwise conv over its 16 channels.
    assert count_flops(build_model("compact-s", (48, 48, 1), 8)) > 2 * 48 * 48 * 9 * 16


def test_bundled_model_loads():
    if not BUNDLED.is_file():
        pytest.skip(f"bundled model missing at {BUNDLED}")
    model, info = load_model()
    assert info.class_names == DEFAULT_CLASSES
    assert info.input_shape == (48, 48, 1)
    assert model.input_shape == (None, 48, 48, 1)
    assert model.output_shape == (None, len(DEFAULT_CLASSES))
    probs = predict_probabilities(model, _pixels(2, (48, 48, 1)))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def _with_member(source: Path, target: Path, name: str, data: bytes) -> Path:
    """A copy of the .keras zip source with member name replaced by data."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as new:
        for item in old.infolist():
            if item.filename != name:
                new.writestr(item, old.read(item))
        new.writestr(name, data)
    return target


@pytest.fixture(scope="module")
def three_class_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "three.keras"
    return save_model(build_model("seed", (48, 48, 1), 3), path, ModelInfo(class_names=["a", "b", "c"]))


@pytest.mark.parametrize("metadata, reason", [
    ({"class_names": ["a", "b", "c"], "image_size": "48"}, "image_size should be int"),
    ({"class_names": "abc"}, "class_names should be list"),
    ({"class_names": ["a", "a", "b"]}, "two or more different"),
    ({"image_size": 48}, "no class_names"),
    ({"class_names": ["a", "b", "c"], "color_mode": "sepia"}, "sepia"),
    (["a", "b", "c"], "not a JSON object"),
])
def test_mistyped_metadata_is_one_reason(three_class_model, tmp_path, metadata, reason):
    path = _with_member(three_class_model, tmp_path / "m.keras", "emorec.json", json.dumps(metadata).encode())
    with pytest.raises(ModelError, match=f"m.keras: not a usable emorec model \\(.*{reason}"):
        read_info(path)


def test_unknown_metadata_keys_are_ignored(three_class_model, tmp_path):
    metadata = {"class_names": ["a", "b", "c"], "made_by": "a newer emorec", "thresholds": [0.5]}
    path = _with_member(three_class_model, tmp_path / "m.keras", "emorec.json", json.dumps(metadata).encode())
    assert load_model(path)[1].class_names == ["a", "b", "c"]


def test_metadata_zip_bomb_is_refused_unread(three_class_model, tmp_path):
    padded = json.dumps({"class_names": ["a", "b", "c"]}).encode() + b" " * (64 * 2**20)  # deflates to ~64 KB
    path = _with_member(three_class_model, tmp_path / "m.keras", "emorec.json", padded)
    assert path.stat().st_size < three_class_model.stat().st_size + 2**20  # the member packs 64 MiB into KBs
    with pytest.raises(ModelError, match="over the 1,048,576-byte limit"):
        read_info(path)


def test_fewer_class_names_than_outputs_is_refused(three_class_model, tmp_path):
    path = _with_member(three_class_model, tmp_path / "m.keras", "emorec.json", b'{"class_names": ["a", "b", "c", "d"]}')
    assert read_info(path).class_names == ["a", "b", "c", "d"]  # knowable only once the network is loaded
    with pytest.raises(ModelError, match="4 class names but 3 outputs"):
        load_model(path)


def test_corrupt_weights_are_one_line(three_class_model, tmp_path):
    path = _with_member(three_class_model, tmp_path / "m.keras", "model.weights.h5", b"\x89HDF\r\n\x1a\n" + b"\0" * 500)
    with pytest.raises(ModelError, match="m.keras: not a usable emorec model") as caught:
        load_model(path)
    assert "\n" not in str(caught.value)


def test_a_fifo_named_keras_is_refused_without_waiting(tmp_path):
    os.mkfifo(tmp_path / "m.keras")
    with pytest.raises(ModelError, match="FIFO"):
        read_info(tmp_path / "m.keras")


# ----------------------------------------------------------------------------
# The bundled models rebuilt in Keras from their ONNX files
# ----------------------------------------------------------------------------


def _real_faces(per_class: int = 15) -> np.ndarray:
    from emorec.data import load_images

    root = require(FER / "val")
    return load_images([p for d in sorted(root.iterdir()) for p in sorted(d.glob("*.jpg"))[:per_class]], 48, 1, False)


@pytest.mark.parametrize("name", ["ferplus", "fer2013"])
def test_a_bundled_model_rebuilt_from_onnx_gives_the_onnx_probabilities_on_real_faces(name):
    from emorec.runtime import load_runtime, probabilities

    model, info = load_model(name)
    images = _real_faces()
    onnx_probs = probabilities(load_runtime(name), images)
    np.testing.assert_allclose(predict_probabilities(model, images), onnx_probs, atol=1e-4)
    assert info.arch == "vgg" and model.name == "emorec_vgg" and len(images) == 105
    # The folded BatchNormalization layers apply the stored scale and shift, with no statistics of their own.
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(float(np.abs(layer.moving_mean.numpy()).max()) == 0.0 for layer in norms)


def test_an_int8_model_is_not_rebuilt(tmp_path):
    with pytest.raises(ModelError, match="int8 model cannot be rebuilt"):
        model_from_onnx(onnx_path("ferplus-int8"))


def test_fine_tuning_starts_from_the_bundled_weights():
    model = build_model("vgg", (48, 48, 1), 7)
    shared = load_weights_from(model, "fer2013", ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"])
    assert len(shared) == 7
    reference, _ = load_model("fer2013")
    for mine, theirs in zip(model.layers, reference.layers, strict=True):
        # The classifier's bias gets the training class weights back (see load_weights_from); all else is as saved.
        kept = mine.get_weights()[:1] if mine.name == "emotion" else mine.get_weights()
        for a, b in zip(kept, theirs.get_weights()):
            np.testing.assert_array_equal(a, b)
