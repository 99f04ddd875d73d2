"""Who is who in a video: a track id per face that stays with the same person across frames.

The tracker is ByteTrack-style (Zhang et al., 2022, "ByteTrack: Multi-Object
Tracking by Associating Every Detection Box") with an appearance cue, as in
DeepSORT, but a cheap one:

- each track carries a constant-velocity Kalman filter over its box
  (centre, width, height and their velocities), predicted to the frame being
  matched, so skipped frames (`--stride`) and short misses are bridged;
- detections are matched to tracks by Hungarian assignment (`lap.lapjv`) in
  three rounds: confident detections against all tracks (those seen in the
  previous frame by box overlap plus appearance; lost ones when the face is
  near where it was last seen or where its motion puts it, and looks alike),
  then the unsure detections against the remaining tracks seen in the
  previous frame (overlap only), then what is left against lost tracks;
- lost tracks are kept for `buffer_seconds`, so a face that is covered, passes
  behind someone or steps out of the frame comes back under its own id;
  detections that match nothing start new tracks (ids 1, 2, ...).

The appearance cue is `face_descriptor`: a normalised 16x16 grayscale
thumbnail and a 4x4-cell gradient-orientation histogram of the face crop the
classifier already gets. It works on grayscale video (no colour) and
separates two faces that overlap, where motion alone cannot. On the
labelled photos (../shared/data/photos), the same face shifted, rescaled by 8%,
blurred and brightened stays within distance 0.18 (1 - cosine) in 95% of
cases, while 95% of pairs of different people are over 0.35; it costs about
0.1-0.3 ms per face (benchmarks/tracking.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

THUMBNAIL = 16  # pixels a side of the thumbnail part of the descriptor
CELLS = 4  # the gradient histogram's grid is CELLS x CELLS ...
BINS = 8  # ... with BINS unsigned orientations per cell
DESCRIPTOR_SIZE = THUMBNAIL * THUMBNAIL + CELLS * CELLS * BINS

HIGH_SCORE = 0.6  # detections at least this confident are matched first (ByteTrack's split)
MAX_COST = 0.8  # a pairing that costs more is no match
APPEARANCE_GATE = 0.4  # descriptor distance (1 - cosine) beyond which two crops are different people
ON_COURSE = 0.5  # face widths from where a lost track's motion puts it ...
ON_COURSE_APPEARANCE_GATE = 0.6  # ... within which a face that looks this different still counts as the same
LOST_REACH = 2.0  # a lost face may come back this many face widths from where it was or should be
DESCRIPTOR_MEMORY = 0.9  # a track's descriptor: 90% its past, 10% the newest crop


def face_descriptor(crop: np.ndarray) -> np.ndarray:
    """An appearance descriptor of one face crop (H x W x C or H x W uint8): float32, unit length.

    Compare two with a dot product (cosine similarity). Brightness and
    contrast changes leave it unchanged; colour is ignored.
    """
    gray = crop if crop.ndim == 2 else (crop[..., 0] if crop.shape[2] == 1 else cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY))
    gray = cv2.resize(gray, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    thumbnail = cv2.resize(gray, (THUMBNAIL, THUMBNAIL), interpolation=cv2.INTER_AREA).ravel()
    parts = [_unit(thumbnail - thumbnail.mean()), _unit(_gradient_histogram(gray))]
    return _unit(np.concatenate(parts)).astype(np.float32)


def face_descriptors(crops: np.ndarray) -> np.ndarray:
    """`face_descriptor` of each crop of a stack (N, H, W, C): N x DESCRIPTOR_SIZE float32."""
    return np.stack([face_descriptor(crop) for crop in crops]) if len(crops) else \
        np.zeros((0, DESCRIPTOR_SIZE), np.float32)


def _gradient_histogram(gray: np.ndarray) -> np.ndarray:
    dx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
    dy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
    magnitude, angle = cv2.cartToPolar(dx, dy)
    bins = (np.mod(angle, np.pi) / np.pi * BINS).astype(np.int32) % BINS
    cell = gray.shape[0] // CELLS
    rows, cols = np.indices(gray.shape) // cell
    index = (rows * CELLS + cols) * BINS + bins
    return np.bincount(index.ravel(), weights=magnitude.ravel(), minlength=CELLS * CELLS * BINS)


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


class _Kalman:
    """Constant-velocity Kalman filter over (cx, cy, w, h); noise scales with the face size, as in ByteTrack."""

    def __init__(self, measurement: np.ndarray):
        self.x = np.concatenate([measurement, np.zeros(4)])
        size = max(measurement[2], measurement[3], 1.0)
        self.P = np.diag(np.r_[np.full(4, (size / 10) ** 2), np.full(4, (size / 16) ** 2)])

    def predict(self, steps: int) -> None:
        """Move the state `steps` frames ahead."""
        if steps <= 0:
            return
        F = np.eye(8)
        F[:4, 4:] = np.eye(4) * steps
        size = max(self.x[2], self.x[3], 1.0)
        Q = np.diag(np.r_[np.full(4, (size / 20) ** 2), np.full(4, (size / 160) ** 2)]) * steps
        self.x = F @ self.x
        self.P = F @ self.P @ F.T + Q

    def update(self, measurement: np.ndarray) -> None:
        """Correct the state with a measured box."""
        size = max(measurement[2], measurement[3], 1.0)
        R = np.eye(4) * (size / 20) ** 2
        S = self.P[:4, :4] + R
        K = np.linalg.solve(S, self.P[:4, :]).T
        self.x = self.x + K @ (measurement - self.x[:4])
        self.P = self.P - K @ self.P[:4, :]


@dataclass(eq=False)
class _Track:
    id: int
    kalman: _Kalman
    descriptor: np.ndarray
    seen_box: np.ndarray  # (cx, cy, w, h) where it was last matched
    seen_frame: int
    predicted_frame: int = field(init=False)
    lost: bool = False  # not seen in the previous frame

    def __post_init__(self) -> None:
        self.predicted_frame = self.seen_frame

    @property
    def predicted_box(self) -> np.ndarray:
        return self.kalman.x[:4]

    def predict_to(self, frame_index: int) -> None:
        self.kalman.predict(frame_index - self.predicted_frame)
        self.predicted_frame = frame_index


class FaceTracker:
    """Stable ids for the faces of a video, one frame at a time (see the module docstring).

    fps is the video's frame rate; a track that is not seen for buffer_seconds
    is dropped, and a face that appears after that gets a new id.
    """

    def __init__(self, fps: float, buffer_seconds: float = 2.0):
        if fps <= 0 or buffer_seconds < 0:
            raise ValueError(f"fps must be > 0 and buffer_seconds >= 0, not {fps} and {buffer_seconds}")
        self.max_lost_frames = max(1, round(buffer_seconds * fps))
        self.tracks: list[_Track] = []
        self.next_id = 1
        self.last_frame: int | None = None

    def update(self, frame_index: int, boxes: np.ndarray, descriptors: np.ndarray,
               scores: np.ndarray | None = None) -> list[int]:
        """Track ids for one frame's faces: boxes N x 4 (x, y, w, h pixels), descriptors N x D float32.

        scores (N detector confidences, optional) decide which faces are
        matched first. Frames must come in increasing frame_index order; gaps
        (a stride, dropped frames) are fine.
        """
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        measured = np.column_stack([boxes[:, 0] + boxes[:, 2] / 2, boxes[:, 1] + boxes[:, 3] / 2, boxes[:, 2:]])
        descriptors = np.asarray(descriptors, np.float32).reshape(len(boxes), -1) if len(boxes) else np.zeros((0, 1))
        confident = np.ones(len(boxes), bool) if scores is None else np.asarray(scores) >= HIGH_SCORE
        if self.last_frame is not None and frame_index <= self.last_frame:
            raise ValueError(f"frame {frame_index} comes after frame {self.last_frame}: frames must go forward")
        previous, self.last_frame = self.last_frame, frame_index
        self.tracks = [t for t in self.tracks if frame_index - t.seen_frame <= self.max_lost_frames]
        for track in self.tracks:
            track.predict_to(frame_index)
            track.lost = track.seen_frame != previous
        ids = [0] * len(boxes)
        active = [t for t in self.tracks if not t.lost]
        lost = [t for t in self.tracks if t.lost]
        rounds = [(active + lost, np.flatnonzero(confident)),  # one pool: a lost face may win back its detection
                  (active, np.flatnonzero(~confident)),
                  (lost, np.arange(len(boxes)))]
        for stage, (tracks, candidates) in enumerate(rounds):
            tracks = [t for t in tracks if t.seen_frame != frame_index]
            candidates = [i for i in candidates if not ids[i]]
            cost = self._motion_cost if stage == 1 else self._cost
            for t, i in _assign(cost, tracks, candidates, measured, descriptors):
                ids[i] = self._follow(t, measured[i], descriptors[i], frame_index)
        for i in [i for i, track_id in enumerate(ids) if not track_id]:
            ids[i] = self._start(measured[i], descriptors[i], frame_index)
        return ids

    def _cost(self, track: _Track, box: np.ndarray, descriptor: np.ndarray) -> float:
        """Motion plus appearance for a track seen in the previous frame; see _lost_cost for a lost one."""
        if track.lost:
            return self._lost_cost(track, box, descriptor)
        motion = self._motion_cost(track, box)
        if not np.isfinite(motion):
            return motion
        overlap = _iou(track.predicted_box, box)
        appearance = 1 - float(track.descriptor @ descriptor)
        if appearance > APPEARANCE_GATE and overlap < 0.5:
            return np.inf
        return 0.5 * motion + 0.5 * appearance / APPEARANCE_GATE * MAX_COST

    def _motion_cost(self, track: _Track, box: np.ndarray, descriptor: np.ndarray | None = None) -> float:
        """How far a box is from where the track's motion puts it: 1 - overlap, or centre distance in face widths."""
        predicted = track.predicted_box
        overlap = _iou(predicted, box)
        distance = _distance(predicted, box)
        if (overlap == 0 and distance > 1.0) or not _similar_size(predicted, box):
            return np.inf
        return min(1 - overlap, distance)

    def _lost_cost(self, track: _Track, box: np.ndarray, descriptor: np.ndarray) -> float:
        """Near where a lost face was last seen or should be by now, and looking alike."""
        on_course = _distance(track.predicted_box, box)
        distance = min(on_course, _distance(track.seen_box, box))
        appearance = 1 - float(track.descriptor @ descriptor)
        # A face coming out from behind another is half hidden and looks different: where its motion
        # says it should be, a looser likeness will do.
        gate = ON_COURSE_APPEARANCE_GATE if on_course <= ON_COURSE else APPEARANCE_GATE
        if distance > LOST_REACH or appearance > gate or not _similar_size(track.seen_box, box):
            return np.inf
        return 0.5 * distance / LOST_REACH * MAX_COST + 0.5 * min(appearance / APPEARANCE_GATE, 1.0) * MAX_COST

    def _follow(self, track: _Track, box: np.ndarray, descriptor: np.ndarray, frame_index: int) -> int:
        if track.lost and _distance(track.seen_box, box) < _distance(track.predicted_box, box):
            track.kalman = _Kalman(box)  # back where it was, not where its old motion led: start the motion afresh
        else:
            track.kalman.update(box)
        track.descriptor = _unit(DESCRIPTOR_MEMORY * track.descriptor + (1 - DESCRIPTOR_MEMORY) * descriptor)
        track.seen_box, track.seen_frame = box, frame_index
        return track.id

    def _start(self, box: np.ndarray, descriptor: np.ndarray, frame_index: int) -> int:
        track = _Track(self.next_id, _Kalman(box), descriptor.copy(), box, frame_index)
        self.tracks.append(track)
        self.next_id += 1
        return track.id


