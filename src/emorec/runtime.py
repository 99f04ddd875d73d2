"""Running a saved model: its metadata, and one small interface over ONNX Runtime and Keras.

A saved emorec model describes itself with a `ModelInfo` (class names, input
size, colour mode, ...): inside a `.keras` zip as the `emorec.json` member,
inside an `.onnx` file as the metadata property of the same name. Both kinds
load through `load_runtime(path)` into an object with `info` and
`forward(images) -> probabilities`:

* `OnnxModel`: ONNX Runtime only. This is how `emorec predict`, `evaluate`
  and `Recognizer` run the bundled model; neither Keras nor TensorFlow is
  imported.
* `KerasModel`: a Keras model (needs the `train` extra).

`probabilities(runtime, images, tta)` adds test-time augmentation on top of
either. This module needs only NumPy and OpenCV; ONNX Runtime and Keras are
imported when a model of that kind is loaded.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from emorec.config import tta_mode

METADATA_KEY = "emorec.json"  # the .keras zip member and the ONNX metadata property
MODELS_DIR = Path(__file__).parent / "models"
BUNDLED_ONNX = MODELS_DIR / "emorec-fer2013.onnx"
BUNDLED_KERAS = MODELS_DIR / "emorec-fer2013.keras"
BUNDLED = {"bundled": BUNDLED_ONNX, "bundled-int8": MODELS_DIR / "emorec-fer2013.int8.onnx"}
MODEL_SUFFIXES = (".onnx", ".keras")
BATCH = 256  # images per forward call on long lists (bounded memory)


class ModelError(ValueError):
    """A model file is missing, broken, foreign, or gives unusable outputs; the message names the file."""


@dataclass
class ModelInfo:
    """What a saved model needs to be used again."""

    class_names: list[str]
    image_size: int = 48
    color_mode: str = "grayscale"
    arch: str = "seed"
    preprocessing: str = "raw pixels 0-255; the model rescales to [0, 1] itself"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def channels(self) -> int:
        """Colour channels of the model input."""
        return 1 if self.color_mode == "grayscale" else 3

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(height, width, channels) of one input image."""
        return (self.image_size, self.image_size, self.channels)

    def to_json(self) -> str:
        """The metadata as stored in model files."""
        return json.dumps(asdict(self), indent=2)


# ----------------------------------------------------------------------------
# Finding and describing model files
# ----------------------------------------------------------------------------


def model_path(path: str | Path | None) -> Path:
    """The file of a model argument for inference: None or "bundled" mean the bundled ONNX model, "bundled-int8" its int8 copy."""
    return BUNDLED_ONNX if path is None else BUNDLED.get(str(path), Path(path))


def read_info(path: str | Path) -> ModelInfo:
    """The metadata of a `.keras` or `.onnx` model file, without loading its weights into a framework."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    if path.suffix == ".onnx":
        return _session_info(path, _onnx_session(path))
    try:
        with zipfile.ZipFile(path) as archive:
            return ModelInfo(**json.loads(archive.read(METADATA_KEY)))
    except KeyError:
        raise ModelError(f"{path}: a Keras model without emorec metadata (class names unknown)") from None
    except zipfile.BadZipFile:
        raise ModelError(f"{path}: not a .keras model file") from None


def _session_info(path: Path, session) -> ModelInfo:
    raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if raw is None:
        raise ModelError(f"{path}: an ONNX model without emorec metadata (export it with `emorec export`)")
    return ModelInfo(**json.loads(raw))


# ----------------------------------------------------------------------------
# Runtimes
# ----------------------------------------------------------------------------


class Runtime(Protocol):
    """A loaded model: its metadata and a forward pass over raw-pixel images."""

    info: ModelInfo
    path: Path | None

    def forward(self, images: np.ndarray) -> np.ndarray:
        """Probabilities (N, num_classes) for float32 raw-pixel images (N, H, W, C)."""
        ...


def _onnx_session(path: Path, threads: int = 0):
    from emorec.extras import require

    require("onnxruntime", "ONNX models")
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads  # 0: one per core
    options.inter_op_num_threads = 1  # the graph is a chain: parallel branches would only contend
    options.log_severity_level = 3  # its warnings are about graph rewrites, not about the user's data
    # Idle ORT threads would spin while the detector and the decoders need the same cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # ORT raises its own exception types for unreadable files
        reason = " ".join(str(error).split())[:200]
        raise ModelError(f"{path}: not a usable ONNX model ({reason})") from None


class OnnxModel:
    """A model file run by ONNX Runtime on the CPU (one session, built once)."""

    def __init__(self, path: str | Path, threads: int = 0):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such model file")
        self.session = _onnx_session(self.path, threads)
        self.info = _session_info(self.path, self.session)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def forward(self, images: np.ndarray) -> np.ndarray:
        """Probabilities (N, num_classes) for float32 raw-pixel images (N, H, W, C)."""
        return _two_columns(self.session.run([self.output_name], {self.input_name: images})[0])


class KerasModel:
    """A Keras model (from a `.keras` file, or already in memory) behind the Runtime interface."""

    def __init__(self, model, info: ModelInfo, path: Path | None = None):
        self.model, self.info, self.path = model, info, path

    @classmethod
    def load(cls, path: str | Path) -> "KerasModel":
        """Load a `.keras` file saved by emorec (imports Keras)."""
        from emorec.extras import require

        path = Path(path)
        info = read_info(path)
        require("keras", ".keras models")
        import keras

        return cls(keras.models.load_model(path, compile=False), info, path)

    def forward(self, images: np.ndarray) -> np.ndarray:
        """Probabilities (N, num_classes) for float32 raw-pixel images (N, H, W, C)."""
        return _two_columns(np.asarray(self.model.predict_on_batch(images)))  # a compiled step, no progress bar


def _two_columns(probs: np.ndarray) -> np.ndarray:
    """A binary model's single sigmoid output as two columns [p(first), p(second)]."""
    probs = np.asarray(probs, dtype=np.float32)
    return np.concatenate([1 - probs, probs], axis=1) if probs.shape[1] == 1 else probs


