"""Face tracking: ID switches, IDF1 and missed faces on generated scenes, emotions after crossings, speed, memory.

    .venv/bin/python benchmarks/tracking.py [--scenes crossing behind ...] [--speed-frames 60] [--long-frames 1500]

Scenes (tests/videos.py: real faces from ../shared/data/photos on a textured
background, 640x360 at 20 fps, every person's box known in every frame):
two people crossing, one passing behind another, a face covered for 1 s,
five people moving, a slow camera pan and zoom, a person leaving and
re-entering. Each is run through `emorec.analyze_video` (every frame).

Figures per scene, scored with `motmetrics` (py-motmetrics, the MOTChallenge
scorer; a detected face matches a person when its centre is within 0.6 face
widths of the person's): ID switches, IDF1, faces missed, false faces; and
the emotion agreement after each crossing or return: over the second after a
person came out from behind someone or back into view, the share of frames
in which the track that stands for the person (IDF1's one-to-one mapping)
shows that person and reports the emotion the model gives that person's face
alone (the same sprite at the same place and size on the bare background).
Frames where the detector missed the face are left out there (they count as
missed), and so are those where it finds no face in the face alone. Then
frames/s on a 1280x720 clip of five people with and without tracking (the
same decode, detection and classification; tracking adds descriptors and
FaceTracker.update; best of 3 alternating runs) and the
time of that added work itself, per frame, as a share of a frame's time: on a
busy machine the frames/s of two runs differ by more than the tracker costs,
so the overhead goal is judged on the measured added time. Last, peak RSS
over a long clip (a scene played back and forth) against the scene itself,
for predict_video (what `emorec predict` runs) and analyze_video, each in a
fresh process. Goals: 0 ID switches, IDF1 >= 0.99, agreement >= 0.99,
tracking overhead <= 5%.

Needs `motmetrics` (benchmark only: pip install motmetrics). Results go to
benchmarks/results/tracking.json; a table is printed. Timings depend on the
machine and its load.
"""

from __future__ import annotations

import argparse
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

from emorec.files import write_json  # noqa: E402
from emorec.recognizer import Recognizer  # noqa: E402
from emorec.tracking import FaceTracker, face_descriptor  # noqa: E402

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
    import motmetrics as mm

    path = folder / f"{scene}.mp4"
    truth = videos.write_scene(scene, path)
    analysis = emorec.analyze_video(path, recognizer=recognizer)
    faces = faces_per_frame(analysis.rows(), truth.frames)
    accumulator = mm.MOTAccumulator(auto_id=True)
    for frame, detected in enumerate(faces):
        people = sorted(truth.boxes[frame])
        accumulator.update(people, [track for track, _, _ in detected],
                           distances([truth.boxes[frame][p] for p in people], [box for _, box, _ in detected]))
    metrics = mm.metrics.create().compute(accumulator, metrics=["idf1", "num_switches", "num_misses",
                                                                "num_false_positives", "num_objects"], name=scene)
    row = metrics.iloc[0]
    mapping = identity_mapping(accumulator)
    return {"scene": scene, "frames": truth.frames, "people": len(truth.people), "tracks": len(analysis.tracks),
            "id_switches": int(row["num_switches"]), "idf1": float(row["idf1"]), "faces": int(row["num_objects"]),
            "missed": int(row["num_misses"]), "false_faces": int(row["num_false_positives"]),
            **agreement(truth, faces, mapping, lambda frame, person: alone_emotion(truth, frame, person, recognizer))}


def faces_per_frame(rows: list[dict], frames: int) -> list[list[tuple[int, tuple, str]]]:
    """(track, box, emotion) of every face, per frame, from analyze_video's rows."""
    out: list[list] = [[] for _ in range(frames)]
    for row in rows:
        if row.get("track") is not None and row["frame"] < frames:
            out[row["frame"]].append((row["track"], (row["x"], row["y"], row["w"], row["h"]), row["emotion"]))
    return out


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
        on_person = [(track, emotion) for track, box, emotion in faces[frame]
                     if truth.person_at(frame, tuple(int(v) for v in box)) == person]
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


