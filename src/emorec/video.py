"""Emotions in video files and webcam streams: the people in them, per-frame CSV rows, an annotated video.

Every face gets a track id that stays with the same person across frames
(emorec.tracking); smoothing runs per track, and each track is summarised
(`emorec.results.Track`). `analyze_video` is the Python entry.

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
from array import array
from contextlib import ExitStack, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from emorec.config import PredictConfig
from emorec.draw import annotate
from emorec.files import InputFileError, atomic_path, check_targets, output_trailer, stat_regular
from emorec.pipeline import in_background, model_threads, ordered_map
from emorec.recognizer import Recognizer
from emorec.results import FaceResult, Track, VideoAnalysis, VideoSummary, csv_cells, rows
from emorec.sources import webcam_index
from emorec.tracking import FaceTracker, face_descriptors

MAX_CAMERA_INDEX = 1023
WHOLE_FRAME_BOX = (0, 0, 100, 100)  # what the tracker sees of a face classified from the whole frame: one fixed box


def predict_video(
    source: str | Path | int,
    cfg: PredictConfig,
    csv_path: str | Path,
    annotated_path: str | Path | None = None,
    recognizer: Recognizer | None = None,
    progress: bool = True,
) -> VideoSummary:
    """Classify every cfg.stride-th frame of a video file or webcam (int index), following each person.

    Writes one CSV row per face per classified frame (time_s, frame, face,
    track, x, y, w, h, one column per class, emotion; a frame without faces
    gets one row with empty face fields) and, with annotated_path, an mp4v
    video of every frame with the latest boxes drawn, labelled with their
    track ids. face numbers a frame's faces left to right; track is the
    person's id, kept across frames (see emorec.tracking; a face lost for up
    to cfg.track_buffer seconds keeps its id). With cfg.smooth > 0 each
    track's probabilities are smoothed across classified frames:
    p = smooth * previous + (1 - smooth) * new. The summary lists the tracks.
    Existing files are refused unless cfg.exist_ok, and even then unless
    emorec wrote them (`files.check_targets`). Ctrl-C stops a webcam and
    keeps what was recorded; on a video file it removes the partial outputs
    and is raised again.
    """
    return _analyze(source, cfg, csv_path, annotated_path, recognizer, progress, keep_rows=False).summary


def analyze_video(
    path: str | Path | int,
    model: str | Path | None = None,
    *,
    detector: str = "auto",
    stride: int = 1,
    smooth: float = 0.0,
    track_buffer: float = 2.0,
    csv_path: str | Path | None = None,
    annotated_path: str | Path | None = None,
    exist_ok: bool = False,
    recognizer: Recognizer | None = None,
    progress: bool = False,
) -> VideoAnalysis:
    """The people in a video and their emotions over time, as a `VideoAnalysis`.

        >>> video = analyze_video("meeting.mp4", smooth=0.5)
        >>> [(t.id, t.dominant, t.first_time, t.last_time) for t in video.tracks]
        >>> video.to_pandas()                         # one row per face per frame

    model is a model file or bundled model's name (None: the default), or
    pass a loaded recognizer. stride, smooth and track_buffer work as in
    `emorec predict` (see predict_video); csv_path and annotated_path also
    write the per-frame CSV and the annotated video.
    """
    cfg = PredictConfig(sources=[str(path)], model=None if model is None else str(model), detector=detector,
                        stride=stride, smooth=smooth, track_buffer=track_buffer, exist_ok=exist_ok)
    return _analyze(path, cfg, csv_path, annotated_path, recognizer, progress, keep_rows=True)


def _analyze(source, cfg: PredictConfig, csv_path, annotated_path, recognizer: Recognizer | None, progress: bool,
             keep_rows: bool) -> VideoAnalysis:
    targets = [Path(path) for path in (csv_path, annotated_path) if path is not None]
    check_targets(targets, cfg.exist_ok, inputs=[source] if webcam_index(source) is None else [])
    recognizer = recognizer or Recognizer.from_config(cfg, threads=model_threads())
    capture = open_capture(source)
    summary = VideoSummary(str(source), fps=capture_fps(capture), csv_path=None if csv_path is None else str(csv_path))
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if webcam_index(source) is None else 0
    people = VideoTracks(summary.fps, recognizer.class_names, cfg.track_buffer, cfg.smooth)
    kept: list[dict] = []
    writer = _VideoSink(Path(annotated_path), summary.fps) if annotated_path else None
    try:
        frame_csv = FrameCsv(Path(csv_path), recognizer.class_names) if csv_path is not None else nullcontext()
        with frame_csv, _frames_bar(total, progress) as bar:

            def record(frame_rows: list[dict]) -> None:
                if csv_path is not None:
                    frame_csv.write_rows(frame_rows)
                if keep_rows:
                    kept.extend(frame_rows)

            try:
                _video_loop(capture, recognizer, cfg, summary, people, record, writer, bar)
            except KeyboardInterrupt:
                if webcam_index(source) is None:
                    raise
        if writer is not None:
            summary.annotated_path = writer.close()
    finally:
        capture.release()
        if writer is not None:
            writer.discard()
    summary.tracks = people.tracks()
    return VideoAnalysis(str(source), summary.fps, summary.frames / summary.fps, recognizer.class_names,
                         summary.tracks, summary, kept)


def _frames_bar(total: int, enabled: bool):
    from emorec.progress import bar

    return bar(total=total if total > 0 else None, desc="frames", unit="frame", enabled=enabled)


def _video_loop(capture, recognizer: Recognizer, cfg: PredictConfig, summary: VideoSummary, people: "VideoTracks",
                record, writer, bar) -> None:
    faces: list[FaceResult] = []

    def prepare(indexed_frame):
        index, frame = indexed_frame
        if index % cfg.stride:
            return None
        prepared = recognizer.prepare(frame)
        return prepared, face_descriptors(prepared.crops)  # descriptors here, in the worker threads

    frames = in_background(read_frames(capture))
    stream = ordered_map(prepare, frames)
    try:
        for (index, frame), outcome in stream:
            if isinstance(outcome, Exception):
                raise outcome
            if outcome is not None:
                prepared, descriptors = outcome
                faces = people.follow(index, recognizer.classify_prepared([prepared])[0], descriptors, frame)
                record(rows(faces, recognizer.class_names, time_s=index / summary.fps, frame=index))
                count_faces(summary, faces)
            if writer is not None:
                writer.write(annotate(frame, faces))
            summary.frames += 1
            bar.update()
    finally:  # stop the reader and the workers now, also on Ctrl-C
        stream.close()
        frames.close()


def open_capture(source: str | Path | int) -> cv2.VideoCapture:
    """An opened cv2.VideoCapture for a file path or webcam index; InputFileError if it cannot open."""
    index = webcam_index(source)
    if index is not None and index > MAX_CAMERA_INDEX:
        raise InputFileError(f"{source}: no such camera (camera indexes are 0 to {MAX_CAMERA_INDEX})")
    if index is None:
        stat_regular(source)  # a FIFO or device named .mp4 would block OpenCV's reader forever
    capture = cv2.VideoCapture(index if index is not None else str(source))
    if not capture.isOpened():
        capture.release()
        raise InputFileError(f"{source}: cannot open video (unsupported format or no such camera)")
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
    """Exponentially smooth probabilities per track (per face index for faces without a track id).

    Updates `previous` in place. A tracked person keeps their smoothing state
    while out of sight; an untracked face that left the frame starts afresh
    when one reappears.
    """
    if alpha <= 0:
        return faces
    smoothed = []
    for i, face in enumerate(faces):
        key = face.track if face.track is not None else -1 - i  # never mix a person with a face index
        new = np.array(list(face.probabilities.values()), np.float64)
        p = alpha * previous[key] + (1 - alpha) * new if key in previous else new
        previous[key] = p
        smoothed.append(replace(face, probabilities=dict(zip(face.probabilities, map(float, p)))))
    for key in [key for key in previous if key < -len(faces)]:
        del previous[key]
    return smoothed


class VideoTracks:
    """The people of one video: track ids, per-track smoothing and per-track records, frame by frame.

    Used by the local engine and, over rows in frame order, by the Ray
    engine's driver, so both give the same tracks.
    """

    def __init__(self, fps: float, class_names: list[str], buffer_seconds: float = 2.0, smooth: float = 0.0):
        self.fps, self.class_names, self.smooth = fps, list(class_names), smooth
        self.tracker = FaceTracker(fps, buffer_seconds)
        self.previous: dict[int, np.ndarray] = {}
        # Compact per-track records (8 and 4 bytes a value): an hour of video stays a few MB.
        self.times: dict[int, array] = {}
        self.probabilities: dict[int, array] = {}
        self.thumbnails: dict[int, tuple[float, np.ndarray]] = {}  # (detector score, crop) per track

    def follow(self, frame_index: int, faces: list[FaceResult], descriptors: np.ndarray,
               frame: np.ndarray | None = None) -> list[FaceResult]:
        """The faces of one classified frame with their track ids set and smoothed per track.

        descriptors are `emorec.tracking.face_descriptors` of the faces' crops;
        frame (BGR), when given, supplies the tracks' thumbnails.
        """
        boxes = np.array([face.box if face.box is not None else WHOLE_FRAME_BOX for face in faces]).reshape(-1, 4)
        scores = np.array([face.score if face.score is not None else 1.0 for face in faces])
        ids = self.tracker.update(frame_index, boxes, descriptors, scores)
        faces = smooth_faces([replace(face, track=i) for face, i in zip(faces, ids)], self.previous, self.smooth)
        for face in faces:
            self.times.setdefault(face.track, array("d")).append(frame_index / self.fps)
            self.probabilities.setdefault(face.track, array("f")).extend(face.probabilities[c] for c in self.class_names)
            if frame is not None:
                self._keep_thumbnail(face, frame)
        return faces

    def _keep_thumbnail(self, face: FaceResult, frame: np.ndarray) -> None:
        score = face.score if face.score is not None else 0.0
        if face.track in self.thumbnails and self.thumbnails[face.track][0] >= score:
            return
        if face.box is None:
            crop = frame
        else:
            x, y, w, h = face.box
            crop = frame[max(y, 0) : y + h, max(x, 0) : x + w]
        if crop.size:
            self.thumbnails[face.track] = (score, crop.copy())

    def tracks(self) -> list[Track]:
        """Every track so far, by id."""
        return [Track(track_id, self.class_names, np.array(self.times[track_id]),
                      np.array(self.probabilities[track_id], np.float64).reshape(-1, len(self.class_names)),
                      self.thumbnails.get(track_id, (0.0, None))[1]) for track_id in sorted(self.times)]


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
        self.columns = ["time_s", "frame", "face", "track", "x", "y", "w", "h", *self.class_names, "emotion"]
        self.writer.writerow(self.columns)
        return self

    def write(self, time_s: float, frame: int, faces: list[FaceResult]) -> None:
        """One row per face; one row with empty face fields when there is none."""
        self.write_rows(rows(faces, self.class_names, time_s=float(time_s), frame=frame))

    def write_rows(self, frame_rows: list[dict]) -> None:
        """Rows in the results.rows form, written in this file's columns."""
        for row in frame_rows:
            self.writer.writerow(csv_cells(row, self.columns))

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
        """Finish the file, mark it as emorec's output and move it into place; None if no frame was written."""
        if self.writer is None:
            return None
        self.writer.release()
        self.writer = None
        with open(self.tmp, "ab") as handle:
            handle.write(output_trailer(self.tmp.suffix))
        os.replace(self.tmp, self.path)
        return str(self.path)

    def discard(self) -> None:
        """Release the writer and remove the temporary file, if any is left (after an error)."""
        if self.writer is not None:
            self.writer.release()
        self.tmp.unlink(missing_ok=True)


