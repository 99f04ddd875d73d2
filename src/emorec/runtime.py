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
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from emorec.config import tta_mode
from emorec.files import InputFileError, stat_regular

METADATA_KEY = "emorec.json"  # the .keras zip member and the ONNX metadata property
MODELS_DIR = Path(__file__).parent / "models"
BUNDLED_NAMES = ("fer2013", "ferplus")  # models shipped in MODELS_DIR; see their model cards there
DEFAULT_MODEL = "ferplus"  # what "bundled" (and no model at all) means: see the model cards for why
BUNDLED_ONNX = MODELS_DIR / f"emorec-{DEFAULT_MODEL}.onnx"
MODEL_SUFFIXES = (".onnx", ".keras")
BATCH = 256  # images per forward call on long lists (bounded memory)


class ModelError(ValueError):
    """A model file is broken or foreign ("PATH: not a usable emorec model (reason)"), or gives unusable outputs."""


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
    """The file of a model argument.

    A bundled model's name ("fer2013", "ferplus") means its ONNX file and NAME-int8 its
    int8 copy; None and "bundled" mean the default model (DEFAULT_MODEL). Anything
    else is a path. Bundled models ship as ONNX only: training from one and
    explaining one rebuild it in Keras (emorec.model.model_from_onnx).
    """
    name = _bundled_name(path)
    if name is None:
        return Path(path)
    return MODELS_DIR / f"emorec-{name.removesuffix('-int8')}{'.int8' if name.endswith('-int8') else ''}.onnx"


def names_a_model(text: str) -> bool:
    """True when text is a bundled model's name ("bundled", "fer2013", ...) or a file name with a model suffix."""
    return _bundled_name(text) is not None or text.endswith(MODEL_SUFFIXES)


def _bundled_name(path: str | Path | None) -> str | None:
    text = "bundled" if path is None else str(path)
    name = text.replace("bundled", DEFAULT_MODEL, 1) if text in ("bundled", "bundled-int8") else text
    return name if name.removesuffix("-int8") in BUNDLED_NAMES else None


def _unusable(path: Path, reason: str) -> ModelError:
    return ModelError(f"{path}: not a usable emorec model ({reason})")


METADATA_LIMIT = 2**20  # bytes of emorec.json read at most: the member could be a zip bomb
_INFO_TYPES = {"class_names": list, "image_size": int, "color_mode": str, "arch": str, "preprocessing": str, "extra": dict}
# What a damaged or foreign zip raises while its member is read.
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError)


def read_info(path: str | Path) -> ModelInfo:
    """The metadata of a `.keras` or `.onnx` model file, without loading its weights into a framework.

    Raises FileNotFoundError for a missing file and ModelError for anything
    that is not an emorec model (not a zip or ONNX file, no or broken metadata).
    """
    path = _model_file(path)
    if path.suffix == ".onnx":
        return _session_info(path, _onnx_session(path))
    try:
        with zipfile.ZipFile(path) as archive:
            data = _read_metadata(archive, path)
    except ModelError:
        raise
    except OSError as error:
        raise _unusable(path, error.strerror or str(error)) from None
    except _ZIP_ERRORS:
        raise _unusable(path, "not a .keras model file: not a readable zip archive") from None
    return _parse_json(data, path)


def _model_file(path: str | Path) -> Path:
    """path, once it is known to be a regular file of a sane size (FileNotFoundError, ModelError)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise FileNotFoundError(f"{path}: no such model file")
    try:
        stat_regular(path)
    except InputFileError as error:
        raise _unusable(path, str(error).removeprefix(f"{path}: ")) from None
    return path


def _parse_json(data: bytes | str, path: Path) -> ModelInfo:
    try:
        raw = json.loads(data)
    except ValueError:  # also UnicodeDecodeError
        raise _unusable(path, f"{METADATA_KEY} is not valid JSON") from None
    return parse_info(raw, path)


def _read_metadata(archive: zipfile.ZipFile, path: Path) -> bytes:
    try:
        member = archive.getinfo(METADATA_KEY)
    except KeyError:
        raise _unusable(path, "a Keras model without emorec metadata: class names unknown") from None
    if member.file_size > METADATA_LIMIT:
        raise _unusable(path, f"{METADATA_KEY} declares {member.file_size:,} bytes, over the {METADATA_LIMIT:,}-byte limit")
    with archive.open(member) as handle:
        data = handle.read(METADATA_LIMIT + 1)
    if len(data) > METADATA_LIMIT:
        raise _unusable(path, f"{METADATA_KEY} is over the {METADATA_LIMIT:,}-byte limit")
    return data


def parse_info(raw: Any, path: str | Path) -> ModelInfo:
    """Check model metadata read from a file and build its ModelInfo (ModelError if unusable).

    Unknown keys are ignored (newer versions may add some); known keys must
    have the right types and values. Every model format calls this with the
    dict it stored, so the rules are the same for all of them.
    """
    path = Path(path)
    if not isinstance(raw, dict):
        raise _unusable(path, "its metadata is not a JSON object")
    known = {key: value for key, value in raw.items() if key in _INFO_TYPES}
    if "class_names" not in known:
        raise _unusable(path, "its metadata has no class_names")
    for key, value in known.items():
        expected = _INFO_TYPES[key]
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise _unusable(path, f"metadata {key} should be {expected.__name__}, not {type(value).__name__}")
    names = known["class_names"]
    if len(names) < 2 or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise _unusable(path, "class_names must be two or more different, non-empty names")
    if not 8 <= known.get("image_size", 48) <= 4096:
        raise _unusable(path, f"image_size {known['image_size']} is out of range [8, 4096]")
    if known.get("color_mode", "grayscale") not in ("grayscale", "rgb"):
        raise _unusable(path, f"color_mode {known['color_mode']!r} is not grayscale or rgb")
    return ModelInfo(**known)


def check_model_matches(info: ModelInfo, input_shape: tuple, outputs: int, path: str | Path) -> None:
    """ModelError unless a loaded network's input shape and output count fit its metadata."""
    expected = 1 if len(info.class_names) == 2 else len(info.class_names)
    if outputs != expected:
        raise _unusable(Path(path), f"{len(info.class_names)} class names but {outputs} outputs")
    if tuple(input_shape) != info.input_shape:
        raise _unusable(Path(path), f"its input is {tuple(input_shape)}, its metadata says {info.input_shape}")


def _session_info(path: Path, session) -> ModelInfo:
    raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if raw is None:
        raise _unusable(path, "an ONNX model without emorec metadata: export it with `emorec export`")
    info = _parse_json(raw, path)
    check_model_matches(info, tuple(session.get_inputs()[0].shape[1:]), session.get_outputs()[0].shape[-1], path)
    return info


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
        raise _unusable(path, f"ONNX Runtime cannot load it: {reason}") from None


class OnnxModel:
    """A model file run by ONNX Runtime on the CPU (one session, built once)."""

    def __init__(self, path: str | Path, threads: int = 0):
        self.path = _model_file(path)
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

        try:
            model = keras.models.load_model(path, compile=False)
        except Exception as error:  # noqa: BLE001 - Keras raises many types for a damaged or foreign file
            reason = " ".join(str(error).split())[:300] or type(error).__name__
            raise _unusable(path, reason) from None
        check_model_matches(info, model.input_shape[1:], model.output_shape[-1], path)
        return cls(model, info, path)

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
# Measured with the fer2013 model on FER2013 val: 68.96% none, 69.60% flip, 69.99% multi; the ferplus
# model on the FER+ majority labels of val: 83.82%, 84.57%, 84.63%.
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

