"""Export a `.keras` model to ONNX for the light runtime, and check the copy before keeping it.

`export_onnx` converts with Keras' own exporter (`model.export(...,
format="onnx")`, through tf2onnx on the TensorFlow backend), stores the
model's `ModelInfo` and the emorec version in the ONNX file's metadata, runs
the Keras model and the ONNX file side by side on a batch of face-like
images, and writes the file only if their probabilities agree within a
tolerance. `quantize_int8` adds an int8 copy (ONNX Runtime's static
quantization, calibrated on real faces) and keeps it only if its accuracy on
labelled data is within INT8_MARGIN points of the float model's.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emorec import __version__
from emorec.catalog import onnx_path
from emorec.errors import UsageError
from emorec.files import OutputPathError
from emorec.runtime import METADATA_KEY, ModelError, ModelInfo, OnnxModel, probabilities

TOLERANCE = 1e-4  # largest accepted difference between Keras and ONNX probabilities
INT8_MARGIN = 0.2  # accuracy points an int8 copy may lose against float32 and still be kept
CALIBRATION_IMAGES = 512


@dataclass
class ExportResult:
    """Where the ONNX file went and how closely it matches the Keras model."""

    path: Path
    max_difference: float
    same_top_class: float  # fraction of check images with the same most probable class
    check_images: int


def export_onnx(model: str | Path | None, out: str | Path | None = None, overwrite: bool = False,
                tolerance: float = TOLERANCE) -> ExportResult:
    """Export a saved `.keras` model to ONNX at out (default: beside it, .onnx).

    Raises FileExistsError if out exists and overwrite is False, and
    ModelError (writing nothing) when the exported file's probabilities
    differ from Keras' by more than tolerance.
    """
    from emorec.model import load_model

    source = onnx_path(model)
    if source.suffix == ".onnx":
        raise UsageError(f"{source}: already an ONNX model; export converts .keras files")
    out = onnx_target(model, out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists (use --exist-ok to replace it)")
    keras_model, info = load_model(source)
    images = check_faces(info)
    expected = keras_probabilities(keras_model, info, images)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp.onnx")
    try:
        _convert(keras_model, tmp)
        add_metadata(tmp, info)
        result = compare(OnnxModel(tmp), images, expected, tolerance)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportResult(out, *result, len(images))


def onnx_target(model: str | Path | None, out: str | Path | None = None) -> Path:
    """Where export_onnx writes: out, or the `.keras` file's path with .onnx; OutputPathError for another suffix."""
    out = Path(out) if out is not None else onnx_path(model).with_suffix(".onnx")
    if out.suffix != ".onnx":
        raise OutputPathError(f"{out}: ONNX files must end in .onnx")
    return out


def keras_probabilities(keras_model, info: ModelInfo, images: np.ndarray) -> np.ndarray:
    """Probabilities of an in-memory Keras model, through the same code path as ONNX models."""
    from emorec.runtime import KerasModel

    return probabilities(KerasModel(keras_model, info), images)


def _convert(keras_model, path: Path) -> None:
    """Keras' ONNX export (the model must have been called once, which keras_probabilities did)."""
    from emorec.extras import require

    for module in ("tf2onnx", "onnx"):
        require(module, "export")
    import logging

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)  # its INFO lines describe graph rewrites
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        keras_model.export(str(path), format="onnx", verbose=False)


def add_metadata(path: Path, info: ModelInfo) -> None:
    """Store the ModelInfo (as in `.keras` files) and the emorec version in an ONNX file's metadata."""
    import onnx

    proto = onnx.load(str(path))
    values = {METADATA_KEY: info.to_json(), "emorec_version": __version__}
    kept = [prop for prop in proto.metadata_props if prop.key not in values]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in values.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = f"emorec {__version__}"
    onnx.save(proto, str(path))


def compare(onnx_model: OnnxModel, images: np.ndarray, expected: np.ndarray, tolerance: float) -> tuple[float, float]:
    """(largest probability difference, fraction with the same top class); ModelError beyond tolerance."""
    got = probabilities(onnx_model, images)
    difference = float(np.abs(got - expected).max())
    same_top = float((got.argmax(axis=1) == expected.argmax(axis=1)).mean())
    if difference > tolerance:
        raise ModelError(f"{onnx_model.path}: ONNX probabilities differ from Keras by {difference:.2g} "
                         f"(more than {tolerance:g}); nothing written")
    return difference, same_top


