"""One source loader: what `predict`, `explain`, video and the Ray engine make of their inputs.

A source is an image or video file, a folder (walked recursively for image and
video files, hidden entries skipped, sub-folders kept in each file's output
name) or a webcam index ("0"). Every command walks its sources here, so they
all agree on what a folder holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

from emorec.images import IMAGE_EXTENSIONS
from emorec.results import ImageResult

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


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


def iter_sources(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Image and video files: folders expanded recursively by extension, explicit files kept as given.

    Hidden files and folders inside a folder are skipped; a missing explicit
    path is kept so that it is reported as an error result.
    """
    for path, _ in expand_sources(paths):
        yield path


def expand_sources(paths: Iterable[str | Path]) -> list[tuple[Path, Path]]:
    """(file, output name) pairs of iter_sources; the name keeps the path below a folder source."""
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


def plan_sources(sources: list[str]) -> tuple[list[ImageResult], list[str], list[tuple[str, Path | None]]]:
    """How run_predict splits its sources: error results for folders without media, the photo sources
    (files and folders, expanded by predict_images) and the (video or webcam, output name) pairs."""
    images = [s for s in sources if webcam_index(s) is None and not is_video(s)]
    videos = [(s, None) for s in sources if webcam_index(s) is not None or is_video(s)]
    folders = {s: expand_sources([s]) for s in images if Path(s).is_dir()}  # each folder walked once here
    videos += [(str(p), name) for pairs in folders.values() for p, name in pairs if is_video(p)]
    errors = [ImageResult(str(s), error=f"{s}: no images or videos in this folder") for s, files in folders.items()
              if not files]
    return errors, images, videos
