"""Face tracking in video: identity figures on generated scenes, and what tracking costs.

    .venv/bin/python benchmarks/tracking.py [--fps 20] [--repeats 3] [--skip-speed]

Figures:
* identity, per scene of tests/videos.py (640x360 at --fps, real faces from
  ../shared/data/photos with known identities: crossing, passing behind,
  covered for 1 s, five people, camera pan and zoom, leaving and
  re-entering): IDF1, ID switches and MOTA (py-motmetrics, a detected face
  matching a person when its centre is within 0.6 sprite widths of theirs),
  for the track ids and, as the old baseline, for the per-frame face rank
  (the CSV's `face` column, what videos were keyed by before tracking);
* cost: microseconds per face for `face_descriptor`, per frame for
  `FaceTracker.update`, and frames/s of `predict_video` on a 1280x720
  crossing clip with tracking and with it switched off (descriptors and
  matching replaced by nothing), same model, same machine, runs alternated,
  best of --repeats each.

Needs motmetrics (benchmark only: `pip install motmetrics`). Results go to
benchmarks/results/tracking.json; a table is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))

from videos import SCENES, GroundTruth, write_scene  # noqa: E402 - after the path set-up

MATCH_REACH = 0.6  # sprite widths between a detected face's centre and a person's


def identity_figures(scene: str, folder: Path, fps: float, recognizer) -> dict:
    """IDF1 / ID switches / MOTA of the track ids and of the per-frame face rank on one scene."""
    from emorec.video import analyze_video

    path = folder / f"{scene}.mp4"
    truth = write_scene(scene, path, fps=fps)
    analysis = analyze_video(path, recognizer=recognizer)
    rows = [row for row in analysis.rows() if row["face"] is not None]
    return {"frames": truth.frames, "people": len(truth.people), "tracks": len(analysis.tracks),
            "tracked": _mot(truth, rows, "track"), "face_rank": _mot(truth, rows, "face")}


def _mot(truth: GroundTruth, rows: list[dict], id_column: str) -> dict:
    import motmetrics as mm

    accumulator = mm.MOTAccumulator(auto_id=False)
    by_frame: dict[int, list[dict]] = {}
    for row in rows:
        by_frame.setdefault(row["frame"], []).append(row)
    for frame, people in enumerate(truth.boxes):
        found = by_frame.get(frame, [])
        distances = np.full((len(people), len(found)), np.nan)
        for i, (x, y, w, h) in enumerate(people.values()):
            for j, row in enumerate(found):
                d = np.hypot(x + w / 2 - row["x"] - row["w"] / 2, y + h / 2 - row["y"] - row["h"] / 2) / w
                distances[i, j] = d if d <= MATCH_REACH else np.nan
        accumulator.update(list(people), [row[id_column] for row in found], distances, frameid=frame)
    summary = mm.metrics.create().compute(accumulator, metrics=["idf1", "num_switches", "mota"], name="x")
    return {"idf1": round(float(summary["idf1"].iloc[0]), 4), "id_switches": int(summary["num_switches"].iloc[0]),
            "mota": round(float(summary["mota"].iloc[0]), 4)}


def cost_figures(folder: Path, recognizer, frames_720p: int, repeats: int) -> dict:
    """Per-face descriptor and per-frame matching cost, and predict_video frames/s with and without tracking."""
    from emorec.config import PredictConfig
    from emorec.tracking import FaceTracker, face_descriptor, face_descriptors
    from emorec.video import predict_video

    path = folder / "crossing-720p.mp4"
    write_scene("crossing", path, fps=frames_720p / 3.0, size=(1280, 720))
    crops, boxes = _faces(path, recognizer)
    started = time.perf_counter()
    for crop in crops * 20:
        face_descriptor(crop)
    descriptor_us = (time.perf_counter() - started) / (len(crops) * 20) * 1e6
    descriptors = [face_descriptors(np.stack(frame)) if frame else np.zeros((0, 384), np.float32) for frame in
                   _per_frame(crops, boxes)]
    tracker = FaceTracker(fps=20.0)
    started = time.perf_counter()
    for index, (frame_boxes, frame_descriptors) in enumerate(zip(_box_frames(boxes), descriptors)):
        tracker.update(index, frame_boxes, frame_descriptors)
    update_us = (time.perf_counter() - started) / len(descriptors) * 1e6

    speeds: dict[str, float] = {}
    for _ in range(repeats):  # alternated, best of each: a busy machine slows runs at random
        for name, switch in (("with_tracking", contextlib.nullcontext), ("without_tracking", _tracking_off)):
            with switch(), tempfile.TemporaryDirectory() as out:
                started = time.perf_counter()
                summary = predict_video(path, PredictConfig(sources=[str(path)]), Path(out) / "x.csv",
                                        recognizer=recognizer, progress=False)
                speeds[name] = max(speeds.get(name, 0.0), round(summary.frames / (time.perf_counter() - started), 2))
    return {"descriptor_us_per_face": round(descriptor_us, 1), "tracker_update_us_per_frame": round(update_us, 1),
            "faces_per_frame": round(sum(len(b) for b in boxes) / len(boxes), 2), "video_720p_fps": speeds}


def _faces(path: Path, recognizer) -> tuple[list[np.ndarray], list[list]]:
    """Every frame's face crops (flattened) and boxes (per frame)."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    crops, boxes = [], []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        prepared = recognizer.prepare(frame)
        crops += list(prepared.crops)
        boxes.append([region.box for region in prepared.regions])
    capture.release()
    return crops, boxes


