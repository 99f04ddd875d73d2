"""Shared fixtures: the shared data root, small FER2013 subsets copied into tmp, image writers, one trained run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

# ../shared/data beside the checkout; EMOREC_TEST_DATA names another place (a checkout elsewhere).
DATA = Path(os.environ.get("EMOREC_TEST_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")
FER = DATA / "fer2013"
PHOTOS = DATA / "photos"
MODELS = Path(__file__).resolve().parents[1] / "src" / "emorec" / "models"
BUNDLED = MODELS / "emorec-ferplus.onnx"  # the default model's file
FER2013_MODEL = MODELS / "emorec-fer2013.onnx"

# Three classes that are plentiful in FER2013 and fairly distinct.
SMALL_CLASSES = ("angry", "happy", "surprise")
BINARY_CLASSES = ("happy", "surprise")


def require(path: Path) -> Path:
    """Skip the calling test when shared data at path is missing."""
    if not path.exists():
        pytest.skip(f"shared data not found at {path}")
    return path


def write_image(path: str | Path, image: np.ndarray, params: list[int] | None = None) -> Path:
    """Write image with cv2.imwrite (format from the extension), creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image, params or []), path
    return path


def face_like(seed: int = 0, size: int = 48, channels: int = 1) -> np.ndarray:
    """A random 8-bit image (H, W) or (H, W, C)."""
    rng = np.random.default_rng(seed)
    shape = (size, size) if channels == 1 else (size, size, channels)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def copy_fer_subset(dest: Path, split: str, classes, per_class: int) -> Path:
    """Copy the first per_class images of each class of fer2013/<split> into dest/<class>/."""
    source = require(FER / split)
    for name in classes:
        files = sorted((source / name).glob("*.jpg"))[:per_class]
        if len(files) < per_class:
            pytest.skip(f"{source / name} has fewer than {per_class} images")
        (dest / name).mkdir(parents=True)
        for path in files:
            shutil.copy2(path, dest / name / path.name)
    return dest


def _train_val_copies(factory, name: str, classes, n_train: int, n_val: int) -> dict[str, Path]:
    root = factory.mktemp(name)
    return {
        "train": copy_fer_subset(root / "train", "train", classes, n_train),
        "val": copy_fer_subset(root / "val", "val", classes, n_val),
    }


@pytest.fixture(scope="session")
def fer_small(tmp_path_factory) -> dict[str, Path]:
    """3 classes: train/ with 60 images each and val/ with 20 each (copies, read-only by convention)."""
    return _train_val_copies(tmp_path_factory, "fer_small", SMALL_CLASSES, 60, 20)


@pytest.fixture(scope="session")
def fer_binary(tmp_path_factory) -> dict[str, Path]:
    """2 classes: train/ with 40 images each and val/ with 15 each."""
    return _train_val_copies(tmp_path_factory, "fer_binary", BINARY_CLASSES, 40, 15)


@pytest.fixture
def fer_tree(tmp_path):
    """Factory: a fresh, writable class-folder tree of FER2013 copies under tmp_path."""

    def make(classes=SMALL_CLASSES, per_class: int = 10, split: str = "train", name: str = "tree") -> Path:
        return copy_fer_subset(tmp_path / name, split, classes, per_class)

    return make


@pytest.fixture(scope="session")
def seed_run(fer_small, tmp_path_factory):
    """One tiny training run (seed arch, 2 epochs) shared by the tests that need a trained model."""
    from emorec.config import train_config
    from emorec.train import train

    project = tmp_path_factory.mktemp("runs")
    cfg = train_config(data=str(fer_small["train"]), val=str(fer_small["val"]), epochs=2, batch_size=16,
                       project=str(project), name="tiny", patience=0, seed=7)
    return train(cfg, progress=False)


@pytest.fixture(scope="session")
def untrained_model_path(tmp_path_factory) -> Path:
    """An untrained seed model for SMALL_CLASSES saved with emorec metadata (fast; no training)."""
    from emorec.model import ModelInfo, build_model, save_model

    model = build_model("seed", (48, 48, 1), len(SMALL_CLASSES), seed=3)
    path = tmp_path_factory.mktemp("model") / "untrained.keras"
    return save_model(model, path, ModelInfo(class_names=list(SMALL_CLASSES)))


# --- prediction ------------------------------------------------------------

FER_CLASSES = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
FERPLUS_CLASSES = ["angry", "contempt", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
DEFAULT_CLASSES = FERPLUS_CLASSES  # the classes of the default bundled model
PHOTO_NAMES = ["Arnaud_Lagardere_0001.jpg", "Beyonce_Knowles_0001.jpg", "Carson_Palmer_0004.jpg"]


def photo(name: str = PHOTO_NAMES[0]) -> np.ndarray:
    """One of the labelled photos as a BGR array (skips the test without shared data)."""
    return cv2.imread(str(require(PHOTOS / name)))


def write_video(path: Path, frames: int = 10, size: tuple[int, int] = (320, 240)) -> Path:
    """An mp4v/avi clip of a photo's face on a black border, repeated for `frames` frames."""
    face = cv2.resize(photo(), (size[1] - 40, size[1] - 40))
    frame = cv2.copyMakeBorder(face, 20, 20, (size[0] - face.shape[1]) // 2, (size[0] - face.shape[1]) // 2,
                               cv2.BORDER_CONSTANT)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (frame.shape[1], frame.shape[0]))
    for _ in range(frames):
        writer.write(frame)
    writer.release()
    return path


@pytest.fixture(scope="session")
def seven_class_model(tmp_path_factory) -> Path:
    """An untrained seed model for the seven FER2013 classes, saved with emorec metadata."""
    from emorec.model import ModelInfo, build_model, save_model

    model = build_model("seed", (48, 48, 1), len(FER_CLASSES), seed=0)
    return save_model(model, tmp_path_factory.mktemp("model") / "tiny.keras", ModelInfo(class_names=FER_CLASSES))


@pytest.fixture(scope="session")
def recognizer(seven_class_model):
    """A Recognizer for seven_class_model with the automatic detector."""
    from emorec.recognizer import Recognizer

    return Recognizer(seven_class_model)


def assert_distribution(face, classes=FER_CLASSES) -> None:
    """face.probabilities is a distribution over classes, and emotion/confidence are its top entry."""
    assert list(face.probabilities) == list(classes)
    assert sum(face.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    assert face.emotion in classes and face.confidence == max(face.probabilities.values())


def traced_peak(call):
    """(call(), the peak bytes Python allocations reached while it ran: tracemalloc)."""
    import tracemalloc

    tracemalloc.start()
    try:
        result = call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
