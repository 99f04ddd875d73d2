"""What recognition returns: typed results that print and serialise the same way everywhere.

`FaceResult` (one classified face), `ImageResult` (one photo, or the error
that stopped it, or a video's `VideoSummary`), and for videos `Track` (one
person followed over time) and `VideoAnalysis` (what `emorec.analyze_video`
returns). Their `to_dict()` is the one
source of the JSON shape that `emorec predict --json` prints; `rows()` is the
one flat form (CSV files, Parquet, Ray), from which each writer picks its
columns (`csv_cells`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np


@dataclass
class FaceResult:
    """One classified face: where it is and what the model thinks of it.

    box is (x, y, w, h) in image pixels, or None when the whole image was
    classified as one face; score is the detector's confidence (None then);
    track is the id of the person in a video (None for photos).
    """

    box: tuple[int, int, int, int] | None
    probabilities: dict[str, float]
    score: float | None = None
    track: int | None = None

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
        """Plain dict, ready for JSON (with "track" only for a face of a video)."""
        out = {
            "box": list(self.box) if self.box is not None else None,
            "emotion": self.emotion,
            "confidence": round(self.confidence, 6),
            "probabilities": {name: round(p, 6) for name, p in self.probabilities.items()},
            "score": self.score,
        }
        if self.track is not None:
            out["track"] = self.track
        return out


@dataclass
class Track:
    """One person followed through a video: when they were seen and what the model said of them.

    times (T,) are the seconds of the classified frames the face was in;
    probabilities (T, C) the model's output there (smoothed with --smooth),
    columns in class_names order; thumbnail is the most confidently detected
    crop of the face (BGR uint8), or None where no frame was kept.
    """

    id: int
    class_names: list[str]
    times: np.ndarray
    probabilities: np.ndarray
    thumbnail: np.ndarray | None = None

    @property
    def frames(self) -> int:
        """Classified frames the face was seen in."""
        return len(self.times)

    @property
    def first_time(self) -> float:
        """Seconds into the video when the face was first seen."""
        return float(self.times[0])

    @property
    def last_time(self) -> float:
        """Seconds into the video when the face was last seen."""
        return float(self.times[-1])

    @property
    def mean_probabilities(self) -> dict[str, float]:
        """The model's probabilities averaged over the frames the face was seen in."""
        return {name: float(p) for name, p in zip(self.class_names, self.probabilities.mean(axis=0))}

    @property
    def time_share(self) -> dict[str, float]:
        """For each class, the fraction of the face's frames in which it was the top emotion."""
        counts = np.bincount(self.probabilities.argmax(axis=1), minlength=len(self.class_names))
        return {name: float(c) / self.frames for name, c in zip(self.class_names, counts)}

    @property
    def dominant(self) -> str:
        """The emotion on top in most of the face's frames (ties: the higher mean probability)."""
        share, mean = self.time_share, self.mean_probabilities
        return max(self.class_names, key=lambda name: (share[name], mean[name]))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, ready for JSON: the summary, without the per-frame arrays and the thumbnail."""
        return {
            "id": self.id,
            "first_time": round(self.first_time, 3),
            "last_time": round(self.last_time, 3),
            "frames": self.frames,
            "dominant": self.dominant,
            "mean_probabilities": {name: round(p, 6) for name, p in self.mean_probabilities.items()},
            "time_share": {name: round(p, 6) for name, p in self.time_share.items()},
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
    tracks: list[Track] = field(default_factory=list)  # the people seen, by track id

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, ready for JSON."""
        return {**self.__dict__, "tracks": [track.to_dict() for track in self.tracks]}


@dataclass
class VideoAnalysis:
    """What `emorec.analyze_video` finds in one video: the people (tracks) and every classified face.

        >>> video = emorec.analyze_video("meeting.mp4")
        >>> person = video.tracks[0]
        >>> plt.plot(person.times, person.probabilities)     # one person's emotions over time
    """

    source: str
    fps: float
    duration: float  # seconds
    class_names: list[str]
    tracks: list[Track]
    summary: VideoSummary
    frame_rows: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def track(self, track_id: int) -> Track:
        """The track with this id (KeyError if there is none)."""
        for track in self.tracks:
            if track.id == track_id:
                return track
        raise KeyError(f"no track {track_id} in {self.source}")

    def rows(self) -> list[dict[str, Any]]:
        """One dict per face per classified frame (time_s, frame, face, track, box, score, classes, emotion);
        a frame without faces gives one row with empty face fields."""
        return list(self.frame_rows)

    def to_pandas(self):
        """rows() as a pandas DataFrame (needs pandas)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("VideoAnalysis.to_pandas needs pandas: pip install pandas") from None
        return pd.DataFrame(self.frame_rows)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, ready for JSON: the summary with its tracks."""
        return self.summary.to_dict()


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


FACE_FIELDS = ("face", "track", "x", "y", "w", "h", "score")  # the per-face fields of a row before the class columns


def rows(faces: Sequence[FaceResult], class_names: Sequence[str], **where: Any) -> list[dict[str, Any]]:
    """The flat rows of one photo or video frame: one per face, or one with empty face fields.

    Each row holds the `where` fields first (source, frame, time_s, error:
    whatever the caller names), then face (1-based, left to right), track
    (the person's id in a video, else None), x, y, w, h (None for a
    whole-image face), score, one probability per class name, and emotion.
    Writers pick and order the columns they need.
    """
    if not faces:
        return [{**where, **dict.fromkeys(FACE_FIELDS), **dict.fromkeys(class_names), "emotion": None}]
    out = []
    for number, face in enumerate(faces, 1):
        box = dict(zip("xywh", face.box)) if face.box is not None else dict.fromkeys("xywh")
        probabilities = {name: face.probabilities.get(name, 0.0) for name in class_names}
        out.append({**where, "face": number, "track": face.track, **box, "score": face.score, **probabilities,
                    "emotion": face.emotion})
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
