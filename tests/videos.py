"""Short generated videos of real faces with known identities, for tracking tests and benchmarks.

Each scene moves face sprites (cut from the labelled photos in
../shared/data/photos) over a textured background and records where every
person is in every frame, so a test can tell which person each detected face
is. Scenes: two people crossing at different heights, one passing behind
another, a face covered for 1 s, five people moving, a slow camera pan and
zoom, a person leaving the frame and coming back.

    >>> truth = write_scene("crossing", "clip.mp4")
    >>> truth.person_at(frame=12, box=(300, 80, 130, 180))   # -> 0, 1 or None
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

DATA = Path(os.environ.get("EMOREC_TEST_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")
PHOTOS = DATA / "photos"
# Photos the default model reads clearly at sprite size (happy 0.88 and neutral 0.82 first).
PEOPLE = ["Robbie_Williams_0001.jpg", "Iveta_Benesova_0001.jpg", "George_Tenet_0002.jpg",
          "Thomas_Enqvist_0001.jpg", "Mahdi_Al_Bassam_0001.jpg"]
SCENES = ("crossing", "behind", "covered", "five", "pan", "reenter")


@dataclass
class GroundTruth:
    """Where each person's sprite is (x, y, w, h in frame pixels) in each frame, when visible."""

    scene: str
    fps: float
    size: tuple[int, int]  # (width, height)
    people: list[str]
    boxes: list[dict[int, tuple[int, int, int, int]]] = field(default_factory=list)

    @property
    def frames(self) -> int:
        """Frames in the video."""
        return len(self.boxes)

    def person_at(self, frame: int, box: tuple[int, int, int, int]) -> int | None:
        """The visible person whose sprite centre is nearest the centre of a detected box (None: no one near)."""
        cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
        best, best_distance = None, np.inf
        for person, (x, y, w, h) in self.boxes[frame].items():
            distance = np.hypot(x + w / 2 - cx, y + h / 2 - cy)
            if distance < best_distance and distance < max(w, h) * 0.6:
                best, best_distance = person, distance
        return best


def sprite(name: str, side: int) -> np.ndarray:
    """The face region of a 350x350 labelled photo, side x side pixels (BGR)."""
    image = cv2.imread(str(PHOTOS / name))
    if image is None:
        raise FileNotFoundError(f"{PHOTOS / name}: shared photo not found")
    return cv2.resize(image[60:290, 60:290], (side, side), interpolation=cv2.INTER_AREA)


