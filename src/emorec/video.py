"""Emotions in video files and webcam streams: per-frame CSV rows and an optional annotated video.

Frames are decoded by a background thread and their faces located and
cropped by worker threads while the main thread classifies, so a file
plays through at the speed of the slowest stage; look-ahead is bounded and
memory stays flat on long videos. Outputs go to temporary files first: a
finished video (or a webcam stopped with Ctrl-C) moves them into place, an
interrupted video file leaves none behind.
"""

from __future__ import annotations

import csv
import os
from contextlib import ExitStack
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from emorec.config import PredictConfig
from emorec.draw import annotate
from emorec.files import atomic_path, check_targets, stat_regular
from emorec.pipeline import in_background, model_threads, ordered_map
from emorec.recognizer import Recognizer
from emorec.results import FaceResult, VideoSummary

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
MAX_CAMERA_INDEX = 1023


def is_video(path: str | Path) -> bool:
    """True for a file name with a video extension."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def webcam_index(source: str | int | Path) -> int | None:
    """The webcam index a source names ("0", 1), or None for a path."""
    if isinstance(source, int):
        return source
    if isinstance(source, Path):
        return None
    return int(source) if source.isdigit() and not Path(source).exists() else None


def predict_video(
    source: str | Path | int,
    cfg: PredictConfig,
    csv_path: str | Path,
    annotated_path: str | Path | None = None,
    recognizer: Recognizer | None = None,
    progress: bool = True,
) -> VideoSummary:
    """Classify every cfg.stride-th frame of a video file or webcam (int index).

    Writes one CSV row per face per classified frame (time_s, frame, face,
    x, y, w, h, one column per class, emotion; a frame without faces gets one
    row with empty face fields) and, with annotated_path, an mp4v video of
    every frame with the latest boxes drawn. With cfg.smooth > 0 the
    probabilities of face i are smoothed across classified frames:
    p = smooth * previous + (1 - smooth) * new. Existing files are refused
    unless cfg.exist_ok. Ctrl-C stops a webcam and keeps what was recorded;
    on a video file it removes the partial outputs and is raised again.
    """
    targets = [Path(csv_path)] + ([Path(annotated_path)] if annotated_path else [])
    check_targets(targets, cfg.exist_ok)
    recognizer = recognizer or Recognizer.from_config(cfg, threads=model_threads())
    capture = open_capture(source)
    summary = VideoSummary(str(source), fps=capture_fps(capture), csv_path=str(csv_path))
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if webcam_index(source) is None else 0
    writer = _VideoSink(Path(annotated_path), summary.fps) if annotated_path else None
    try:
        with FrameCsv(Path(csv_path), recognizer.class_names) as rows, _frames_bar(total, progress) as bar:
            try:
                _video_loop(capture, recognizer, cfg, summary, rows, writer, bar)
            except KeyboardInterrupt:
                if webcam_index(source) is None:
                    raise
        if writer is not None:
            summary.annotated_path = writer.close()
    finally:
        capture.release()
        if writer is not None:
            writer.discard()
    return summary


def _frames_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total if total > 0 else None, desc="frames", unit="frame", leave=False, disable=not enabled)


def _video_loop(capture, recognizer: Recognizer, cfg: PredictConfig, summary: VideoSummary, rows, writer, bar) -> None:
    faces: list[FaceResult] = []
    previous: dict[int, np.ndarray] = {}

    def prepare(indexed_frame):
        index, frame = indexed_frame
        return recognizer.prepare(frame) if index % cfg.stride == 0 else None

    frames = in_background(read_frames(capture))
    stream = ordered_map(prepare, frames)
    try:
        for (index, frame), prepared in stream:
            if isinstance(prepared, Exception):
                raise prepared
            if prepared is not None:
                faces = smooth_faces(recognizer.classify_prepared([prepared])[0], previous, cfg.smooth)
                rows.write(index / summary.fps, index, faces)
                count_faces(summary, faces)
            if writer is not None:
                writer.write(annotate(frame, faces))
            summary.frames += 1
            bar.update()
    finally:  # stop the reader and the workers now, also on Ctrl-C
        stream.close()
        frames.close()


def open_capture(source: str | Path | int) -> cv2.VideoCapture:
    """An opened cv2.VideoCapture for a file path or webcam index; ValueError if it cannot open."""
    index = webcam_index(source)
    if index is not None and index > MAX_CAMERA_INDEX:
        raise ValueError(f"{source}: no such camera (camera indexes are 0 to {MAX_CAMERA_INDEX})")
    if index is None:
        stat_regular(source)  # a FIFO or device named .mp4 would block OpenCV's reader forever
    capture = cv2.VideoCapture(index if index is not None else str(source))
    if not capture.isOpened():
        capture.release()
        raise ValueError(f"{source}: cannot open video (unsupported format or no such camera)")
    return capture


def capture_fps(capture: cv2.VideoCapture) -> float:
    """The frame rate a capture reports, or 30 where it reports none (webcams)."""
    fps = capture.get(cv2.CAP_PROP_FPS)
    return float(fps) if fps and 0 < fps < 1000 else 30.0  # webcams often report 0


def read_frames(capture: cv2.VideoCapture) -> Iterator[tuple[int, np.ndarray]]:
    """(frame index, BGR frame) until the stream ends."""
    index = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            return
        yield index, frame
        index += 1


def smooth_faces(faces: list[FaceResult], previous: dict[int, np.ndarray], alpha: float) -> list[FaceResult]:
    """Exponentially smooth probabilities per face index; updates `previous` in place."""
    if alpha <= 0:
        return faces
    smoothed = []
    for i, face in enumerate(faces):
        new = np.array(list(face.probabilities.values()), np.float64)
        p = alpha * previous[i] + (1 - alpha) * new if i in previous else new
        previous[i] = p
        smoothed.append(FaceResult(face.box, dict(zip(face.probabilities, map(float, p))), face.score))
    for i in [i for i in previous if i >= len(faces)]:
        del previous[i]  # a face that left the frame starts afresh when one reappears
    return smoothed


def count_faces(summary: VideoSummary, faces: list[FaceResult]) -> None:
    """Add one classified frame and its faces to a summary."""
    summary.classified_frames += 1
    summary.face_rows += len(faces)
    for face in faces:
        summary.emotions[face.emotion] = summary.emotions.get(face.emotion, 0) + 1


class FrameCsv:
    """Per-frame CSV rows, written through the atomic writer: in place on success, removed after an error."""

    def __init__(self, path: Path, class_names: list[str]):
        self.path, self.class_names = path, class_names
        self.files = ExitStack()

    def __enter__(self):
        tmp = self.files.enter_context(atomic_path(self.path, suffix=".csv"))
        self.handle = self.files.enter_context(open(tmp, "w", newline=""))
        self.writer = csv.writer(self.handle)
        self.writer.writerow(["time_s", "frame", "face", "x", "y", "w", "h", *self.class_names, "emotion"])
        return self

    def write(self, time_s: float, frame: int, faces: list[FaceResult]) -> None:
        """One row per face; one row with empty face fields when there is none."""
        if not faces:
            self.writer.writerow([f"{time_s:.3f}", frame] + [""] * (6 + len(self.class_names)))
        for i, face in enumerate(faces, 1):
            box = list(face.box) if face.box is not None else [""] * 4
            probs = [f"{face.probabilities[c]:.4f}" for c in self.class_names]
            self.writer.writerow([f"{time_s:.3f}", frame, i, *box, *probs, face.emotion])

    def __exit__(self, *exc) -> bool:
        return self.files.__exit__(*exc)


class _VideoSink:
    """An mp4v VideoWriter opened on the first frame, written to a temporary file."""

    def __init__(self, path: Path, fps: float):
        self.path, self.fps, self.writer = path, fps, None
        self.tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix or '.mp4'}")

    def write(self, frame: np.ndarray) -> None:
        """Append one BGR frame."""
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            size = (frame.shape[1], frame.shape[0])
            self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, size)
            if not self.writer.isOpened():
                raise OSError(f"{self.path}: cannot open a video writer (mp4v)")
        self.writer.write(frame)

    def close(self) -> str | None:
        """Finish the file and move it into place; None if no frame was written."""
        if self.writer is None:
            return None
        self.writer.release()
        self.writer = None
        os.replace(self.tmp, self.path)
        return str(self.path)

    def discard(self) -> None:
        """Release the writer and remove the temporary file, if any is left (after an error)."""
        if self.writer is not None:
            self.writer.release()
        self.tmp.unlink(missing_ok=True)


