"""Find faces in photos and cut them out framed like FER2013 crops.

Two detectors, both offline with weights that come from a PyPI install:

* ``"yunet"``: libfacedetection's YuNet CNN through the ``yuface`` wheel
  (weights compiled into the extension). Gives a confidence and 5 landmarks.
* ``"haar"``: OpenCV's bundled frontal-face Haar cascade. Always available.

``create_detector("auto")`` picks yunet when ``yuface`` imports, else haar.
Measured on the 56 one-face photos in shared/data/photos (2-core CPU):
yunet finds exactly one face in 56/56 (12.5 ms), haar in 51/56 (21.2 ms); see
benchmarks/detectors.py for the numbers.

Boxes are in pixels of the original image and may reach past its edges when
the face is cut by the frame (tight crops); use :func:`crop_face` to cut them.
"""

from __future__ import annotations

import ctypes
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from emorec.errors import UsageError
from emorec.preprocess import to_bgr8, to_model_input

# yuface runs on its own OpenMP runtime, whose idle threads spin by default; on
# a busy 2-core machine that made each call 5-20x slower (27 vs 680 ms measured).
# Must be set before the import; an explicit user setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    import yuface
except ImportError:  # optional: "auto" then falls back to haar
    yuface = None

DETECTORS: tuple[str, ...] = ("haar", "yunet") if yuface is not None else ("haar",)
HAAR_CASCADE = "haarcascade_frontalface_default.xml"

# Before detection, small images are enlarged so the short side is at least
# MIN_SIDE px, and a black border of PAD_FRACTION * short side is added on every
# side: many photos are tight face crops, and both detectors miss faces that
# touch the frame. Haar finds 36/56 photo faces without this, 50/56 with it;
# yunet 55/56 without, 56/56 with. A face is at most as large as the short
# side, so that border is enough; one of PAD_FRACTION * long side made a
# 1280x720 frame 1920x1360, mostly black, and shrank its faces below
# COARSE_MIN_FACE in the coarse look, so every frame was searched twice.
MIN_SIDE = 160
PAD_FRACTION = 0.25
# Detectors look first at a copy whose padded short side fits COARSE_SIDE px
# (the long side too for square images) and keep what they found there when
# every face is at least COARSE_MIN_FACE px in it (see _coarse_then_fine).
COARSE_SIDE = 288
COARSE_MIN_FACE = 48

# Two boxes overlapping by more than this fraction of the smaller one are the
# same face; the better-scored one is kept.
SAME_FACE_OVERLAP = 0.5


@dataclass(frozen=True)
class Face:
    """One detected face in the coordinates of the original image."""

    box: tuple[int, int, int, int]  # x, y, w, h in pixels of the original image
    score: float  # detector confidence in [0, 1] (1.0 for Haar)
    # 5 points (right eye, left eye, nose, right and left mouth corner, as seen
    # in the image: first eye is the one with the smaller x) where given
    landmarks: tuple[tuple[float, float], ...] | None = None


class FaceDetector(Protocol):
    """Anything that finds faces in a uint8 HxWx3 BGR image."""

    name: str

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        """Return the faces in ``image_bgr``, sorted left to right."""
        ...


@dataclass(frozen=True)
class _Frame:
    """How a prepared image maps back to the original: orig = (p - pad) / scale."""

    scale: float
    pad: int

    def point(self, x: float, y: float) -> tuple[float, float]:
        return (x - self.pad) / self.scale, (y - self.pad) / self.scale

    def box(self, x: float, y: float, w: float, h: float) -> tuple[int, int, int, int]:
        x0, y0 = self.point(x, y)
        return round(x0), round(y0), round(w / self.scale), round(h / self.scale)


def _scale(height: int, width: int, max_side: int) -> float:
    """Enlarge so the short side reaches MIN_SIDE, shrink so the padded image fits max_side."""
    scale = max(1.0, MIN_SIDE / min(height, width))
    return min(scale, max_side / (max(height, width) + 2 * PAD_FRACTION * min(height, width)))


def _prepare(image: np.ndarray, max_side: int) -> tuple[np.ndarray, _Frame]:
    """Resize (see _scale) and pad with black on every side."""
    h, w = image.shape[:2]
    scale = _scale(h, w, max_side)
    if scale != 1.0:
        method = cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA
        image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=method)
    pad = round(PAD_FRACTION * min(image.shape[:2]))
    padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    return padded, _Frame(scale, pad)


def _coarse_then_fine(image: np.ndarray, max_side: int, find) -> list[Face]:
    """find(prepared, frame) on a copy that fits COARSE_SIDE, then at max_side unless that settled it.

    The coarse look costs a fraction of the fine one on photos. Its faces are
    kept when every one of them is at least COARSE_MIN_FACE px there, big
    enough for a box as good as the fine one; with no face, or a small one,
    the fine look decides. Its size follows the image's shape, so that a face
    a quarter of the short side settles it in wide frames as in square
    photos: a 1280x720 frame is first seen at 437x288 rather than 288x190,
    where its faces came out too small and every frame took both looks.
    """
    height, width = image.shape[:2]
    short, long = min(height, width), max(height, width)
    coarse_side = min(max_side, round(COARSE_SIDE * (long + 2 * PAD_FRACTION * short) / (short * (1 + 2 * PAD_FRACTION))))
    prepared, frame = _prepare(image, coarse_side)
    faces = find(prepared, frame)
    if _scale(height, width, max_side) <= frame.scale:  # the image is no larger at full resolution
        return faces
    if faces and all(min(face.box[2:]) * frame.scale >= COARSE_MIN_FACE for face in faces):
        return faces
    return find(*_prepare(image, max_side))