def check_faces(info: ModelInfo, count: int = 32, seed: int = 0) -> np.ndarray:
    """Generated face-like images (N, H, W, C) uint8: a lit oval, eyes, brows and a mouth of random shape."""
    import cv2

    rng = np.random.default_rng(seed)
    size = info.image_size
    images = []
    for _ in range(count):
        canvas = np.full((size * 4, size * 4), rng.integers(20, 90), np.uint8)
        centre, scale = (size * 2 + int(rng.integers(-size // 4, size // 4)), size * 2), size * 4 / 48
        cv2.ellipse(canvas, centre, (int(15 * scale), int(20 * scale)), 0, 0, 360, int(rng.integers(140, 230)), -1)
        eye_y = centre[1] - int(5 * scale)
        for side in (-1, 1):
            eye = (centre[0] + side * int(6 * scale), eye_y)
            cv2.circle(canvas, eye, int(2 * scale), 30, -1)
            brow_tilt = int(rng.integers(-3, 4) * scale) * side
            cv2.line(canvas, (eye[0] - int(3 * scale), eye_y - int(4 * scale) + brow_tilt),
                     (eye[0] + int(3 * scale), eye_y - int(4 * scale) - brow_tilt), 40, max(1, int(scale)))
        mouth = (centre[0], centre[1] + int(9 * scale))
        smile = int(rng.integers(-4, 5) * scale)
        cv2.ellipse(canvas, mouth, (int(6 * scale), abs(smile) + 1), 0, 0 if smile >= 0 else 180,
                    180 if smile >= 0 else 360, 50, max(1, int(scale)))
        canvas = cv2.GaussianBlur(canvas, (0, 0), scale) + rng.normal(0, 6, canvas.shape)
        face = cv2.resize(np.clip(canvas, 0, 255).astype(np.uint8), (size, size), interpolation=cv2.INTER_AREA)
        images.append(face[..., None] if info.channels == 1 else np.repeat(face[..., None], 3, axis=-1))
    return np.stack(images)


@dataclass
class QuantizeResult:
    """How an int8 copy compares with its float model on labelled data, and whether it was kept."""

    path: Path
    kept: bool
    float_accuracy: float
    int8_accuracy: float
    images: int


def int8_path(path: str | Path) -> Path:
    """Where the int8 copy of an ONNX file goes: NAME.int8.onnx beside it."""
    path = Path(path)
    return path.with_name(f"{path.stem}.int8.onnx")


@dataclass
class Int8Data:
    """Labelled images to measure an int8 copy on, and the samples that calibrate its ranges."""

    images: np.ndarray
    labels: np.ndarray
    samples: np.ndarray


def load_int8_data(val: str | Path, info: ModelInfo, calibration: str | Path | None = None,
                   progress: bool = True) -> Int8Data:
    """The val images (and calibration samples, default: val) for quantize_int8, loaded for the model info.

    Raises DatasetError naming the folder when it holds no usable image, so
    that a command can check its inputs before it writes anything.
    """
    from emorec.data import DatasetError
    from emorec.evaluate import load_eval_data

    images, labels = load_eval_data(val, info.class_names, info.image_size, info.channels, progress)
    samples = images if calibration is None else load_eval_data(calibration, info.class_names, info.image_size,
                                                                 info.channels, progress)[0]
    for folder, found in ((val, images), (calibration, samples)):
        if not len(found):
            raise DatasetError(f"{folder}: no valid image to calibrate and measure the int8 copy on")
    return Int8Data(images, labels, samples)


def quantize_int8(onnx_path: str | Path, val: str | Path, calibration: str | Path | None = None,
                  overwrite: bool = False, margin: float = INT8_MARGIN, progress: bool = True,
                  data: Int8Data | None = None) -> QuantizeResult:
    """Quantize an emorec ONNX file to int8 and keep the copy only if it is as accurate as the float one.

    Calibration uses up to CALIBRATION_IMAGES images of `calibration` (a
    class-folder tree; default: val), drawn with a fixed seed. Both models
    are then evaluated on every image of val; the int8 file (NAME.int8.onnx)
    is written only when its accuracy is at most `margin` points below the
    float model's. data: val and calibration already loaded by load_int8_data.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source, out = Path(onnx_path), int8_path(onnx_path)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists (use --exist-ok to replace it)")
    float_model = OnnxModel(source)
    info = float_model.info
    data = data or load_int8_data(val, info, calibration, progress)
    images, labels, samples = data.images, data.labels, data.samples
    picked = np.random.default_rng(0).permutation(len(samples))[:CALIBRATION_IMAGES]
    batches = [{float_model.input_name: samples[picked[i : i + 32]].astype(np.float32)} for i in range(0, len(picked), 32)]

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.remaining = iter(batches)

        def get_next(self):
            return next(self.remaining, None)

    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp.onnx")
    prepared = out.with_name(f".{out.stem}.{os.getpid()}.pre.onnx")
    try:
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)  # shapes and folding, as ORT advises
        # QOperator (QLinearConv) ran faster than QDQ on this CPU at batch 1, at the same accuracy.
        quantize_static(str(prepared), str(tmp), Batches(), quant_format=QuantFormat.QOperator, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        add_metadata(tmp, info)
        accuracies = [float((probabilities(model, images).argmax(axis=1) == labels).mean())
                      for model in (float_model, OnnxModel(tmp))]
        kept = accuracies[1] >= accuracies[0] - margin / 100
        if kept:
            os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
        prepared.unlink(missing_ok=True)
    return QuantizeResult(out, kept, *accuracies, len(labels))
