"""`Recognizer`: find the faces in an image and classify their emotion with one loaded model.

    >>> rec = Recognizer()                      # the default bundled model on ONNX Runtime, automatic detector
    >>> rec.predict("photo.jpg")                # -> [FaceResult(box=(x, y, w, h), ...)]

The work is split in steps that batch and pipeline well: `prepare` (locate
the faces of one image and crop them, CPU work that can run in background
threads) and `classify_prepared` (one model call for the faces of many
images). Keras is imported only for `.keras` model files.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from emorec.config import PredictConfig
from emorec.faces import Face, create_detector, crop_face, is_face_crop
from emorec.images import read_image
from emorec.preprocess import to_bgr8, to_model_input
from emorec.results import FaceResult
from emorec.runtime import Runtime, load_runtime, probabilities


@dataclass(frozen=True)
class WholeImage:
    """The region "the whole image is one face": detection is off, or the image is a face crop (`is_face_crop`)."""


WHOLE_IMAGE = WholeImage()
Region = Face | WholeImage


@dataclass
class Prepared:
    """One image ready for the model: its face regions and their crops (N, H, W, C), in the same order."""

    regions: list[Region]
    crops: np.ndarray


class Recognizer:
    """Find faces and classify their emotion with one loaded model.

    model: a `.onnx` or `.keras` file saved by emorec, a bundled model's name ("fer2013",
        "ferplus", with "-int8" for its int8 copy), or None/"bundled" for the default one.
    detector: a name from `emorec.faces.DETECTORS` ("auto" picks the best available).
    detect: False classifies every input as one already-cropped face.
    tta: test-time augmentation: False/"none", True/"flip" (mirror) or "multi" (12 views).
    runtime: an already loaded model (see emorec.runtime.load_runtime), instead of model.
    threads: ONNX Runtime threads (0: one per core); pipelines that locate faces in
        worker threads meanwhile take fewer (emorec.pipeline.model_threads).

    The whole image is classified as one face when detect is False, and
    also when it is a face crop by `faces.is_face_crop` (short side under
    64 px, like FER2013's 48x48 crops; `check --duplicates` follows the same
    rule): a small image is never searched for a face, so on crops predict
    gives what `evaluate`, which classifies every labelled image whole,
    gives. Larger images are searched, and give no result when no face is
    found.
    """

    def __init__(self, model: str | Path | None = None, detector: str = "auto", detect: bool = True,
                 tta: bool | str = False, runtime: Runtime | None = None, threads: int = 0):
        self.runtime = runtime if runtime is not None else load_runtime(model, threads)
        self.info = self.runtime.info
        self.tta = tta
        self.detect = detect
        self.detector = create_detector(detector) if detect else None

    @classmethod
    def from_config(cls, cfg: PredictConfig, threads: int = 0) -> "Recognizer":
        """A Recognizer with the model, detector and options of a PredictConfig (threads: see the class)."""
        return cls(cfg.model, detector=cfg.detector, detect=cfg.detect, tta=cfg.tta, threads=threads)

    def with_options(self, tta: bool | str | None = None, detect: bool | None = None) -> "Recognizer":
        """A Recognizer sharing this one's model and detector, with other TTA or detection settings."""
        other = copy.copy(self)
        other.tta = self.tta if tta is None else tta
        other.detect = self.detect if detect is None else detect
        if other.detect and self.detector is None:
            other.detector = create_detector("auto")
        elif not other.detect:
            other.detector = None
        return other

    @property
    def class_names(self) -> list[str]:
        """The model's classes, in output order."""
        return list(self.info.class_names)

    def predict(self, image: str | Path | np.ndarray, rgb: bool = False) -> list[FaceResult]:
        """Faces in one image (a path or an array), sorted left to right.

        Arrays are BGR like OpenCV's by default; pass rgb=True for RGB(A)
        arrays (PIL, matplotlib). 2-D grayscale arrays are accepted too.
        Raises ImageReadError for an unreadable file and ValueError for an
        array that is not an image.
        """
        return self.predict_batch([image], rgb=rgb)[0]

    def predict_batch(self, images: Sequence[str | Path | np.ndarray], rgb: bool = False) -> list[list[FaceResult]]:
        """`predict` for many images, classifying all their faces in one model call."""
        return self.classify_prepared([self.prepare(to_bgr(image, rgb)) for image in images])

    def locate(self, image_bgr: np.ndarray) -> list[Region]:
        """The face regions of a BGR image: detected faces, or [WHOLE_IMAGE] (see the class docstring)."""
        if self.detector is None or is_face_crop(image_bgr):
            return [WHOLE_IMAGE]
        return list(self.detector.detect(image_bgr))

    def crop(self, image_bgr: np.ndarray, region: Region) -> np.ndarray:
        """The model input (size, size, channels) for one region of a BGR image."""
        if isinstance(region, WholeImage):
            return to_model_input(image_bgr, self.info.image_size, self.info.channels)
        return crop_face(image_bgr, region, size=self.info.image_size, grayscale=self.info.channels == 1)

    def prepare(self, image_bgr: np.ndarray) -> Prepared:
        """Locate the faces of one BGR image and crop them (no model call: safe in worker threads)."""
        regions = self.locate(image_bgr)
        crops = [self.crop(image_bgr, region) for region in regions]
        stacked = np.stack(crops) if crops else np.zeros((0, *self.info.input_shape), np.uint8)
        return Prepared(regions, stacked)

    def classify(self, crops: np.ndarray) -> np.ndarray:
        """Probabilities (N, num_classes) for a stack of model-sized crops."""
        return probabilities(self.runtime, crops, tta=self.tta)

    def classify_prepared(self, prepared: Sequence[Prepared]) -> list[list[FaceResult]]:
        """Classify the crops of many `prepare` results in one model call."""
        crops = [item.crops for item in prepared]
        probs = self.classify(np.concatenate(crops) if crops else np.zeros((0, *self.info.input_shape), np.uint8))
        results, start = [], 0
        for item in prepared:
            count = len(item.regions)
            results.append([self._face_result(r, p) for r, p in zip(item.regions, probs[start : start + count])])
            start += count
        return results

    def _face_result(self, region: Region, probs: np.ndarray) -> FaceResult:
        probabilities_by_name = {name: float(p) for name, p in zip(self.class_names, probs)}
        if isinstance(region, WholeImage):
            return FaceResult(None, probabilities_by_name, None)
        return FaceResult(tuple(int(v) for v in region.box), probabilities_by_name, float(region.score))


def to_bgr(image: str | Path | np.ndarray, rgb: bool = False) -> np.ndarray:
    """An 8-bit BGR array from a path or an array (BGR by default; rgb=True for RGB; 2-D = gray)."""
    if isinstance(image, (str, Path)):
        return read_image(image, reduce=True)  # a photo over the pixel limit is decoded smaller
    return to_bgr8(image, rgb)
