"""Drawing results on images: a box and an "emotion 87%" label per face (with "#2" and a colour of its own
per tracked person in a video), saved atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from emorec.files import atomic_write_bytes, check_targets
from emorec.results import FaceResult

BOX_COLOR = (0, 200, 0)  # BGR
ANNOTATED_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")  # kept as given; any other gets .png


def annotate(image_bgr: np.ndarray, faces: Sequence[FaceResult]) -> np.ndarray:
    """A copy of the image with a box and an "emotion 87%" label per face.

    A tracked face (video) is labelled "#2 happy 81%" in its track's colour
    (track_color). A face classified from the whole image gets its label in
    the top-left corner and no box.
    """
    out = image_bgr.copy()
    scale = max(0.35, max(out.shape[:2]) / 900)
    thickness = max(1, round(scale * 2))
    for face in faces:
        label = f"{face.emotion} {face.confidence:.0%}"
        color = BOX_COLOR if face.track is None else track_color(face.track)
        if face.track is not None:
            label = f"#{face.track} {label}"
        if face.box is None:
            _draw_label(out, label, (0, 0), scale, thickness, color)
            continue
        x, y, w, h = face.box
        cv2.rectangle(out, (x, y), (x + w, y + h), color, thickness)
        _draw_label(out, label, (x, y), scale, thickness, color)
    return out


def track_color(track_id: int) -> tuple[int, int, int]:
    """A bright BGR colour for a track id: the same for an id in every frame, far apart for ids 1, 2, 3 ..."""
    hue = (track_id * 0.618033988749895) % 1.0  # golden-ratio steps spread any number of ids around the hue circle
    hsv = np.uint8([[[round(hue * 179), 200, 235]]])
    return tuple(int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def _draw_label(image: np.ndarray, label: str, corner: tuple[int, int], scale: float, thickness: int,
                color: tuple[int, int, int] = BOX_COLOR) -> None:
    (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    if tw > image.shape[1]:  # tiny images (48 px crops): shrink the text to fit
        scale *= image.shape[1] / tw
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    x = min(max(corner[0], 0), max(image.shape[1] - tw, 0))
    # Above the box when there is room, else inside its top edge.
    y = corner[1] - base - 2 if corner[1] - th - base - 2 >= 0 else max(corner[1], 0) + th + 2
    y = min(y, image.shape[0] - base)
    cv2.rectangle(image, (x, y - th - 2), (x + tw, y + base), color, cv2.FILLED)
    cv2.putText(image, label, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness, cv2.LINE_AA)


def save_annotated(image_bgr: np.ndarray, faces: Sequence[FaceResult], path: str | Path, exist_ok: bool = False) -> Path:
    """Write `annotate(image_bgr, faces)` to path atomically; never replaces a file unless exist_ok."""
    path = Path(path)
    check_targets([path], exist_ok)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if path.suffix.lower() in ANNOTATED_SUFFIXES else ".png"
    ok, encoded = cv2.imencode(suffix, annotate(image_bgr, faces))
    if not ok:
        raise OSError(f"{path}: could not encode the annotated image")
    atomic_write_bytes(path, encoded.tobytes())
    return path
