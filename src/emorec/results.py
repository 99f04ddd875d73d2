"""What recognition returns: typed results that print and serialise the same way everywhere.

`FaceResult` (one classified face), `ImageResult` (one photo, or the error
that stopped it, or a video's `VideoSummary`). Their `to_dict()` is the one
source of the JSON shape that `emorec predict --json` prints; `rows()` is the
one flat form (CSV files, Parquet, Ray), from which each writer picks its
columns (`csv_cells`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence


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
    def whole_image(self) -> bool:
        """True when the whole image was classified as one face (no detection box)."""
        return self.box is None

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


FACE_FIELDS = ("face", "x", "y", "w", "h", "score")  # the per-face fields of a row before the class columns


def rows(faces: Sequence[FaceResult], class_names: Sequence[str], **where: Any) -> list[dict[str, Any]]:
    """The flat rows of one photo or video frame: one per face, or one with empty face fields.

    Each row holds the `where` fields first (source, frame, time_s, error:
    whatever the caller names), then face (1-based, left to right), x, y, w,
    h (None for a whole-image face), score, one probability per class name,
    and emotion. Writers pick and order the columns they need.
    """
    if not faces:
        return [{**where, **dict.fromkeys(FACE_FIELDS), **dict.fromkeys(class_names), "emotion": None}]
    out = []
    for number, face in enumerate(faces, 1):
        box = dict(zip("xywh", face.box)) if face.box is not None else dict.fromkeys("xywh")
        probabilities = {name: face.probabilities.get(name, 0.0) for name in class_names}
        out.append({**where, "face": number, **box, "score": face.score, **probabilities, "emotion": face.emotion})
    return out


def csv_cells(row: dict[str, Any], columns: Sequence[str]) -> list[Any]:
    """A row's values for a CSV line: empty for None, time_s to 3 decimals, other floats (probabilities) to 4."""
    return [_cell(name, row.get(name)) for name in columns]


def _cell(name: str, value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}" if name == "time_s" else f"{value:.4f}"
    return value