def _per_frame(crops: list[np.ndarray], boxes: list[list]) -> list[list[np.ndarray]]:
    out, start = [], 0
    for frame in boxes:
        out.append(crops[start : start + len(frame)])
        start += len(frame)
    return out


def _box_frames(boxes: list[list]) -> list[np.ndarray]:
    return [np.array(frame, np.float64).reshape(-1, 4) for frame in boxes]


@contextlib.contextmanager
def _tracking_off():
    """predict_video with no descriptors and no matching (ids are the face ranks): the cost of the rest."""
    import emorec.video as video
    from emorec.tracking import FaceTracker

    descriptors, update = video.face_descriptors, FaceTracker.update
    video.face_descriptors = lambda crops: np.zeros((len(crops), 1), np.float32)
    FaceTracker.update = lambda self, index, boxes, *rest: list(range(1, len(boxes) + 1))
    try:
        yield
    finally:
        video.face_descriptors, FaceTracker.update = descriptors, update


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fps", type=float, default=20.0, help="frame rate of the identity scenes")
    parser.add_argument("--frames-720p", type=int, default=60, help="frames of the 1280x720 speed clip (3 s)")
    parser.add_argument("--repeats", type=int, default=3, help="speed runs of each kind (best is kept)")
    parser.add_argument("--skip-speed", action="store_true", help="identity figures only")
    args = parser.parse_args()

    from emorec.files import write_json
    from emorec.recognizer import Recognizer

    recognizer = Recognizer()
    results: dict = {"scenes": {}}
    with tempfile.TemporaryDirectory() as folder:
        for scene in SCENES:
            results["scenes"][scene] = figures = identity_figures(scene, Path(folder), args.fps, recognizer)
            tracked, rank = figures["tracked"], figures["face_rank"]
            print(f"{scene:9s} people {figures['people']} tracks {figures['tracks']:2d} | tracked IDF1 "
                  f"{tracked['idf1']:.3f} switches {tracked['id_switches']:2d} MOTA {tracked['mota']:.3f} | "
                  f"face rank IDF1 {rank['idf1']:.3f} switches {rank['id_switches']:2d}", flush=True)
        if not args.skip_speed:
            results["cost"] = cost = cost_figures(Path(folder), recognizer, args.frames_720p, args.repeats)
            print(f"face_descriptor {cost['descriptor_us_per_face']} us/face, FaceTracker.update "
                  f"{cost['tracker_update_us_per_frame']} us/frame ({cost['faces_per_frame']} faces), 720p "
                  f"predict_video {cost['video_720p_fps']['with_tracking']} frames/s with tracking, "
                  f"{cost['video_720p_fps']['without_tracking']} without")
    out = HERE / "results" / "tracking.json"
    out.parent.mkdir(exist_ok=True)
    write_json(out, results)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
