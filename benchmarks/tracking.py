"""Face tracking: ID switches, IDF1 and missed faces on generated scenes, emotions after crossings, speed, memory.

    .venv/bin/python benchmarks/tracking.py [--scenes crossing behind ...] [--speed-frames 40] [--repeats 3]
                                            [--long-frames 400]

Scenes (tests/videos.py: real faces from ../shared/data/photos on a textured
background, 640x360 at 20 fps, every person's box known in every frame):
two people crossing, one passing behind another, a face covered for 1 s,
five people moving, a slow camera pan and zoom, a person leaving and
re-entering. Each is run through `emorec.analyze_video` (every frame).

Figures per scene, scored with `motmetrics` (py-motmetrics, the MOTChallenge
scorer; a detected face matches a person when its centre is within 0.6 face
widths of the person's): ID switches, IDF1, MOTA, faces missed and false
faces of the track ids, and as the baseline the ID switches and IDF1 of the
per-frame face rank (the CSV's `face` column, what videos were keyed by
before tracking). Then the emotion agreement after each crossing or return:
over the second after a person came out from behind someone or back into
view, the share of frames in which the track that stands for the person
(IDF1's one-to-one mapping) shows that person and reports the emotion the
model gives that person's face alone (the same sprite at the same place and
size on the bare background). Frames where the detector missed the face are
left out there (they count as missed), and so are those where it finds no
face in the face alone.

Cost, on a 1280x720 clip of five people: `predict_video` frames/s with
tracking and with it switched off (descriptors and matching replaced by
nothing; runs alternated, best of --repeats each), and the tracker's own
time: `face_descriptor` per face and `FaceTracker.update` per frame, as a
share of a frame's time. On a busy machine two runs of the same code differ
by more than the tracker costs, so the overhead goal is judged on the
measured time of the tracker's own work. Last, peak RSS over a long clip
(the five-people scene played back and forth) against the scene itself, for
predict_video (what `emorec predict` runs) and analyze_video, each in a
fresh process.

Goals: 0 ID switches, IDF1 >= 0.99, agreement >= 0.99, tracking overhead <= 5%.
Needs `motmetrics` (benchmark only: pip install motmetrics, or the dev
extra). Results go to benchmarks/results/tracking.json; a table is printed.
Timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests")]

import videos  # noqa: E402  (tests/videos.py: the scene generator the tracking tests use)

from emorec.config import PredictConfig  # noqa: E402
from emorec.files import write_json  # noqa: E402
from emorec.recognizer import Recognizer  # noqa: E402
from emorec.tracking import FaceTracker, face_descriptor, face_descriptors  # noqa: E402
from emorec.video import predict_video  # noqa: E402

RESULTS = HERE / "results" / "tracking.json"
MATCH_REACH = 0.6  # a detected face is a person's when its centre is this many face widths from theirs, or nearer
AFTER_EVENT_S = 1.0
GOALS = {"id_switches": 0, "idf1": 0.99, "agreement": 0.99, "overhead": 0.05}


# ----------------------------------------------------------------------------
# Identity: motmetrics over the scenes
# ----------------------------------------------------------------------------


def score_scene(scene: str, folder: Path, recognizer: Recognizer) -> dict:
    """Write a scene, track it with analyze_video, and score ids and emotions against the truth."""
    import emorec

    path = folder / f"{scene}.mp4"
    truth = videos.write_scene(scene, path)
    analysis = emorec.analyze_video(path, recognizer=recognizer)
    faces = faces_per_frame(analysis.rows(), truth.frames)
    tracked, figures = mot_figures(truth, faces, "track")
    _, rank = mot_figures(truth, faces, "face")  # the baseline: what videos were keyed by before tracking
    return {"scene": scene, "frames": truth.frames, "people": len(truth.people), "tracks": len(analysis.tracks),
            **figures, "face_rank_idf1": rank["idf1"], "face_rank_id_switches": rank["id_switches"],
            **agreement(truth, faces, identity_mapping(tracked),
                        lambda frame, person: alone_emotion(truth, frame, person, recognizer))}


def faces_per_frame(rows: list[dict], frames: int) -> list[list[dict]]:
    """analyze_video's rows of found faces, per frame."""
    out: list[list] = [[] for _ in range(frames)]
    for row in rows:
        if row["face"] is not None and row["frame"] < frames:
            out[row["frame"]].append(row)
    return out