def frames_per_second(path: Path, recognizer: Recognizer, track: bool, frames: int) -> tuple[float, float]:
    """(frames/s, tracker ms per frame) over the first `frames` frames: decode, detect, classify (+ track)."""
    capture = cv2.VideoCapture(str(path))
    tracker, tracking_s = FaceTracker(capture.get(cv2.CAP_PROP_FPS) or 20.0), 0.0
    started = time.perf_counter()
    for index in range(frames):
        ok, frame = capture.read()
        if not ok:
            break
        prepared = recognizer.prepare(frame)
        recognizer.classify_prepared([prepared])
        if track:
            began = time.perf_counter()
            boxes = np.array([region.box for region in prepared.regions], float).reshape(-1, 4)
            scores = np.array([region.score for region in prepared.regions])
            tracker.update(index, boxes, np.array([face_descriptor(crop) for crop in prepared.crops]), scores)
            tracking_s += time.perf_counter() - began
    elapsed = time.perf_counter() - started
    capture.release()
    return (index + 1) / elapsed, 1000 * tracking_s / (index + 1)


def speed(folder: Path, recognizer: Recognizer, frames: int) -> dict:
    """Frames/s with and without tracking on a 1280x720 clip of five people: best of 3, runs alternating."""
    path = folder / "five-720p.mp4"
    videos.write_scene("five", path, size=(1280, 720))
    frames_per_second(path, recognizer, True, 5)  # warm-up
    plain, tracked, tracker_ms = [], [], []
    for _ in range(3):
        plain.append(frames_per_second(path, recognizer, False, frames)[0])
        fps, ms = frames_per_second(path, recognizer, True, frames)
        tracked.append(fps)
        tracker_ms.append(ms)
    without, with_tracking = max(plain), max(tracked)
    frame_ms = 1000 / without
    return {"clip": "1280x720, 5 faces", "frames": frames, "fps_without": round(without, 2),
            "fps_with": round(with_tracking, 2), "overhead": round(1 - with_tracking / without, 4),
            "tracker_ms_per_frame": round(min(tracker_ms), 3),
            "tracker_share_of_frame_time": round(min(tracker_ms) / (frame_ms + min(tracker_ms)), 4)}


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
    from emorec.config import PredictConfig
    from emorec.video import predict_video

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
    lines = [f"{'scene':<10}{'frames':>7}{'people':>7}{'tracks':>7}{'switches':>9}{'IDF1':>8}{'missed':>7}"
             f"{'false':>6}{'events':>7}{'agree':>7}  (event frames found; wrong track, wrong emotion)"]
    for s in scenes:
        agree = "-" if s["agreement"] is None else f"{s['agreement']:.3f}"
        lines.append(f"{s['scene']:<10}{s['frames']:>7}{s['people']:>7}{s['tracks']:>7}{s['id_switches']:>9}"
                     f"{s['idf1']:>8.4f}{s['missed']:>7}{s['false_faces']:>6}{s['events']:>7}{agree:>7}  "
                     f"({s['event_frames_found']}/{s['event_frames']}; {s['wrong_track']}, {s['wrong_emotion']})")
    lines += [f"speed ({speed_figures['clip']}, {speed_figures['frames']} frames): {speed_figures['fps_without']} fps "
              f"without tracking, {speed_figures['fps_with']} with ({speed_figures['overhead']:.1%} fewer); the tracker "
              f"itself {speed_figures['tracker_ms_per_frame']} ms/frame "
              f"({speed_figures['tracker_share_of_frame_time']:.1%} of a frame's time)",
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
    parser.add_argument("--speed-frames", type=int, default=20, help="frames per timed run of the 720p clip")
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
        speed_figures = speed(folder, recognizer, args.speed_frames)
        memory_figures = memory(folder, args.long_frames)
    summary = goals(scenes, speed_figures)
    print(table(scenes, speed_figures, memory_figures))
    print("goals: " + ", ".join(f"{name} {'met' if g['met'] else 'NOT met'} ({g['figure']})" for name, g in summary.items()))
    write_json(args.out, {"scenes": scenes, "speed": speed_figures, "memory": memory_figures, "goals": summary})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