def _assign(cost, tracks: list[_Track], candidates: list[int], measured: np.ndarray,
            descriptors: np.ndarray) -> list[tuple[_Track, int]]:
    """Minimum-cost pairs (track, detection index) whose cost is at most MAX_COST."""
    if not tracks or not candidates:
        return []
    import lap

    matrix = np.array([[cost(t, measured[i], descriptors[i]) for i in candidates] for t in tracks])
    matrix = np.where(np.isfinite(matrix), matrix, MAX_COST + 1)
    _, track_to_detection, _ = lap.lapjv(matrix, extend_cost=True, cost_limit=MAX_COST)
    return [(tracks[r], candidates[c]) for r, c in enumerate(track_to_detection) if c >= 0 and matrix[r, c] <= MAX_COST]


def _corners(box: np.ndarray) -> tuple[float, float, float, float]:
    cx, cy, w, h = box
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ax0, ay0, ax1, ay1 = _corners(a)
    bx0, by0, bx1, by1 = _corners(b)
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    """Centre distance in face widths (the mean of both boxes' sizes)."""
    size = max((a[2] + a[3] + b[2] + b[3]) / 4, 1.0)
    return float(np.hypot(a[0] - b[0], a[1] - b[1]) / size)


def _similar_size(a: np.ndarray, b: np.ndarray) -> bool:
    return 0.5 <= (b[2] * b[3]) / max(a[2] * a[3], 1.0) <= 2.0