def load_runtime(model: str | Path | None = None, threads: int = 0) -> Runtime:
    """Load a model file by its suffix: `.onnx` on ONNX Runtime, `.keras` on Keras; None/"bundled": the bundled ONNX model."""
    path = model_path(model)
    if path.suffix == ".onnx":
        return OnnxModel(path, threads)
    if path.suffix == ".keras":
        return KerasModel.load(path)
    raise ModelError(f"{path}: not a model file (expected one of: {', '.join(MODEL_SUFFIXES)})")


# ----------------------------------------------------------------------------
# Probabilities with test-time augmentation
# ----------------------------------------------------------------------------


# "multi": the image, four 2-pixel shifts and a 10% zoom, each also mirrored (12 views).
# Measured with the bundled model on FER2013 val: 68.96% none, 69.60% flip, 69.99% multi.
_MULTI_VIEWS = ((2, 0, 1.0), (-2, 0, 1.0), (0, 2, 1.0), (0, -2, 1.0), (0, 0, 1.1))


def tta_views(images: np.ndarray, tta: bool | str) -> list[np.ndarray]:
    """The views of (N, H, W, C) images that test-time augmentation averages over."""
    mode = tta_mode(tta)
    views = [images]
    if mode == "multi":
        views += [_warp(images, dx, dy, zoom) for dx, dy, zoom in _MULTI_VIEWS]
    if mode != "none":
        views += [view[:, :, ::-1, :] for view in views]
    return views


def _warp(images: np.ndarray, dx: float, dy: float, zoom: float) -> np.ndarray:
    height, width = images.shape[1:3]
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), 0, zoom)
    matrix[:, 2] += (dx, dy)
    warped = [cv2.warpAffine(image, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE) for image in images]
    return np.stack(warped).reshape(images.shape)


def probabilities(runtime: Runtime, images: np.ndarray, tta: bool | str = False) -> np.ndarray:
    """Class probabilities (N, num_classes) for raw-pixel images (N, H, W, C), averaged over the TTA views.

    Raises ModelError when the model gives non-finite probabilities (a
    training run that diverged), rather than passing NaN on.
    """
    if len(images) == 0:
        return np.zeros((0, len(runtime.info.class_names)), np.float32)
    images = np.asarray(images, dtype=np.float32)
    views = tta_views(images, tta)
    probs = np.mean([_forward_in_batches(runtime, np.ascontiguousarray(view)) for view in views], axis=0)
    if not np.isfinite(probs).all():
        raise ModelError(f"{runtime.path or 'the model'}: gives non-finite probabilities (NaN); its training diverged")
    return probs


def _forward_in_batches(runtime: Runtime, images: np.ndarray) -> np.ndarray:
    return np.concatenate([runtime.forward(images[start : start + BATCH]) for start in range(0, len(images), BATCH)])