def background(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth grey texture (no faces, some structure for the detector to ignore)."""
    noise = np.random.default_rng(seed).uniform(60, 160, (height // 16 + 2, width // 16 + 2)).astype(np.float32)
    smooth = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    return cv2.cvtColor(np.clip(smooth, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)


# A scene: frame count, sprite side, people, and per frame a list of (person, x, y) in drawing order
# (later ones in front) plus an optional covered rectangle and camera (shift_x, shift_y, zoom).
Placement = tuple[list[tuple[int, float, float]], tuple[int, int, int, int] | None, tuple[float, float, float]]


def _crossing(t: float, width: int, height: int) -> Placement:
    """Two people walk past each other at different heights (the neutral one in front)."""
    return [(0, 20 + t * (width - 160) / 3, 40), (1, width - 140 - t * (width - 160) / 3, 150)], None, (0, 0, 1)


def _behind(t: float, width: int, height: int) -> Placement:
    """One person walks behind another, who stands still."""
    return [(0, 20 + t * (width - 160) / 3, 90), (1, width / 2 - 60, 100)], None, (0, 0, 1)


def _covered(t: float, width: int, height: int) -> Placement:
    """A slowly moving face, covered by a grey card from 1 s to 2 s."""
    x = 200 + 20 * t
    card = (int(x) - 20, 60, 170, 180) if 1.0 <= t < 2.0 else None
    return [(0, x, 80), (1, width - 170, 150)], card, (0, 0, 1)


def _five(t: float, width: int, height: int) -> Placement:
    """Five people drifting in different directions, bouncing off the edges."""
    starts = [(20, 20, 70, 20), (260, 250, -50, -35), (520, 30, -60, 30), (400, 150, 55, -40), (20, 250, 45, -25)]
    placed = []
    for person, (x, y, vx, vy) in enumerate(starts):
        placed.append((person, _bounce(x + vx * t, width - 100), _bounce(y + vy * t, height - 100)))
    return placed, None, (0, 0, 1)


def _bounce(position: float, limit: float) -> float:
    period = 2 * limit
    position %= period
    return position if position <= limit else period - position


def _pan(t: float, width: int, height: int) -> Placement:
    """Two people standing still while the camera pans right and zooms in slowly."""
    return [(0, 120, 100), (1, 360, 120)], None, (-25 * t, -5 * t, 1 + 0.08 * t)


def _reenter(t: float, width: int, height: int) -> Placement:
    """A person walks out of the frame on the right and comes back 0.6 s later; another stands still."""
    speed = 260  # pixels per second
    out_at = (width - 240) / speed  # leaves the frame (fully out) at this time
    x = 240 + speed * t if t < out_at else (width + 20 if t < out_at + 0.6 else width + 20 - speed * (t - out_at - 0.6))
    return [(1, 40, 120), (0, x, 100)], None, (0, 0, 1)


_SCENES: dict[str, tuple[Callable[[float, int, int], Placement], float]] = {
    "crossing": (_crossing, 3.0), "behind": (_behind, 3.0), "covered": (_covered, 3.0),
    "five": (_five, 2.5), "pan": (_pan, 2.5), "reenter": (_reenter, 3.5),
}


def write_scene(scene: str, path: str | Path, fps: float = 20.0, size: tuple[int, int] = (640, 360),
                side: int | None = None, grayscale: bool = False) -> GroundTruth:
    """Write a scene as an mp4v video at path and return where everyone was in each frame."""
    place, seconds = _SCENES[scene]
    width, height = size
    side = side or round(height / 3)
    people = PEOPLE[:5] if scene == "five" else PEOPLE[:2]
    sprites = [sprite(name, side if scene != "five" else round(side * 0.8)) for name in people]
    back = background(width, height)
    truth = GroundTruth(scene, fps, size, people)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    try:
        for index in range(round(seconds * fps)):
            frame, visible = _render(place(index / fps, width, height), sprites, back)
            truth.boxes.append(visible)
            if grayscale:
                frame = cv2.cvtColor(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
            writer.write(frame)
    finally:
        writer.release()
    return truth


def _render(placement: Placement, sprites: list[np.ndarray], back: np.ndarray):
    placed, card, (shift_x, shift_y, zoom) = placement
    frame = back.copy()
    height, width = frame.shape[:2]
    boxes: dict[int, tuple[int, int, int, int]] = {}
    for person, x, y in placed:
        image = sprites[person]
        sx, sy = round(x * zoom + shift_x), round(y * zoom + shift_y)
        side = round(image.shape[0] * zoom)
        if zoom != 1:
            image = cv2.resize(image, (side, side), interpolation=cv2.INTER_LINEAR)
        _paste(frame, image, sx, sy)
        for other in list(boxes):  # a person mostly hidden behind this one is not visible
            if _covered_fraction(boxes[other], (sx, sy, side, side)) > 0.5:
                del boxes[other]
        if _inside_fraction((sx, sy, side, side), width, height) > 0.6:
            boxes[person] = (sx, sy, side, side)
    if card is not None:
        x, y, w, h = card
        cv2.rectangle(frame, (x, y), (x + w, y + h), (128, 128, 128), cv2.FILLED)
        boxes = {p: b for p, b in boxes.items() if _covered_fraction(b, card) <= 0.5}
    return frame, boxes


def _paste(frame: np.ndarray, image: np.ndarray, x: int, y: int) -> None:
    height, width = frame.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + image.shape[1], width), min(y + image.shape[0], height)
    if x1 > x0 and y1 > y0:
        frame[y0:y1, x0:x1] = image[y0 - y : y1 - y, x0 - x : x1 - x]


def _covered_fraction(box, cover) -> float:
    x, y, w, h = box
    cx, cy, cw, ch = cover
    inter = max(0, min(x + w, cx + cw) - max(x, cx)) * max(0, min(y + h, cy + ch) - max(y, cy))
    return inter / (w * h)


def _inside_fraction(box, width: int, height: int) -> float:
    return _covered_fraction(box, (0, 0, width, height))
