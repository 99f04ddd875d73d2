"""Loading models on ONNX Runtime and Keras, their metadata, and test-time augmentation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import DEFAULT_CLASSES, FER, require

from emorec import runtime
from emorec.config import tta_mode
from emorec.model import ModelInfo, build_model, predict_probabilities, save_model
from emorec.catalog import BUNDLED_NAMES, BUNDLED_ONNX, MODELS_DIR, onnx_path
from emorec.runtime import (KerasModel, ModelError, OnnxModel, load_runtime,
                            probabilities, read_info, tta_views)

FER_CLASSES = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]


def _pixels(n: int, shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape)).astype(np.uint8)


def _keras(model, classes=3) -> KerasModel:
    return KerasModel(model, ModelInfo(class_names=[str(i) for i in range(classes)]))


def test_bundled_onnx_model_describes_itself():
    onnx_model = OnnxModel(BUNDLED_ONNX)
    assert onnx_model.info == read_info(BUNDLED_ONNX)
    assert onnx_model.info.class_names == DEFAULT_CLASSES and onnx_model.info.input_shape == (48, 48, 1)
    assert onnx_path(None) == onnx_path("bundled") == BUNDLED_ONNX
    assert isinstance(load_runtime(), OnnxModel)


@pytest.mark.parametrize("name, classes", [("fer2013", 7), ("ferplus", 8), ("fer2013-int8", 7), ("ferplus-int8", 8)])
def test_bundled_models_are_chosen_by_name(name, classes):
    path = onnx_path(name)
    assert path.parent == MODELS_DIR and path.name.startswith(f"emorec-{name.removesuffix('-int8')}.")
    assert len(load_runtime(name).info.class_names) == classes


def test_the_bundled_models_ship_as_onnx_only():
    """The base install runs no Keras: training and explain rebuild a bundled model from its ONNX file."""
    assert {path.suffix for path in MODELS_DIR.glob("emorec-*.*") if path.suffix != ".md"} == {".onnx"}
    assert len(list(MODELS_DIR.glob("emorec-*.onnx"))) == 2 * len(BUNDLED_NAMES)  # float32 and int8 of each
    assert "models/*.keras" not in (Path(runtime.__file__).parents[2] / "pyproject.toml").read_text()


def test_forward_in_batches_matches_one_call(monkeypatch):
    model = _keras(build_model("seed", (48, 48, 1), 3, seed=1))
    images = _pixels(10, (48, 48, 1))
    whole = probabilities(model, images)
    monkeypatch.setattr(runtime, "BATCH", 4)
    np.testing.assert_allclose(probabilities(model, images), whole, atol=1e-5)


def test_tta_averages_with_the_mirror_image():
    model = _keras(build_model("seed", (48, 48, 1), 3, seed=2))
    images = _pixels(3, (48, 48, 1), seed=5)
    plain = probabilities(model, images)
    mirrored = probabilities(model, images[:, :, ::-1, :])
    np.testing.assert_allclose(probabilities(model, images, tta=True), (plain + mirrored) / 2, atol=1e-6)


def test_multi_tta_uses_twelve_views_shifted_zoomed_and_mirrored():
    images = _pixels(2, (48, 48, 1), seed=7)
    views = tta_views(images, "multi")
    assert len(views) == 12 and all(view.shape == images.shape for view in views)
    np.testing.assert_array_equal(views[0], images)
    # views[1] is shifted 2 px to the right: interior columns move by two.
    np.testing.assert_array_equal(views[1][:, :, 2:], images[:, :, :-2])
    np.testing.assert_array_equal(views[6], images[:, :, ::-1, :])  # mirrors follow the six plain views
    model = _keras(build_model("seed", (48, 48, 1), 3, seed=2))
    float_views = tta_views(images.astype(np.float32), "multi")  # probabilities warps float pixels
    expected = np.mean([probabilities(model, view) for view in float_views], axis=0)
    np.testing.assert_allclose(probabilities(model, images, tta="multi"), expected, atol=1e-6)


def test_unknown_tta_mode_is_refused():
    assert [tta_mode(value) for value in (False, None, True, "multi")] == ["none", "none", "flip", "multi"]
    with pytest.raises(ValueError, match="tta='crops'"):
        tta_mode("crops")


def test_keras_helper_and_runtime_give_the_same_probabilities():
    model = build_model("seed", (48, 48, 1), 2, seed=3)
    images = _pixels(4, (48, 48, 1))
    probs = predict_probabilities(model, images)
    assert probs.shape == (4, 2)  # a sigmoid unit becomes two columns
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(probs, probabilities(_keras(model, 2), images), atol=1e-7)


def test_non_finite_outputs_are_refused(tmp_path):
    model = build_model("seed", (48, 48, 1), 3, seed=4)
    kernel, bias = model.layers[-1].get_weights()
    model.layers[-1].set_weights([kernel, np.full_like(bias, np.nan)])  # what a diverged run leaves
    path = save_model(model, tmp_path / "diverged.keras", ModelInfo(class_names=["a", "b", "c"]))
    with pytest.raises(ModelError, match="diverged.keras: gives non-finite probabilities"):
        probabilities(load_runtime(path), _pixels(2, (48, 48, 1)))


@pytest.mark.parametrize("content, reason", [(b"", "not a usable emorec model"), (b"\x08\x07garbage" * 50, "not a usable emorec model")])
def test_broken_onnx_files_are_one_line_errors(tmp_path, content, reason):
    path = tmp_path / "broken.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=f"broken.onnx: {reason}") as caught:
        load_runtime(path)
    assert "\n" not in str(caught.value)


def test_unknown_model_suffix_and_missing_file(tmp_path):
    with pytest.raises(ModelError, match="not a model file"):
        load_runtime(tmp_path / "weights.h5")
    with pytest.raises(FileNotFoundError, match="missing.onnx: no such model file"):
        load_runtime(tmp_path / "missing.onnx")


def test_onnx_inference_never_imports_keras_or_tensorflow():
    photo = Path(require(FER / "val" / "happy")).iterdir().__next__()
    code = (
        "import sys\n"
        "from emorec import Recognizer\n"
        f"faces = Recognizer().predict({str(photo)!r})\n"
        "assert faces and faces[0].emotion, faces\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('keras', 'tensorflow', 'matplotlib'))\n"
        "print('heavy:', heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "heavy: []" in done.stdout