def mot_figures(truth, faces: list[list[dict]], id_column: str):
    """The motmetrics accumulator of one id column against the truth, and its figures."""
    import motmetrics as mm

    accumulator = mm.MOTAccumulator(auto_id=True)
    for frame, found in enumerate(faces):
        people = sorted(truth.boxes[frame])
        boxes = [(row["x"], row["y"], row["w"], row["h"]) for row in found]
        accumulator.update(people, [row[id_column] for row in found],
                           distances([truth.boxes[frame][p] for p in people], boxes))
    names = ["idf1", "num_switches", "mota", "num_misses", "num_false_positives", "num_objects"]
    row = mm.metrics.create().compute(accumulator, metrics=names, name=id_column).iloc[0]
    return accumulator, {"id_switches": int(row["num_switches"]), "idf1": round(float(row["idf1"]), 4),
                         "mota": round(float(row["mota"]), 4), "faces": int(row["num_objects"]),
                         "missed": int(row["num_misses"]), "false_faces": int(row["num_false_positives"])}


def distances(people: list[tuple], boxes: list[tuple]) -> np.ndarray:
    """Centre distance in face widths, NaN (no match possible) beyond MATCH_REACH."""
    out = np.full((len(people), len(boxes)), np.nan)
    for i, (x, y, w, h) in enumerate(people):
        for j, (bx, by, bw, bh) in enumerate(boxes):
            d = np.hypot(bx + bw / 2 - x - w / 2, by + bh / 2 - y - h / 2) / max(w, h)
            out[i, j] = d if d <= MATCH_REACH else np.nan
    return out


def identity_mapping(accumulator) -> dict[int, int]:
    """Person -> the track standing for them: IDF1's one-to-one assignment (most frames together)."""
    from scipy.optimize import linear_sum_assignment

    matches = accumulator.mot_events.query("Type == 'MATCH' or Type == 'SWITCH' or Type == 'TRANSFER'")
    pairs = matches.groupby(["OId", "HId"]).size()
    if pairs.empty:
        return {}
    people, tracks = sorted({p for p, _ in pairs.index}), sorted({t for _, t in pairs.index})
    together = np.zeros((len(people), len(tracks)))
    for (person, track), count in pairs.items():
        together[people.index(person), tracks.index(track)] = count
    rows, cols = linear_sum_assignment(-together)
    return {int(people[r]): int(tracks[c]) for r, c in zip(rows, cols) if together[r, c] > 0}


def alone_emotion(truth, frame: int, person: int, recognizer: Recognizer) -> str | None:
    """What the model says of a person's face alone: the same sprite, place and size on the bare background
    (None when the detector finds no face there)."""
    width, height = truth.size
    x, y, side, _ = truth.boxes[frame][person]
    image = videos.background(width, height)
    face = videos.sprite(truth.people[person], side)
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + side, width), min(y + side, height)
    image[y0:y1, x0:x1] = face[y0 - y : y1 - y, x0 - x : x1 - x]
    faces = recognizer.predict(image)
    return faces[0].emotion if faces else None


def events(truth) -> list[tuple[int, int]]:
    """(frame, person) where a person comes back into view or out from overlapping someone else."""
    found = []
    for frame in range(1, truth.frames):
        before, now = truth.boxes[frame - 1], truth.boxes[frame]
        for person, box in now.items():
            returned = person not in before and any(person in truth.boxes[f] for f in range(frame))
            separated = person in before and _overlaps_any(person, before) and not _overlaps_any(person, now)
            if returned or separated:
                found.append((frame, person))
    return found


def _overlaps_any(person: int, boxes: dict[int, tuple]) -> bool:
    x, y, w, h = boxes[person]
    return any(max(0, min(x + w, ox + ow) - max(x, ox)) * max(0, min(y + h, oy + oh) - max(y, oy)) > 0
               for other, (ox, oy, ow, oh) in boxes.items() if other != person)


