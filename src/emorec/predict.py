"""Recognize emotions in photos, folders, videos and webcam streams.

`Recognizer` is the library entry (in the spirit of the `fer` package):

    >>> rec = Recognizer()                      # bundled model, automatic detector
    >>> rec.predict("photo.jpg")                # -> [FaceResult(box=(x, y, w, h), ...)]

`run_predict(cfg)` is what `emorec predict` calls: images and folders give one
`ImageResult` per file (a bad file is an error result, never a crash), and
video files or webcam indexes go through `predict_video`, which writes a
per-frame CSV. Decoding, classifying, drawing and writing are kept in separate
small functions so each can be used and tested on its own.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import cv2
import numpy as np

from emorec.config import PredictConfig
from emorec.data import IMAGE_EXTENSIONS, ImageReadError, read_image, to_model_input
from emorec.files import atomic_write_bytes

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
CHUNK = 16  # images decoded and held before one model call in predict_images
BOX_COLOR = (0, 200, 0)  # BGR


# ----------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------


@dataclass
class FaceResult:
    """One classified face: where it is and what the model thinks of it.

    box is (x, y, w, h) in image pixels, or None when the whole image was
    classified as one face; score is the detector's confidence (None then).
    """

    box: tuple[int, int, int, int] | None
    probabilities: dict[str, float]
    score: float | None = None

    @property
    def emotion(self) -> str:
        """The most probable class."""
        return max(self.probabilities, key=self.probabilities.get)

    @property
    def confidence(self) -> float:
        """Probability of the most probable class."""
        return self.probabilities[self.emotion]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, ready for JSON."""
        return {
            "box": list(self.box) if self.box is not None else None,
            "emotion": self.emotion,
            "confidence": round(self.confidence, 6),
            "probabilities": {name: round(p, 6) for name, p in self.probabilities.items()},
            "score": self.score,
        }


@dataclass
class VideoSummary:
    """What `predict_video` did: frames read and classified, faces, output files."""

    source: str
    frames: int = 0
    classified_frames: int = 0
    face_rows: int = 0
    fps: float = 0.0
    csv_path: str | None = None
    annotated_path: str | None = None
    emotions: dict[str, int] = field(default_factory=dict)  # face rows per top emotion

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, ready for JSON."""
        return dict(self.__dict__)


@dataclass
class ImageResult:
    """The outcome for one source: its faces, or why it failed.

    A photo in which no face was found is not an error: faces is empty and
    no_face is True. Video sources carry a VideoSummary instead of faces.
    """

    source: str
    faces: list[FaceResult] = field(default_factory=list)
    error: str | None = None
    video: VideoSummary | None = None

    @property
    def no_face(self) -> bool:
        """True when the image was read fine but holds no face."""
        return self.error is None and self.video is None and not self.faces

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, ready for JSON."""
        out = {
            "source": self.source,
            "faces": [face.to_dict() for face in self.faces],
            "no_face": self.no_face,
            "error": self.error,
        }
        if self.video is not None:
            out["video"] = self.video.to_dict()
        return out


# ----------------------------------------------------------------------------
# Recognizer
# ----------------------------------------------------------------------------


