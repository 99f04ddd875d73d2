"""Knowledge distillation: training targets that mix the labels with what teacher models say.

A teacher's probabilities are fixed for an un-augmented image, so they are computed once per
training image (with flip test-time augmentation, which the bundled models gain from) and cached
in the run folder; augmented views of an image are trained towards the teacher's view of the
original. Teachers are matched to the student's classes by name, so a teacher may know fewer or
more classes (a class it lacks gets no teacher mass, and the rest is renormalised).

The mixed target of an image is (1 - w) * label + w * teacher, where teacher is the mean of the
teachers' probabilities raised to 1 / temperature and renormalised: a temperature above 1
flattens them, passing on more of the teachers' "dark knowledge" about the runner-up emotions.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import numpy as np

from emorec.files import atomic_path
from emorec.catalog import onnx_path
from emorec.errors import UsageError
from emorec.runtime import load_runtime, probabilities, read_info

TEACHER_TTA = "flip"
CACHE_NAME = "teacher.npz"


def teacher_names(spec: str) -> list[str]:
    """The teacher models of a comma-separated --teacher value (bundled names or model files)."""
    return [name.strip() for name in spec.split(",") if name.strip()]


def check_teachers(spec: str) -> None:
    """Raise ModelError naming the first teacher of spec that is missing or not a model emorec can read."""
    for name in teacher_names(spec):
        read_info(onnx_path(name))


def teacher_probabilities(spec: str, images: np.ndarray, class_names: list[str],
                          progress: Callable[[str], None] | None = None) -> np.ndarray:
    """The teachers' mean probabilities (N, len(class_names)) for images, in the student's class order.

    images are the student's raw-pixel inputs (N, H, W, C); each teacher must take the same size
    and colour mode (raises ValueError naming the teacher otherwise).
    """
    columns = []
    for name in teacher_names(spec):
        runtime = load_runtime(name)
        info = runtime.info
        if tuple(info.input_shape) != tuple(images.shape[1:]):
            raise UsageError(f"teacher {name}: takes {info.input_shape} images, the student {images.shape[1:]}; "
                             "train the student at the teacher's --image-size and --color-mode")
        if not set(info.class_names) & set(class_names):
            raise UsageError(f"teacher {name}: shares no class with the training data ({', '.join(class_names)})")
        if progress:
            progress(f"teacher {name}: classifying {len(images)} training images with {TEACHER_TTA} TTA")
        probs = probabilities(runtime, images, TEACHER_TTA)
        columns.append(_in_student_order(probs, info.class_names, class_names))
    return np.mean(columns, axis=0).astype(np.float32)


def _in_student_order(probs: np.ndarray, teacher_classes: list[str], student_classes: list[str]) -> np.ndarray:
    """Teacher probabilities re-indexed to the student's classes; classes it lacks get 0, rows sum to 1."""
    ordered = np.zeros((len(probs), len(student_classes)), np.float32)
    for column, name in enumerate(student_classes):
        if name in teacher_classes:
            ordered[:, column] = probs[:, teacher_classes.index(name)]
    return ordered / np.maximum(ordered.sum(axis=1, keepdims=True), 1e-12)


def soften(probs: np.ndarray, temperature: float) -> np.ndarray:
    """probs ** (1 / temperature), renormalised: the softmax of the logits divided by temperature."""
    if temperature == 1.0:
        return probs
    powered = np.power(np.maximum(probs, 1e-12), 1.0 / temperature)
    return (powered / powered.sum(axis=1, keepdims=True)).astype(np.float32)


def mix_targets(labels: np.ndarray, teacher: np.ndarray, weight: float, temperature: float) -> np.ndarray:
    """(1 - weight) * labels + weight * softened teacher probabilities, in the labels' form.

    labels are one-hot or soft targets (N, C), or a binary model's (N, 1) probability of the
    second class, whose teacher part is then the teacher's probability of that class.
    """
    taught = soften(teacher, temperature)
    if labels.shape[1] == 1:
        taught = taught[:, 1:2]
    return ((1.0 - weight) * labels + weight * taught).astype(np.float32)


def cached_teacher_probabilities(run_dir: Path, spec: str, images: np.ndarray, class_names: list[str],
                                 progress: Callable[[str], None] | None = None) -> np.ndarray:
    """teacher_probabilities, cached in run_dir/teacher.npz so a resumed run does not classify again.

    The cache is used only when it was made by the same teachers for the same images and classes.
    """
    key = _cache_key(spec, images, class_names)
    path = run_dir / CACHE_NAME
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as cached:
                if str(cached["key"]) == key:
                    return cached["probs"]
        except (OSError, ValueError, KeyError):
            pass  # unreadable or foreign: classify again and replace it
    probs = teacher_probabilities(spec, images, class_names, progress)
    with atomic_path(path, overwrite=True, suffix=".npz") as tmp:
        np.savez(tmp, key=np.array(key), probs=probs)
    return probs


def _cache_key(spec: str, images: np.ndarray, class_names: list[str]) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    digest.update(f"{spec}|{','.join(class_names)}|{TEACHER_TTA}".encode())
    return digest.hexdigest()