def agreement(truth, faces, mapping: dict[int, int], alone) -> dict:
    """After each crossing or return: of the frames in which the person's face was found, the share in which
    the track standing for them is on them and reports their emotion alone; and why the others were not."""
    found = hits = wrong_track = wrong_emotion = no_reference = 0
    window = round(AFTER_EVENT_S * truth.fps)
    frames = {(frame, person) for start, person in events(truth)
              for frame in range(start, min(start + window, truth.frames)) if person in truth.boxes[frame]}
    for frame, person in sorted(frames):
        on_person = [(row["track"], row["emotion"]) for row in faces[frame]
                     if truth.person_at(frame, (row["x"], row["y"], row["w"], row["h"])) == person]
        if not on_person:
            continue  # the detector missed the face: counted in `missed`, not here
        track, emotion = on_person[0]
        reference = alone(frame, person)
        if reference is None:
            no_reference += 1  # the detector finds no face in the face alone: nothing to compare with
            continue
        found += 1
        same = emotion == reference
        wrong_track += track != mapping.get(person)
        wrong_emotion += track == mapping.get(person) and not same
        hits += track == mapping.get(person) and same
    return {"events": len(events(truth)), "event_frames": len(frames), "event_frames_found": found,
            "agreement": hits / found if found else None, "wrong_track": wrong_track, "wrong_emotion": wrong_emotion,
            "no_reference": no_reference}


# ----------------------------------------------------------------------------
# Speed and memory
# ----------------------------------------------------------------------------


def speed(folder: Path, recognizer: Recognizer, frames: int, repeats: int) -> dict:
    """predict_video frames/s on a 1280x720 clip of five people with tracking and with it switched off (runs
    alternated, best of each), and the tracker's own cost: descriptors per face, FaceTracker.update per frame."""
    path = folder / "five-720p.mp4"
    videos.write_scene("five", path, fps=frames / videos._SCENES["five"][1], size=(1280, 720))
    crops, boxes = _faces(path, recognizer)
    started = time.perf_counter()
    for crop in crops * 5:
        face_descriptor(crop)
    descriptor_us = (time.perf_counter() - started) / (len(crops) * 5) * 1e6
    per_frame = _per_frame(crops, boxes)
    tracker = FaceTracker(fps=20.0)
    started = time.perf_counter()
    for index, (frame_boxes, frame_crops) in enumerate(zip(boxes, per_frame)):
        tracker.update(index, np.array(frame_boxes, np.float64).reshape(-1, 4), face_descriptors(frame_crops))
    update_us = (time.perf_counter() - started) / len(boxes) * 1e6 - descriptor_us * len(crops) / len(boxes)
    fps = {"with_tracking": 0.0, "without_tracking": 0.0}
    for _ in range(repeats):  # alternated, best of each: a busy machine slows runs at random
        for name, switch in (("with_tracking", contextlib.nullcontext), ("without_tracking", _tracking_off)):
            with switch(), tempfile.TemporaryDirectory() as out:
                started = time.perf_counter()
                summary = predict_video(path, PredictConfig(sources=[str(path)]), Path(out) / "x.csv",
                                        recognizer=recognizer, progress=False)
                fps[name] = max(fps[name], summary.frames / (time.perf_counter() - started))
    faces_per_frame_ = len(crops) / len(boxes)
    tracker_ms = (descriptor_us * faces_per_frame_ + update_us) / 1000
    frame_ms = 1000 / fps["without_tracking"]
    return {"clip": "1280x720, 5 faces", "frames": len(boxes), "faces_per_frame": round(faces_per_frame_, 2),
            "fps_without": round(fps["without_tracking"], 2), "fps_with": round(fps["with_tracking"], 2),
            "overhead": round(1 - fps["with_tracking"] / fps["without_tracking"], 4),
            "descriptor_us_per_face": round(descriptor_us, 1), "tracker_update_us_per_frame": round(update_us, 1),
            "tracker_ms_per_frame": round(tracker_ms, 3),
            "tracker_share_of_frame_time": round(tracker_ms / (frame_ms + tracker_ms), 4)}


def _faces(path: Path, recognizer: Recognizer) -> tuple[list[np.ndarray], list[list]]:
    """Every frame's face crops (flattened) and boxes (per frame)."""
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