def _overlap(a: Face, b: Face) -> float:
    """Intersection area over the area of the smaller box."""
    ax, ay, aw, ah = a.box
    bx, by, bw, bh = b.box
    iw = min(ax + aw, bx + bw) - max(ax, bx)
    ih = min(ay + ah, by + bh) - max(ay, by)
    if iw <= 0 or ih <= 0:
        return 0.0
    return iw * ih / min(aw * ah, bw * bh)


def _finish(faces: list[Face], ranks: list[float], min_size: int) -> list[Face]:
    """Drop tiny boxes, keep the best of overlapping ones, sort left to right."""
    order = sorted(range(len(faces)), key=lambda i: ranks[i], reverse=True)
    kept: list[Face] = []
    for i in order:
        face = faces[i]
        if min(face.box[2:]) < min_size:
            continue
        if all(_overlap(face, other) <= SAME_FACE_OVERLAP for other in kept):
            kept.append(face)
    return sorted(kept, key=lambda f: (f.box[0], f.box[1]))


class HaarDetector:
    """OpenCV's frontal-face Haar cascade on the histogram-equalized gray image."""

    name = "haar"

    def __init__(self, min_size: int = 20, scale_factor: float = 1.1,
                 min_neighbors: int = 5, max_side: int = 1280):
        path = cv2.data.haarcascades + HAAR_CASCADE
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise RuntimeError(f"cannot load the Haar cascade {path}")
        self.min_size = min_size
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.max_side = max_side

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        """Return the faces in ``image_bgr``, sorted left to right (score 1.0)."""
        gray = cv2.cvtColor(to_bgr8(image_bgr), cv2.COLOR_BGR2GRAY)
        # Equalize before padding so the black border does not skew the histogram.
        return _coarse_then_fine(cv2.equalizeHist(gray), self.max_side, self._find)

    def _find(self, prepared: np.ndarray, frame: _Frame) -> list[Face]:
        smallest = max(24, math.ceil(self.min_size * frame.scale))
        boxes, neighbours = self._cascade.detectMultiScale2(
            prepared, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
            minSize=(smallest, smallest))
        faces = [Face(frame.box(*box), 1.0) for box in boxes]
        return _finish(faces, [float(n) for n in neighbours], self.min_size)


def _libfacedetection():
    """yuface's libfacedetection.so, called directly: its `facedetect_cnn(buffer, bgr, width, height, step)`."""
    library = ctypes.CDLL(str(Path(yuface.__file__).with_name("libfacedetection.so")))
    detect = library._Z14facedetect_cnnPhS_iii  # C++ name of facedetect_cnn
    detect.restype = ctypes.POINTER(ctypes.c_int)
    detect.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    return detect


_RESULT_BYTES = 0x9000  # the result buffer size libfacedetection asks for
_buffers = threading.local()


def _yunet(image: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores in %, boxes x y w h, 10 landmark coordinates) of the faces libfacedetection finds in a BGR image.

    yuface's own `detect` allocates a 36 KB result buffer per call and never
    frees it (2,000 calls: +70 MB), which a service or a long video cannot
    afford; here each thread reuses one buffer. ctypes also releases the GIL
    during the call, so worker threads detect in parallel.
    """
    global _facedetect_cnn
    if _facedetect_cnn is None:
        _facedetect_cnn = _libfacedetection()
    buffer = getattr(_buffers, "array", None)
    if buffer is None:
        buffer = _buffers.array = np.zeros(_RESULT_BYTES, np.uint8)
    height, width = image.shape[:2]
    found = _facedetect_cnn(buffer.ctypes.data, image.ctypes.data, width, height, image.strides[0])
    count = found[0] if found else 0
    rows = np.frombuffer(buffer, np.int16, count=16 * count, offset=4).reshape(count, 16).copy()
    rows = rows[rows[:, 0] > threshold * 100]
    return rows[:, 0], rows[:, 1:5], rows[:, 5:15]


_facedetect_cnn = None


class YuNetDetector:
    """libfacedetection's YuNet CNN (``yuface`` package): box, score, 5 landmarks."""

    name = "yunet"

    def __init__(self, min_size: int = 20, threshold: float = 0.6, max_side: int = 640):
        if yuface is None:
            raise ImportError("the yunet detector needs the yuface package: pip install yuface")
        self.min_size = min_size
        self.threshold = threshold
        self.max_side = max_side

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        """Return the faces in ``image_bgr``, sorted left to right."""
        return _coarse_then_fine(to_bgr8(image_bgr), self.max_side, self._find)

    def _find(self, prepared: np.ndarray, frame: _Frame) -> list[Face]:
        scores, boxes, points = _yunet(np.ascontiguousarray(prepared), self.threshold)
        faces = [self._face(frame, s, b, p) for s, b, p in zip(scores, boxes, points)]
        return _finish(faces, [f.score for f in faces], self.min_size)

    @staticmethod
    def _face(frame: _Frame, score, box, points) -> Face:
        # yuface gives the score as an integer percentage.
        marks = tuple(frame.point(float(points[i]), float(points[i + 1])) for i in range(0, 10, 2))
        return Face(frame.box(*(int(v) for v in box)), min(1.0, float(score) / 100.0), marks)


