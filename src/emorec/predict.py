"""The predict stage: recognize emotions in every photo, folder and video a user names.

`run_predict(cfg)` is what `emorec predict` calls. Images and folders give
one `ImageResult` per file (a bad file is an error result, never a crash):
worker threads decode each photo and locate and crop its faces while the
main thread classifies the faces of many photos in one model call. Video
files and webcam indexes go through `emorec.video.predict_video`.

The parts live in their own modules and are re-exported here for
convenience: `Recognizer` (emorec.recognizer), the result types
(emorec.results), drawing (emorec.draw), video (emorec.video) and the
text/JSON/CSV formatters (emorec.output).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from emorec.config import PredictConfig
from emorec.images import ImageReadError, read_image
from emorec.draw import annotate, save_annotated
from emorec.files import check_targets
from emorec.output import format_results, results_to_json, write_csv
from emorec.pipeline import model_threads, ordered_map
from emorec.recognizer import WHOLE_IMAGE, Prepared, Recognizer, to_bgr
from emorec.report import photos_report, report_path, video_report, write_report
from emorec.results import FaceResult, ImageResult, VideoSummary
from emorec.sources import expand_sources, is_video, iter_sources, plan_sources, webcam_index
from emorec.video import predict_video, smooth_faces

__all__ = [
    "FaceResult", "ImageResult", "VideoSummary", "Recognizer", "WHOLE_IMAGE", "annotate", "save_annotated",
    "format_results", "results_to_json", "write_csv", "iter_sources", "predict_images", "predict_video",
    "run_predict", "smooth_faces", "to_bgr", "webcam_index", "is_video",
]

PHOTOS_REPORT = "photos"  # the report of the photos of a run: DIR/photos.html
# Faces of consecutive photos are classified together in one model call, up to
# these bounds (the photos wait decoded in memory when annotated copies are saved).
FACES_PER_CALL = 64
PHOTOS_PER_CALL = 16


# ----------------------------------------------------------------------------
# Photos and folders
# ----------------------------------------------------------------------------


def predict_images(cfg: PredictConfig, progress: bool = True, recognizer: Recognizer | None = None) -> list[ImageResult]:
    """One ImageResult per image in cfg.sources (folders expanded; video files skipped).

    A file that cannot be read gives a result whose error names the file; the
    batch always goes on. With cfg.save_annotated, annotated copies are
    written there keeping the file names (and the sub-folders below a folder
    source); FileExistsError or OutputPathError is raised before any work if
    one would replace an input, or an existing file without cfg.exist_ok or
    that emorec did not write (`files.check_targets`).
    """
    pairs = [(path, name) for path, name in expand_sources(cfg.sources) if not is_video(path)]
    out_dir = Path(cfg.save_annotated) if cfg.save_annotated else None
    if out_dir is not None:
        check_targets([out_dir / name for _, name in pairs], cfg.exist_ok, inputs=[path for path, _ in pairs])
    recognizer = recognizer or Recognizer.from_config(cfg, threads=model_threads())

    def read_and_prepare(position: int):
        image, prepared = read_photo(recognizer, pairs[position][0])
        return (image if out_dir is not None else None), prepared

    results: list[ImageResult | None] = [None] * len(pairs)
    waiting: list[tuple[int, object, Prepared]] = []  # (position, image or None, prepared)

    def classify_waiting() -> None:
        faces_per_photo = recognizer.classify_prepared([prepared for *_, prepared in waiting])
        for (position, image, _), faces in zip(waiting, faces_per_photo):
            path, name = pairs[position]
            if out_dir is not None:
                save_annotated(image, faces, out_dir / name, exist_ok=cfg.exist_ok)
            results[position] = ImageResult(str(path), faces)
        waiting.clear()

    with _photos_bar(len(pairs), progress) as bar:
        for position, outcome in ordered_map(read_and_prepare, range(len(pairs))):
            bar.update()
            if isinstance(outcome, Exception):
                results[position] = ImageResult(str(pairs[position][0]), error=error_line(pairs[position][0], outcome))
                continue
            waiting.append((position, *outcome))
            if len(waiting) >= PHOTOS_PER_CALL or sum(len(item[2].regions) for item in waiting) >= FACES_PER_CALL:
                classify_waiting()
        classify_waiting()
    return results


def read_photo(recognizer: Recognizer, path: Path) -> tuple[np.ndarray, Prepared]:
    """A photo decoded (smaller when over the pixel limit) and its faces located and cropped: safe in any worker."""
    image = read_image(path, reduce=True)
    return image, recognizer.prepare(image)


def error_line(path: Path, error: Exception) -> str:
    """The one-line reason a photo failed, naming the file once (other errors are raised again)."""
    if isinstance(error, ImageReadError):
        return str(error)
    if isinstance(error, (ValueError, cv2.error, OSError)):  # decoded but unusable: report, don't stop the batch
        return f"{path}: " + " ".join(str(error).split())
    raise error


def _photos_bar(total: int, enabled: bool):
    from emorec.progress import bar

    return bar(total=total, desc="photos", unit="image", enabled=enabled and total > 1)


# ----------------------------------------------------------------------------
# The `emorec predict` entry
# ----------------------------------------------------------------------------


def run_predict(cfg: PredictConfig, progress: bool = True, recognizer: Recognizer | None = None) -> list[ImageResult]:
    """Predict everything in cfg.sources with one loaded model.

    Images and folders: one ImageResult per image (see predict_images).
    Video files and webcam indexes ("0"): `predict_video` writes
    `<stem>.csv` (webcam: `webcam<N>.csv`) into cfg.save_annotated when set,
    else into the current directory, never next to the input (which may be
    read-only); the annotated video `<stem>.mp4` is written only into
    cfg.save_annotated. Each video gives an ImageResult with `video` set, or
    with error set if it could not be opened or its outputs already exist.
    A folder without images or videos gives an ImageResult with error set.
    With cfg.report, HTML pages go into that folder (see emorec.report):
    `photos.html` for all photos together and `<stem>.html` per video.
    """
    results, images, videos = plan_sources(cfg.sources)
    if cfg.report:
        check_targets(report_targets(cfg.report, images, videos), cfg.exist_ok)
    recognizer = recognizer or Recognizer.from_config(cfg, threads=model_threads())
    if images:
        image_cfg = PredictConfig(**{**cfg.__dict__, "sources": images})
        photos = predict_images(image_cfg, progress, recognizer)
        results += photos
        if cfg.report and photos:
            page = photos_report(photos, recognizer.class_names, _photos_title(images), model_name(recognizer))
            write_report(report_path(cfg.report, PHOTOS_REPORT), page, cfg.exist_ok)
    for source, name in videos:
        results.append(_run_video(source, name, cfg, recognizer, progress))
    return results


def planned_outputs(cfg: PredictConfig) -> tuple[list[Path], list[Path]]:
    """(every file run_predict would write, every file it would read) for cfg, to check the outputs before any work.

    The outputs are the annotated copies of the photos and each video's CSV
    and annotated video; the inputs are the photo and video files.
    """
    webcams = [source for source in cfg.sources if webcam_index(source) is not None]
    files = expand_sources([source for source in cfg.sources if webcam_index(source) is None])
    outputs = [path for source in webcams for path in video_outputs(source, cfg) if path is not None]
    for path, name in files:
        if is_video(path):
            outputs += [output for output in video_outputs(path, cfg, name) if output is not None]
        elif cfg.save_annotated:
            outputs.append(Path(cfg.save_annotated) / name)
    return outputs, [path for path, _ in files]


def report_targets(folder: str | Path, images: list[str], videos: list[tuple[str, Path | None]]) -> list[Path]:
    """The HTML pages run_predict writes into folder: photos.html when there are photos, one per video."""
    pages = [report_path(folder, PHOTOS_REPORT)] if images else []
    return pages + [report_path(folder, _output_stem(source, name)) for source, name in videos]


def model_name(recognizer: Recognizer) -> str:
    """The model file a recognizer runs, as reports name it."""
    path = recognizer.runtime.path
    return path.name if path is not None else ""


def _photos_title(images: list[str]) -> str:
    return images[0] if len(images) == 1 else f"{len(images)} photo sources"


def video_outputs(source: str | Path, cfg: PredictConfig, name: Path | None = None) -> tuple[Path, Path | None]:
    """Where run_predict writes the CSV and (optionally) the annotated video of a source.

    name is the video's path below a folder source, kept so that same-named
    videos of different sub-folders get outputs of their own.
    """
    stem = _output_stem(source, name)
    folder = Path(cfg.save_annotated) if cfg.save_annotated else Path.cwd()
    return folder / f"{stem}.csv", (folder / f"{stem}.mp4" if cfg.save_annotated else None)


def _output_stem(source: str | Path, name: Path | None) -> Path:
    index = webcam_index(source)
    return Path(f"webcam{index}") if index is not None else (name or Path(Path(source).name)).with_suffix("")


def _run_video(source: str, name: Path | None, cfg: PredictConfig, recognizer: Recognizer, progress: bool) -> ImageResult:
    csv_path, annotated_path = video_outputs(source, cfg, name)
    index = webcam_index(source)
    try:
        summary = predict_video(index if index is not None else source, cfg, csv_path, annotated_path, recognizer, progress)
    except (ValueError, FileExistsError, OSError) as exc:
        return ImageResult(str(source), error=str(exc))
    if cfg.report:
        page = video_report(source, summary.tracks, recognizer.class_names, summary.fps,
                            summary.frames / summary.fps, model_name(recognizer))
        write_report(report_path(cfg.report, _output_stem(source, name)), page, cfg.exist_ok)
    return ImageResult(str(source), video=summary)