class Recognizer:
    """Find faces and classify their emotion with one loaded model.

    model: a `.keras` file saved by emorec, or None for the bundled model.
    detector: a name from `emorec.faces.DETECTORS` ("auto" picks the best available).
    detect: False classifies every input as one already-cropped face.
    tta: test-time augmentation: False/"none", True/"flip" (mirror) or "multi" (12 views).

    The whole image is classified as one face when detect is False, and
    also, automatically, when the detector finds no face in a small image
    (both sides at most twice the model input, e.g. <= 96 px for a 48 px
    model): such images are almost always face crops. Larger images with no
    face give no result. YuNet does find the face in most FER2013-style
    crops (895 of 956 val images); the re-crop then frames it like the
    original (on 350 val images: 67.1% accuracy re-cropped, 66.0% whole), so
    detect=False is only needed for crops the detector misses.
    """

    def __init__(self, model: str | Path | None = None, detector: str = "auto", detect: bool = True, tta: bool | str = False):
        from emorec.model import load_model  # imports Keras: keep `import emorec.predict` light

        self.model, self.info = load_model(model)
        self.tta = tta
        self.detect = detect
        self.detector = _create_detector(detector) if detect else None

    @property
    def class_names(self) -> list[str]:
        """The model's classes, in output order."""
        return list(self.info.class_names)

    def predict(self, image: str | Path | np.ndarray, rgb: bool = False) -> list[FaceResult]:
        """Faces in one image (a path or an array), sorted left to right.

        Arrays are BGR like OpenCV's by default; pass rgb=True for RGB(A)
        arrays (PIL, matplotlib). 2-D grayscale arrays are accepted too.
        Raises ImageReadError for an unreadable file.
        """
        return self.predict_batch([image], rgb=rgb)[0]

    def predict_batch(self, images: Sequence[str | Path | np.ndarray], rgb: bool = False) -> list[list[FaceResult]]:
        """`predict` for many images, classifying all their faces in one model call."""
        prepared = [self.prepare(to_bgr(image, rgb)) for image in images]
        return self.classify_prepared(prepared)

    def locate(self, image_bgr: np.ndarray) -> list[Any]:
        """Detected faces (emorec.faces.Face), or [None] meaning "the whole image"."""
        if self.detector is None:
            return [None]
        faces = self.detector.detect(image_bgr)
        if not faces and max(image_bgr.shape[:2]) <= 2 * self.info.image_size:
            return [None]
        return list(faces)

    def crop(self, image_bgr: np.ndarray, face: Any) -> np.ndarray:
        """The model input (size, size, channels) for one face, or the whole image when face is None."""
        size, gray = self.info.image_size, self.info.color_mode == "grayscale"
        if face is None:
            return to_model_input(image_bgr, size, 1 if gray else 3)
        from emorec.faces import crop_face

        return crop_face(image_bgr, face, size=size, grayscale=gray)

    def prepare(self, image_bgr: np.ndarray) -> tuple[list[Any], np.ndarray]:
        """Locate the faces of one BGR image and crop them: (faces, crops (N, H, W, C))."""
        faces = self.locate(image_bgr)
        crops = [self.crop(image_bgr, face) for face in faces]
        return faces, np.stack(crops) if crops else np.zeros((0, *self.info.input_shape), np.uint8)

    def classify(self, crops: np.ndarray) -> np.ndarray:
        """Probabilities (N, num_classes) for a stack of model-sized crops."""
        if len(crops) == 0:
            return np.zeros((0, len(self.class_names)), np.float32)
        from emorec.model import predict_probabilities

        return predict_probabilities(self.model, crops, tta=self.tta)

    def classify_prepared(self, prepared: list[tuple[list[Any], np.ndarray]]) -> list[list[FaceResult]]:
        """Classify the crops of many `prepare` results in one model call."""
        probs = self.classify(np.concatenate([crops for _, crops in prepared]) if prepared else np.zeros(0))
        results, start = [], 0
        for faces, _ in prepared:
            results.append([self._face_result(face, p) for face, p in zip(faces, probs[start : start + len(faces)])])
            start += len(faces)
        return results

    def _face_result(self, face: Any, probs: np.ndarray) -> FaceResult:
        probabilities = {name: float(p) for name, p in zip(self.class_names, probs)}
        if face is None:
            return FaceResult(None, probabilities, None)
        box = tuple(int(v) for v in face.box)
        return FaceResult(box, probabilities, float(face.score) if face.score is not None else None)


def _create_detector(name: str):
    from emorec.faces import create_detector

    return create_detector(name)