def _per_frame(crops: list[np.ndarray], boxes: list[list]) -> list[np.ndarray]:
    out, start = [], 0
    for frame in boxes:
        out.append(np.stack(crops[start : start + len(frame)]) if frame else np.zeros((0, 48, 48, 1), np.uint8))
        start += len(frame)
    return out


@contextlib.contextmanager
def _tracking_off():
    """predict_video with no descriptors and no matching (ids are the face ranks): the cost of the rest."""
    import emorec.video as video

    descriptors, update = video.face_descriptors, FaceTracker.update
    video.face_descriptors = lambda crops: np.zeros((len(crops), 1), np.float32)
    FaceTracker.update = lambda self, index, boxes, *rest: list(range(1, len(boxes) + 1))
    try:
        yield
    finally:
        video.face_descriptors, FaceTracker.update = descriptors, update


def memory(folder: Path, frames: int) -> dict:
    """Peak RSS over a long clip (the five-people scene played back and forth) against the scene itself,
    for `emorec predict` (predict_video: rows go to the CSV) and analyze_video (rows kept), each in a fresh process."""
    scene = folder / "five.mp4"
    if not scene.exists():
        videos.write_scene("five", scene)
    long_clip = loop_clip(scene, folder / "five-long.mp4", frames)
    out = {"frames": frames, "seconds": round(frames / 20.0, 1)}
    for mode in ("predict_video", "analyze_video"):
        command = [sys.executable, __file__, "--memory-of", mode, str(scene), str(long_clip)]
        child = subprocess.run(command, capture_output=True, text=True, check=True)
        out[mode] = json.loads(child.stdout.splitlines()[-1])
    return out


def measure_memory(mode: str, short_clip: Path, long_clip: Path) -> dict:
    """In this process: peak RSS after the short clip, then after the long one (MB), and the tracks found."""
    recognizer = Recognizer()
    peaks = {}
    for name, clip in (("short", short_clip), ("long", long_clip)):
        tracks = run_clip(mode, clip, recognizer)
        peaks[f"peak_rss_mb_{name}"] = round(peak_rss_mb(), 1)
    return {**peaks, "growth_mb": round(peaks["peak_rss_mb_long"] - peaks["peak_rss_mb_short"], 1), "tracks": tracks}


def run_clip(mode: str, clip: Path, recognizer: Recognizer) -> int:
    """Tracks found in a clip by predict_video (CSV to a temporary file) or analyze_video."""
    import emorec
    if mode == "analyze_video":
        return len(emorec.analyze_video(clip, recognizer=recognizer).tracks)
    with tempfile.TemporaryDirectory() as tmp:
        summary = predict_video(clip, PredictConfig(sources=[str(clip)]), Path(tmp) / "frames.csv", None, recognizer,
                                progress=False)
    return len(summary.tracks)


def loop_clip(source: Path, target: Path, frames: int) -> Path:
    """A clip of `frames` frames: source played forwards and backwards in turn (motion stays smooth)."""
    capture = cv2.VideoCapture(str(source))
    fps = capture.get(cv2.CAP_PROP_FPS)
    clip = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        clip.append(frame)
    capture.release()
    writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), fps, clip[0].shape[1::-1])
    sequence = clip + clip[-2:0:-1]
    for index in range(frames):
        writer.write(sequence[index % len(sequence)])
    writer.release()
    return target


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------


