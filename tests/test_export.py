"""`emorec export`: .keras to ONNX with metadata, checked against Keras before it is kept."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FER, require

from emorec import export
from emorec.cli import main
from emorec.data import scan_dataset
from emorec.images import read_image
from emorec.export import check_faces, export_onnx, int8_path, quantize_int8
from emorec.model import ModelInfo, build_model, inference_copy, model_from_onnx, predict_probabilities, save_model
from emorec.preprocess import to_model_input
from emorec.runtime import ModelError, OnnxModel, load_runtime, probabilities, read_info


def _fer_images(size: int, channels: int, per_class: int = 4) -> np.ndarray:
    report = scan_dataset(require(FER / "val"), progress=False)
    files = [path for paths in report.files.values() for path in paths[:per_class]]
    return np.stack([to_model_input(read_image(path), size, channels) for path in files])


@pytest.mark.parametrize("arch, size, color_mode, classes", [
    ("seed", 48, "grayscale", 7),
    ("compact-s", 48, "grayscale", 8),
    pytest.param("vgg", 48, "grayscale", 7, marks=pytest.mark.slow),
    pytest.param("resnet", 40, "rgb", 3, marks=pytest.mark.slow),
    pytest.param("seed", 48, "rgb", 2, marks=pytest.mark.slow),
])
def test_export_round_trips_on_real_faces(tmp_path, arch, size, color_mode, classes):
    channels = 1 if color_mode == "grayscale" else 3
    model = inference_copy(build_model(arch, (size, size, channels), classes, augment=True, seed=5), arch)
    info = ModelInfo(class_names=[f"c{i}" for i in range(classes)], image_size=size, color_mode=color_mode, arch=arch,
                     extra={"class_weights_undone": [1.5] * classes})
    keras_path = save_model(model, tmp_path / "m.keras", info)
    result = export_onnx(keras_path)
    assert result.path == tmp_path / "m.onnx" and result.max_difference <= export.TOLERANCE
    assert read_info(result.path) == info  # class names, size, colour mode, undone weights
    images = _fer_images(size, channels)
    onnx_probs = probabilities(load_runtime(result.path), images)
    keras_probs = probabilities(load_runtime(keras_path), images)
    assert onnx_probs.shape == (len(images), max(classes, 2))
    np.testing.assert_allclose(onnx_probs, keras_probs, atol=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.keras", "m.onnx"]  # no temporary files left
    rebuilt, rebuilt_info = model_from_onnx(result.path)  # and back: the same network in Keras
    assert rebuilt_info == info and rebuilt.name == f"emorec_{arch}"
    np.testing.assert_allclose(predict_probabilities(rebuilt, images), keras_probs, atol=1e-4)


def test_export_refuses_to_overwrite_and_checks_the_suffix(untrained_model_path, tmp_path):
    target = tmp_path / "taken.onnx"
    target.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="taken.onnx: already exists"):
        export_onnx(untrained_model_path, target)
    assert target.read_bytes() == b"keep me"
    with pytest.raises(ValueError, match="must end in .onnx"):
        export_onnx(untrained_model_path, tmp_path / "m.bin")


def test_export_writes_nothing_when_onnx_disagrees(untrained_model_path, tmp_path, monkeypatch):
    original = export.keras_probabilities  # shifted below: as if the conversion had changed the network
    monkeypatch.setattr(export, "keras_probabilities", lambda m, i, x: np.roll(original(m, i, x), 1, axis=1))
    with pytest.raises(ModelError, match="differ from Keras"):
        export_onnx(untrained_model_path, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_check_faces_are_varied_model_sized_images():
    faces = check_faces(ModelInfo(class_names=["a", "b"], image_size=40, color_mode="rgb"), count=8)
    assert faces.shape == (8, 40, 40, 3) and faces.dtype == np.uint8
    assert len({face.tobytes() for face in faces}) == 8 and faces.std() > 20


def test_cli_export_then_predict_with_the_onnx_file(untrained_model_path, tmp_path, capsys):
    out = tmp_path / "small.onnx"
    assert main(["export", str(untrained_model_path), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert isinstance(load_runtime(out), OnnxModel)
    crop = next(iter(sorted((require(FER / "val") / "happy").glob("*.jpg"))))
    assert main(["predict", str(out), str(crop), "--json"]) == 0
    assert '"emotion"' in capsys.readouterr().out
    assert main(["export", str(untrained_model_path), "--out", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err


def test_int8_copy_is_kept_only_within_the_accuracy_margin(seven_class_model, fer_tree, tmp_path):
    val = fer_tree(classes=("angry", "happy", "sad"), per_class=8, split="val")
    exported = export_onnx(seven_class_model, tmp_path / "model" / "m.onnx").path
    refused = quantize_int8(exported, val, margin=-100, progress=False)  # demands 100 points better: never met
    assert not refused.kept and not int8_path(exported).exists()
    kept = quantize_int8(exported, val, margin=100, progress=False)
    assert kept.kept and kept.path == tmp_path / "model" / "m.int8.onnx" and kept.images == 24
    model = load_runtime(kept.path)
    assert model.info == read_info(exported) and kept.path.stat().st_size < exported.stat().st_size / 2
    assert sorted(p.name for p in exported.parent.iterdir()) == ["m.int8.onnx", "m.onnx"]
    with pytest.raises(FileExistsError):
        quantize_int8(exported, val, progress=False)


def test_bundled_int8_model_is_selectable_by_name():
    model = load_runtime("bundled-int8")
    assert model.path.name == "emorec-ferplus.int8.onnx"
    assert model.info == load_runtime("bundled").info


@pytest.mark.parametrize("content", ["nothing", "bad files", "calibration"])
def test_int8_without_a_usable_image_writes_nothing(untrained_model_path, fer_tree, tmp_path, capsys, content):
    val = tmp_path / "val"
    (val / "happy").mkdir(parents=True)
    if content == "bad files":
        (val / "happy" / "notes.jpg").write_text("not an image\n")
    calibration = []
    if content == "calibration":  # a usable val, an empty calibration tree
        val = fer_tree(classes=("happy",), per_class=2, split="val")
        (tmp_path / "calib" / "happy").mkdir(parents=True)
        calibration = ["--calibration", str(tmp_path / "calib")]
    out = tmp_path / "out" / "m.onnx"
    assert main(["export", str(untrained_model_path), "--out", str(out), "--int8", str(val), *calibration]) == 1
    [line] = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    folder = tmp_path / "calib" if content == "calibration" else val
    assert line == f"emorec export: error: {folder}: no valid image to calibrate and measure the int8 copy on"
    assert not out.parent.exists()  # not even the float file


def test_an_existing_int8_file_is_refused_before_the_float_file_is_written(untrained_model_path, fer_tree, tmp_path,
                                                                            capsys):
    out = tmp_path / "m.onnx"
    int8_path(out).write_bytes(b"the user's file")
    val = fer_tree(classes=("happy",), per_class=2, split="val")
    assert main(["export", str(untrained_model_path), "--out", str(out), "--int8", str(val)]) == 1
    assert "m.int8.onnx: already exists" in capsys.readouterr().err
    assert not out.exists() and int8_path(out).read_bytes() == b"the user's file"


def test_export_refuses_an_onnx_model(tmp_path, capsys):
    assert main(["export", "bundled", "--out", str(tmp_path / "m.onnx")]) == 1
    assert "already an ONNX model" in capsys.readouterr().err and not (tmp_path / "m.onnx").exists()