def to_bgr(image: str | Path | np.ndarray, rgb: bool = False) -> np.ndarray:
    """An 8-bit BGR array from a path or an array (BGR by default; rgb=True for RGB; 2-D = gray)."""
    if isinstance(image, (str, Path)):
        return read_image(image)
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = _to_uint8(array)
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 1):
        return cv2.cvtColor(array.reshape(array.shape[:2]), cv2.COLOR_GRAY2BGR)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"expected an image array (H, W), (H, W, 3) or (H, W, 4), got shape {array.shape}")
    if array.shape[2] == 4:
        return cv2.cvtColor(array, cv2.COLOR_RGBA2BGR if rgb else cv2.COLOR_BGRA2BGR)
    return cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if rgb else np.ascontiguousarray(array)


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint16:
        return (array / 257).round().astype(np.uint8)
    array = array.astype(np.float32)
    if array.size and array.max() <= 1.0:  # floats in [0, 1] (skimage, matplotlib)
        array = array * 255
    return np.clip(array.round(), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------


def iter_sources(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Image and video files: folders expanded recursively by extension, explicit files kept as given.

    Hidden files and folders inside a folder are skipped; a missing explicit
    path is kept so that it is reported as an error result.
    """
    for path, _ in _expand(paths):
        yield path


def _expand(paths: Iterable[str | Path]) -> list[tuple[Path, Path]]:
    """(file, output name) pairs; the name keeps the path below a folder source."""
    pairs = []
    for source in map(Path, paths):
        if not source.is_dir():
            pairs.append((source, Path(source.name)))
            continue
        for path in sorted(source.rglob("*")):
            relative = path.relative_to(source)
            if path.is_file() and _is_media(path) and not any(p.startswith(".") for p in relative.parts):
                pairs.append((path, relative))
    return pairs


def _is_media(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS


def is_video(path: str | Path) -> bool:
    """True for a file name with a video extension."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def webcam_index(source: str | int) -> int | None:
    """The webcam index a source names ("0", 1), or None for a path."""
    if isinstance(source, int):
        return source
    if isinstance(source, Path):
        return None
    return int(source) if source.isdigit() and not Path(source).exists() else None


# ----------------------------------------------------------------------------
# Photos and folders
# ----------------------------------------------------------------------------


def predict_images(cfg: PredictConfig, progress: bool = True, recognizer: Recognizer | None = None) -> list[ImageResult]:
    """One ImageResult per image in cfg.sources (folders expanded; video files skipped).

    A file that cannot be read gives a result whose error names the file; the
    batch always goes on. With cfg.save_annotated, annotated copies are
    written there keeping the file names (and the sub-folders below a folder
    source); FileExistsError is raised before any work if one would replace
    an existing file and cfg.exist_ok is False.
    """
    pairs = [(path, name) for path, name in _expand(cfg.sources) if not is_video(path)]
    out_dir = Path(cfg.save_annotated) if cfg.save_annotated else None
    if out_dir is not None:
        check_targets([out_dir / name for _, name in pairs], cfg.exist_ok)
    recognizer = recognizer or recognizer_from(cfg)
    results = []
    bar = _progress_bar(len(pairs), "photos", progress and len(pairs) > 1)
    for start in range(0, len(pairs), CHUNK):
        chunk = pairs[start : start + CHUNK]
        results += _predict_chunk(recognizer, chunk, out_dir, cfg.exist_ok, bar)
    if bar is not None:
        bar.close()
    return results


def recognizer_from(cfg: PredictConfig) -> Recognizer:
    """A Recognizer with the model, detector and options of cfg."""
    return Recognizer(cfg.model, detector=cfg.detector, detect=cfg.detect, tta=cfg.tta)


def _predict_chunk(recognizer: Recognizer, chunk, out_dir: Path | None, exist_ok: bool, bar) -> list[ImageResult]:
    images, prepared, errors = [], [], {}
    for path, _ in chunk:
        try:
            image = read_image(path)
            prepared.append(recognizer.prepare(image))
            images.append(image if out_dir is not None else None)
        except ImageReadError as exc:
            errors[path] = str(exc)
        except (ValueError, cv2.error) as exc:  # decoded but unusable: report, don't stop the batch
            errors[path] = f"{path}: " + " ".join(str(exc).split())
        if bar is not None:
            bar.update()
    classified = iter(zip(images, recognizer.classify_prepared(prepared)))
    results = []
    for path, name in chunk:
        if path in errors:
            results.append(ImageResult(str(path), error=errors[path]))
            continue
        image, faces = next(classified)
        if out_dir is not None:
            save_annotated(image, faces, out_dir / name, exist_ok=exist_ok)
        results.append(ImageResult(str(path), faces))
    return results


def _progress_bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total or None, desc=desc, unit="img" if desc == "photos" else "frame", leave=False)


# ----------------------------------------------------------------------------
# Annotated output
# ----------------------------------------------------------------------------


def annotate(image_bgr: np.ndarray, faces: Sequence[FaceResult]) -> np.ndarray:
    """A copy of the image with a box and an "emotion 87%" label per face.

    A face classified from the whole image gets its label in the top-left
    corner and no box.
    """
    out = image_bgr.copy()
    scale = max(0.35, max(out.shape[:2]) / 900)
    thickness = max(1, round(scale * 2))
    for face in faces:
        label = f"{face.emotion} {face.confidence:.0%}"
        if face.box is None:
            _draw_label(out, label, (0, 0), scale, thickness)
            continue
        x, y, w, h = face.box
        cv2.rectangle(out, (x, y), (x + w, y + h), BOX_COLOR, thickness)
        _draw_label(out, label, (x, y), scale, thickness)
    return out


def _draw_label(image: np.ndarray, label: str, corner: tuple[int, int], scale: float, thickness: int) -> None:
    (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    if tw > image.shape[1]:  # tiny images (48 px crops): shrink the text to fit
        scale *= image.shape[1] / tw
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    x = min(max(corner[0], 0), max(image.shape[1] - tw, 0))
    # Above the box when there is room, else inside its top edge.
    y = corner[1] - base - 2 if corner[1] - th - base - 2 >= 0 else max(corner[1], 0) + th + 2
    y = min(y, image.shape[0] - base)
    cv2.rectangle(image, (x, y - th - 2), (x + tw, y + base), BOX_COLOR, cv2.FILLED)
    cv2.putText(image, label, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness, cv2.LINE_AA)


def check_targets(paths: Sequence[Path], exist_ok: bool) -> None:
    """Raise FileExistsError if outputs would replace files (unless exist_ok) or each other."""
    seen = set()
    for path in paths:
        if path in seen:
            raise FileExistsError(f"{path}: two inputs would write the same annotated file")
        seen.add(path)
        if path.exists() and not exist_ok:
            raise FileExistsError(f"{path}: already exists; refusing to overwrite it (use --exist-ok to replace)")


def save_annotated(image_bgr: np.ndarray, faces: Sequence[FaceResult], path: str | Path, exist_ok: bool = False) -> Path:
    """Write `annotate(image_bgr, faces)` to path atomically; never replaces a file unless exist_ok."""
    path = Path(path)
    check_targets([path], exist_ok)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if path.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp") else ".png"
    ok, encoded = cv2.imencode(suffix, annotate(image_bgr, faces))
    if not ok:
        raise OSError(f"{path}: could not encode the annotated image")
    atomic_write_bytes(path, encoded.tobytes())
    return path


# ----------------------------------------------------------------------------
# Video and webcam
# ----------------------------------------------------------------------------


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
    p = smooth * previous + (1 - smooth) * new. Outputs are written to
    temporary files and moved into place at the end (also after Ctrl-C,
    which stops a webcam); existing files are refused unless cfg.exist_ok.
    """
    targets = [Path(csv_path)] + ([Path(annotated_path)] if annotated_path else [])
    check_targets(targets, cfg.exist_ok)
    recognizer = recognizer or recognizer_from(cfg)
    capture = open_capture(source)
    fps = _capture_fps(capture)
    summary = VideoSummary(str(source), fps=fps, csv_path=str(csv_path))
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if webcam_index(source) is None else 0
    bar = _progress_bar(max(total, 0), "frames", progress)
    writer = _VideoSink(Path(annotated_path), fps) if annotated_path else None
    try:
        with _CsvSink(Path(csv_path), recognizer.class_names) as rows:
            _video_loop(capture, recognizer, cfg, summary, rows, writer, bar)
        if writer is not None:
            summary.annotated_path = writer.close()
    finally:
        capture.release()
        if writer is not None:
            writer.discard()
        if bar is not None:
            bar.close()
    return summary


def _video_loop(capture, recognizer: Recognizer, cfg: PredictConfig, summary: VideoSummary, rows, writer, bar) -> None:
    faces: list[FaceResult] = []
    previous: dict[int, np.ndarray] = {}
    try:
        for index, frame in read_frames(capture):
            if index % cfg.stride == 0:
                faces = smooth_faces(recognizer.predict(frame), previous, cfg.smooth)
                rows.write(index / summary.fps, index, faces)
                _count(summary, faces)
            if writer is not None:
                writer.write(annotate(frame, faces))
            summary.frames += 1
            if bar is not None:
                bar.update()
    except KeyboardInterrupt:  # stopping a webcam: keep what was recorded
        pass


def open_capture(source: str | Path | int) -> cv2.VideoCapture:
    """An opened cv2.VideoCapture for a file path or webcam index; ValueError if it cannot open."""
    index = webcam_index(source)
    if index is None and not Path(source).is_file():
        raise ValueError(f"{source}: no such video file")
    capture = cv2.VideoCapture(index if index is not None else str(source))
    if not capture.isOpened():
        capture.release()
        raise ValueError(f"{source}: cannot open video (unsupported format or no such camera)")
    return capture


def _capture_fps(capture: cv2.VideoCapture) -> float:
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


def _count(summary: VideoSummary, faces: list[FaceResult]) -> None:
    summary.classified_frames += 1
    summary.face_rows += len(faces)
    for face in faces:
        summary.emotions[face.emotion] = summary.emotions.get(face.emotion, 0) + 1


class _CsvSink:
    """Per-frame CSV rows, written to a temporary file and moved into place on exit."""

    def __init__(self, path: Path, class_names: list[str]):
        self.path, self.class_names = path, class_names
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.tmp, "w", newline="")
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

    def __exit__(self, exc_type, *exc) -> None:
        self.handle.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        self.tmp.unlink(missing_ok=True)


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


# ----------------------------------------------------------------------------
# The `emorec predict` entry
# ----------------------------------------------------------------------------


def run_predict(cfg: PredictConfig, progress: bool = True) -> list[ImageResult]:
    """Predict everything in cfg.sources with one loaded model.

    Images and folders: one ImageResult per image (see predict_images).
    Video files and webcam indexes ("0"): `predict_video` writes
    `<stem>.csv` (webcam: `webcam<N>.csv`) into cfg.save_annotated when set,
    else into the current directory, never next to the input (which may be
    read-only); the annotated video `<stem>.mp4` is written only into
    cfg.save_annotated. Each video gives an ImageResult with `video` set, or
    with error set if it could not be opened or its outputs already exist.
    A folder without images or videos gives an ImageResult with error set.
    """
    recognizer = recognizer_from(cfg)
    images = [s for s in cfg.sources if webcam_index(s) is None and not is_video(s)]
    videos = [s for s in cfg.sources if webcam_index(s) is not None or is_video(s)]
    folders = {s: list(iter_sources([s])) for s in images if Path(s).is_dir()}  # each folder walked once here
    videos += [str(p) for files in folders.values() for p in files if is_video(p)]
    results = [ImageResult(str(s), error=f"{s}: no images or videos in this folder") for s, files in folders.items()
               if not files]
    if images:
        image_cfg = PredictConfig(**{**cfg.__dict__, "sources": images})
        results += predict_images(image_cfg, progress, recognizer)
    for source in videos:
        results.append(_run_video(source, cfg, recognizer, progress))
    return results


def video_outputs(source: str | Path, cfg: PredictConfig) -> tuple[Path, Path | None]:
    """Where run_predict writes the CSV and (optionally) the annotated video of a source."""
    index = webcam_index(source)
    stem = f"webcam{index}" if index is not None else Path(source).stem
    folder = Path(cfg.save_annotated) if cfg.save_annotated else Path.cwd()
    return folder / f"{stem}.csv", (folder / f"{stem}.mp4" if cfg.save_annotated else None)


def _run_video(source: str, cfg: PredictConfig, recognizer: Recognizer, progress: bool) -> ImageResult:
    csv_path, annotated_path = video_outputs(source, cfg)
    index = webcam_index(source)
    try:
        summary = predict_video(index if index is not None else source, cfg, csv_path, annotated_path, recognizer, progress)
    except (ValueError, FileExistsError, OSError) as exc:
        return ImageResult(str(source), error=str(exc))
    return ImageResult(str(source), video=summary)


# ----------------------------------------------------------------------------
# Output helpers
# ----------------------------------------------------------------------------


def results_to_json(results: Sequence[ImageResult]) -> str:
    """All results as a JSON list."""
    return json.dumps([r.to_dict() for r in results], indent=2)


def write_csv(results: Sequence[ImageResult], path: str | Path, class_names: Sequence[str] | None = None) -> Path:
    """One row per face: source, face (1-based), x, y, w, h, one column per class, emotion, error.

    An image without faces (or with an error) gets one row with empty face
    fields; video sources are left out (their per-frame CSV is separate).
    The file is written atomically. class_names (e.g. Recognizer.class_names)
    fixes the class columns even when no face was found anywhere.
    """
    classes = list(class_names) if class_names is not None else _class_names(results)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["source", "face", "x", "y", "w", "h", *classes, "emotion", "error"])
    for result in results:
        if result.video is None:
            writer.writerows(_csv_rows(result, classes))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue().encode())
    return path


def _class_names(results: Sequence[ImageResult]) -> list[str]:
    for result in results:
        if result.faces:
            return list(result.faces[0].probabilities)
    return []


def _csv_rows(result: ImageResult, classes: list[str]) -> list[list]:
    if not result.faces:
        return [[result.source, "", "", "", "", "", *[""] * len(classes), "", result.error or ""]]
    rows = []
    for i, face in enumerate(result.faces, 1):
        box = list(face.box) if face.box is not None else [""] * 4
        probs = [f"{face.probabilities.get(c, 0.0):.4f}" for c in classes]
        rows.append([result.source, i, *box, *probs, face.emotion, ""])
    return rows


def format_results(results: Sequence[ImageResult]) -> str:
    """Human-readable lines: `photo.jpg  face 1 (x,y,w,h)  happy 0.87`, `no face found`, `error: ...`."""
    lines = []
    for result in results:
        if result.error is not None:
            reason = result.error.removeprefix(f"{result.source}: ")  # errors name their file; say it once
            lines.append(f"{result.source}  error: {reason}")
        elif result.video is not None:
            lines.append(_video_line(result.source, result.video))
        elif not result.faces:
            lines.append(f"{result.source}  no face found")
        for i, face in enumerate(result.faces, 1):
            where = "(whole image)" if face.box is None else "({},{},{},{})".format(*face.box)
            lines.append(f"{result.source}  face {i} {where}  {face.emotion} {face.confidence:.2f}")
    return "\n".join(lines)


def _video_line(source: str, video: VideoSummary) -> str:
    top = max(video.emotions, key=video.emotions.get) if video.emotions else "no face"
    out = f"{source}  video: {video.frames} frames, {video.classified_frames} classified, {video.face_rows} face rows, mostly {top}; csv {video.csv_path}"
    return out + (f"; annotated {video.annotated_path}" if video.annotated_path else "")