def table(scenes: list[dict], speed_figures: dict, memory_figures: dict) -> str:
    """The figures as aligned text, with the goals met or not."""
    lines = [f"{'scene':<10}{'frames':>7}{'people':>7}{'tracks':>7}{'switches':>9}{'IDF1':>8}{'MOTA':>8}{'missed':>7}"
             f"{'false':>6}{'events':>7}{'agree':>7}  (event frames found; wrong track, wrong emotion) "
             f"| face rank: switches, IDF1"]
    for s in scenes:
        agree = "-" if s["agreement"] is None else f"{s['agreement']:.3f}"
        lines.append(f"{s['scene']:<10}{s['frames']:>7}{s['people']:>7}{s['tracks']:>7}{s['id_switches']:>9}"
                     f"{s['idf1']:>8.4f}{s['mota']:>8.4f}{s['missed']:>7}{s['false_faces']:>6}{s['events']:>7}"
                     f"{agree:>7}  ({s['event_frames_found']}/{s['event_frames']}; {s['wrong_track']}, "
                     f"{s['wrong_emotion']}) | {s['face_rank_id_switches']}, {s['face_rank_idf1']:.4f}")
    lines += [f"speed ({speed_figures['clip']}, {speed_figures['frames']} frames): {speed_figures['fps_without']} fps "
              f"without tracking, {speed_figures['fps_with']} with ({speed_figures['overhead']:.1%} fewer); the tracker "
              f"itself {speed_figures['tracker_ms_per_frame']} ms/frame ({speed_figures['descriptor_us_per_face']} us "
              f"per face descriptor, {speed_figures['tracker_update_us_per_frame']} us per update), "
              f"{speed_figures['tracker_share_of_frame_time']:.1%} of a frame's time",
              f"memory over {memory_figures['seconds']} s ({memory_figures['frames']} frames of five people) against "
              f"{videos._SCENES['five'][1]} s, peak RSS:"]
    for mode in ("predict_video", "analyze_video"):
        m = memory_figures[mode]
        lines.append(f"  {mode:<14} {m['peak_rss_mb_short']} MB -> {m['peak_rss_mb_long']} MB "
                     f"(+{m['growth_mb']} MB, {m['tracks']} tracks)")
    return "\n".join(lines)


def goals(scenes: list[dict], speed_figures: dict) -> dict[str, dict]:
    """Each goal, the worst figure over the scenes and whether it is met."""
    agreements = [s["agreement"] for s in scenes if s["agreement"] is not None]
    worst = {"id_switches": sum(s["id_switches"] for s in scenes), "idf1": min(s["idf1"] for s in scenes),
             "agreement": min(agreements) if agreements else None,
             "overhead": speed_figures["tracker_share_of_frame_time"]}
    met = {"id_switches": worst["id_switches"] <= GOALS["id_switches"], "idf1": worst["idf1"] >= GOALS["idf1"],
           "agreement": worst["agreement"] is not None and worst["agreement"] >= GOALS["agreement"],
           "overhead": worst["overhead"] <= GOALS["overhead"]}
    return {name: {"goal": GOALS[name], "figure": None if worst[name] is None else round(worst[name], 4), "met": met[name]}
            for name in GOALS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", nargs="+", default=list(videos.SCENES), choices=videos.SCENES)
    parser.add_argument("--speed-frames", type=int, default=40, help="frames of the 720p clip")
    parser.add_argument("--repeats", type=int, default=3, help="speed runs of each kind (the best is kept)")
    parser.add_argument("--long-frames", type=int, default=400, help="frames of the long clip for memory")
    parser.add_argument("--out", default=str(RESULTS), help="JSON file for the results")
    parser.add_argument("--memory-of", nargs=3, metavar=("MODE", "SHORT", "LONG"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        import motmetrics  # noqa: F401
    except ImportError:
        print("benchmarks/tracking.py needs motmetrics (benchmark only): pip install motmetrics", file=sys.stderr)
        return 2
    if args.memory_of:  # the child process of memory(): print its figures as one JSON line
        mode, short_clip, long_clip = args.memory_of
        print(json.dumps(measure_memory(mode, Path(short_clip), Path(long_clip))))
        return 0
    recognizer = Recognizer()
    with tempfile.TemporaryDirectory(prefix="emorec-tracking-") as tmp:
        folder = Path(tmp)
        scenes = [score_scene(scene, folder, recognizer) for scene in args.scenes]
        speed_figures = speed(folder, recognizer, args.speed_frames, args.repeats)
        memory_figures = memory(folder, args.long_frames)
    summary = goals(scenes, speed_figures)
    print(table(scenes, speed_figures, memory_figures))
    print("goals: " + ", ".join(f"{name} {'met' if g['met'] else 'NOT met'} ({g['figure']})" for name, g in summary.items()))
    write_json(args.out, {"scenes": scenes, "speed": speed_figures, "memory": memory_figures, "goals": summary})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
