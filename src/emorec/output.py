"""How `emorec predict` shows and stores results: text lines, JSON and a per-face CSV.

All three read the same result objects (`emorec.results`), whose `to_dict()`
fixes the JSON shape; the HTTP service answers with the same dicts.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Sequence

from emorec.files import atomic_write_bytes
from emorec.results import ImageResult, VideoSummary, csv_cells, rows


def results_to_json(results: Sequence[ImageResult]) -> str:
    """All results as a JSON list."""
    return json.dumps([r.to_dict() for r in results], indent=2, allow_nan=False)  # strict JSON: no NaN


def write_csv(results: Sequence[ImageResult], path: str | Path, class_names: Sequence[str] | None = None) -> Path:
    """One row per face: source, face (1-based), x, y, w, h, one column per class, emotion, error.

    An image without faces (or with an error) gets one row with empty face
    fields; video sources are left out (their per-frame CSV is separate).
    The file is written atomically. class_names (e.g. Recognizer.class_names)
    fixes the class columns even when no face was found anywhere.
    """
    classes = list(class_names) if class_names is not None else _class_names(results)
    columns = ["source", "face", "x", "y", "w", "h", *classes, "emotion", "error"]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for result in results:
        if result.video is None:
            writer.writerows(csv_cells(row, columns) for row in rows(result.faces, classes, source=result.source,
                                                                     error=result.error))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue().encode())
    return path


def _class_names(results: Sequence[ImageResult]) -> list[str]:
    for result in results:
        if result.faces:
            return list(result.faces[0].probabilities)
    return []


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
    out = f"{source}  video: {video.frames} frames, {video.classified_frames} classified, {video.face_rows} face rows, {len(video.tracks)} tracked, mostly {top}; csv {video.csv_path}"
    return out + (f"; annotated {video.annotated_path}" if video.annotated_path else "")