# An image whose short side is under FACE_CROP_SIDE px is taken to be one face crop
# already (FER2013's are 48x48) and classified whole, never searched for faces, as
# `evaluate` classifies every labelled image. A detector run inside a crop frames a
# sub-window of it: predict then disagreed with evaluate by 3.4 points on FER2013 val
# crops, while scoring about the same (67.1% re-cropped, 66.0% whole on 350 of them).
# It also misses the face in 4.3% of crops that all ten FER+ annotators called faces,
# at 19 ms a crop.
FACE_CROP_SIDE = 64


def is_face_crop(image: np.ndarray) -> bool:
    """Whether an image (H, W[, C]) is one face crop already: its short side is under FACE_CROP_SIDE px.

    The one rule by which prediction, explanations and duplicate search
    decide between classifying an image whole and looking for faces in it.
    """
    return min(image.shape[:2]) < FACE_CROP_SIDE


def create_detector(name: str = "auto", min_size: int = 20) -> FaceDetector:
    """Build a detector by name: "auto" (yunet if installed, else haar), "haar", "yunet"."""
    if name == "auto":
        name = "yunet" if "yunet" in DETECTORS else "haar"
    if name == "haar":
        return HaarDetector(min_size=min_size)
    if name == "yunet":
        return YuNetDetector(min_size=min_size)
    raise UsageError(f"unknown face detector {name!r}; choose one of: auto, {', '.join(DETECTORS)}")


# --- FER2013 framing ------------------------------------------------------
# Calibrated with `python benchmarks/detectors.py --calibrate --per-class 150`:
# 956 FER2013 val images (48x48, each image is the crop) were run through the
# detectors and the crop was measured against the single detected box.
# Medians [quartiles]:
#   crop side / max(box w, box h): haar 1.02 [0.96, 1.09] (751 faces found),
#                                  yunet 0.98 [0.92, 1.07] (895 found)
#   yunet box h / w: 1.23 (haar boxes are square), so by width it is 1.20
#   crop centre - box centre, in box sizes: x 0.00 / +0.01, y +0.01 / -0.02
#   via yunet landmarks: side / eye-to-mouth distance 2.64 [2.38, 2.92], a
#     wider spread than the box, so landmarks are not used for framing
#   eye-line roll in FER itself: median 1.1 deg [-1.5, 4.2]; FER faces are
#     not levelled, so neither are ours
# So a FER crop is the square on the box centre with the box's longer side,
# for both detectors.
FER_BOX_SCALE = 1.0  # crop side / max(box w, box h)
FER_BOX_SHIFT = 0.0  # (crop centre y - box centre y) / box height


def _fer_square(face: Face) -> tuple[float, float, float]:
    """Centre x, centre y and side of the FER-style square crop for ``face``."""
    x, y, w, h = face.box
    return x + w / 2, y + h / 2 + FER_BOX_SHIFT * h, FER_BOX_SCALE * max(w, h)


def crop_face(image_bgr: np.ndarray, face: Face, size: int = 48, grayscale: bool = True) -> np.ndarray:
    """Cut ``face`` out framed like a FER2013 image.

    Returns uint8 (size, size, 1) gray, or (size, size, 3) RGB when
    ``grayscale`` is False. Parts of the square outside the image repeat
    the edge pixels.
    """
    image = to_bgr8(image_bgr)
    cx, cy, side = _fer_square(face)
    side = max(1, round(side))
    x0, y0 = round(cx - side / 2), round(cy - side / 2)
    return to_model_input(_cut_padded(image, x0, y0, side), size, 1 if grayscale else 3)


def _cut_padded(image: np.ndarray, x0: int, y0: int, side: int) -> np.ndarray:
    """The side x side square at (x0, y0), edge-replicated where it leaves the image."""
    h, w = image.shape[:2]
    top, left = max(0, -y0), max(0, -x0)
    bottom, right = max(0, y0 + side - h), max(0, x0 + side - w)
    inside = image[max(0, y0):min(h, y0 + side), max(0, x0):min(w, x0 + side)]
    if inside.size == 0:  # the square misses the image entirely
        return np.zeros((side, side, 3), np.uint8)
    return cv2.copyMakeBorder(inside, top, bottom, left, right, cv2.BORDER_REPLICATE)
