"""Benchmark the Ray engine against the local engine: photos/s, peak memory and start-up cost; a 720p clip.

    .venv/bin/python benchmarks/scale.py                      # 1,120 photos, a 300-frame 720p clip, 2 CPUs
    .venv/bin/python benchmarks/scale.py --photos 112 --frames 60    # a quick check that it runs

Photos: the 56 labelled photos of shared/data/photos repeated (symbolic links in a temporary folder)
up to --photos, run by the local engine (`run_predict`, worker threads) and by the Ray engine
(`run_predict_ray` on a local Ray with --cpus CPUs) with 1 and 2 classifier actors. Video: a
generated 1280x720 clip of a photo's face moving across the frame, cut into 4 frame ranges, with 1
and 2 actors, and the local engine.

Each configuration runs in its own subprocess, so that memory is measured per configuration: peak
memory is the largest sum of the resident sizes of the subprocess and all its descendants (the Ray
head, raylet and workers), sampled every 0.2 s. Times:

* start_s: what comes before any photo: for Ray, starting the local Ray; for the local engine, loading
  the model;
* job_s: a job of one photo (Ray: planning, actor start with model load in every actor, one row
  back), the fixed cost of every run;
* per_s: photos (or frames) per second over the big job, its fixed cost (job_s) taken out
  (meaningful only when the job takes several times job_s: use the default sizes);
* end_to_end_per_s: the same, fixed cost included.

Results go to benchmarks/results/scale.json and a table is printed. The goal: Ray with 2 actors at
least 1.7x one actor, and within 10% of the local engine per core once started (both use --cpus cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PHOTOS = REPO.parent / "shared" / "data" / "photos"
RESULTS = HERE / "results" / "scale.json"
CONFIGS = (("local", 0), ("ray", 1), ("ray", 2))


# ----------------------------------------------------------------------------
# Worker: one configuration, in its own process; prints one JSON object
# ----------------------------------------------------------------------------


def worker(args) -> dict:
    sys.path.insert(0, str(REPO / "src"))
    from emorec.config import PredictConfig

    sources, one = [args.source], [args.one]
    started = time.perf_counter()
    if args.worker == "local":
        from emorec.predict import Recognizer, run_predict

        recognizer = Recognizer()
        start_s = time.perf_counter() - started
        run = lambda paths: run_predict(PredictConfig(sources=paths, exist_ok=True), False, recognizer)  # noqa: E731
        return _timed(run, one, sources, start_s)
    from emorec.distributed import ray_session, run_predict_ray

    with ray_session(cpus=args.cpus):
        start_s = time.perf_counter() - started
        cfg = lambda paths: PredictConfig(sources=paths, exist_ok=True, actors=args.actors)  # noqa: E731
        run = lambda paths: run_predict_ray(cfg(paths), False, frames_per_task=args.frames_per_task)  # noqa: E731
        return _timed(run, one, sources, start_s)


def _timed(run, one: list[str], sources: list[str], start_s: float) -> dict:
    began = time.perf_counter()
    run(one)
    job_s = time.perf_counter() - began
    began = time.perf_counter()
    results = run(sources)
    total_s = time.perf_counter() - began
    video = next((r.video for r in results if r.video is not None), None)
    items = video.frames if video is not None else len(results)
    return {"start_s": round(start_s, 2), "job_s": round(job_s, 2), "total_s": round(total_s, 2), "items": items,
            "per_s": round(items / max(total_s - job_s, 1e-9), 1), "end_to_end_per_s": round(items / total_s, 1),
            "errors": sum(r.error is not None for r in results)}


# ----------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------


def _tree_rss(pid: int) -> int:
    """Resident bytes of pid and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry.name))
            rss[int(entry.name)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        total += rss.get(current, 0)
        stack += children.get(current, [])
    return total


def run_config(engine: str, actors: int, source: Path, one: Path, cpus: int, frames_per_task: int) -> dict:
    """Run one configuration in a subprocess, sampling its memory; its JSON plus peak_mib."""
    command = [sys.executable, __file__, "--worker", engine, "--actors", str(actors), "--cpus", str(cpus),
               "--source", str(source), "--one", str(one), "--frames-per-task", str(frames_per_task)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               cwd=source.parent)
    peak = [0]

    def sample():
        while process.poll() is None:
            peak[0] = max(peak[0], _tree_rss(process.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = process.communicate()
    sampler.join()
    if process.returncode:
        raise SystemExit(f"{engine} with {actors} actor(s) failed:\n{err[-2000:]}")
    return {**json.loads(out.strip().splitlines()[-1]), "peak_mib": round(peak[0] / 2**20)}


def make_photos(folder: Path, count: int) -> Path:
    """count links to the labelled photos, cycling through them."""
    photos = sorted(PHOTOS.glob("*.jpg"))
    folder.mkdir()
    for index in range(count):
        (folder / f"{index:06d}.jpg").symlink_to(photos[index % len(photos)])
    return folder


def make_clip(path: Path, frames: int, size=(1280, 720), fps: float = 30.0) -> Path:
    """A clip of a photo's face (300 px) sliding across a grey 720p frame."""
    import cv2
    import numpy as np

    face = cv2.resize(cv2.imread(str(sorted(PHOTOS.glob("*.jpg"))[0])), (300, 300))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for index in range(frames):
        frame = np.full((size[1], size[0], 3), 90, np.uint8)
        x = 40 + (index * 7) % (size[0] - 380)
        frame[200:500, x:x + 300] = face
        writer.write(frame)
    writer.release()
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=1120, help="photos in the big job (default 1120 = 56 x 20)")
    parser.add_argument("--frames", type=int, default=300, help="frames of the 720p clip (default 300 = 10 s)")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs the local Ray may use (default 2)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", choices=("local", "ray"), help=argparse.SUPPRESS)
    parser.add_argument("--actors", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--frames-per-task", type=int, default=300, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    with tempfile.TemporaryDirectory(prefix="emorec-scale-") as scratch:
        scratch = Path(scratch)
        folder = make_photos(scratch / "photos", args.photos)
        one = next(folder.iterdir())
        clip = make_clip(scratch / "clip.mp4", args.frames)
        short = make_clip(scratch / "short.mp4", 2)
        ranges = max(args.frames // 4, 1)  # 4 frame ranges: both actors get work
        rows = []
        for engine, actors in CONFIGS:
            for kind, source, first in (("photos", folder, one), ("720p video", clip, short)):
                result = run_config(engine, actors, source, first, args.cpus, ranges)
                rows.append({"engine": engine, "actors": actors or None, "input": kind, **result})
                print(_line(rows[-1]), flush=True)
    summary = _summary(rows, args.cpus)
    report = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
              "cpus": args.cpus, "photos": args.photos, "frames": args.frames, "load_average": os.getloadavg(),
              "rows": rows, "summary": summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO / "src"))
    from emorec.files import write_json

    write_json(args.out, report)
    for line in summary:
        print(line)
    print(f"wrote {args.out}")


def _line(row: dict) -> str:
    who = "local" if row["engine"] == "local" else f"ray, {row['actors']} actor(s)"
    unit = "frames" if "video" in row["input"] else "photos"
    return (f"{who:<18} {row['input']:<11} {row['per_s']:>7.1f} {unit}/s ({row['end_to_end_per_s']:.1f} end to end)  "
            f"start {row['start_s']:>5.1f} s  "
            f"job overhead {row['job_s']:>5.1f} s  total {row['total_s']:>6.1f} s  peak {row['peak_mib']:>5} MiB  "
            f"errors {row['errors']}")


def _summary(rows: list[dict], cpus: int) -> list[str]:
    lines = []
    for kind in ("photos", "720p video"):
        rate = {(r["engine"], r["actors"]): r["per_s"] for r in rows if r["input"] == kind}
        two, one, local = rate[("ray", 2)], rate[("ray", 1)], rate[("local", None)]
        lines.append(f"{kind}: ray 2 actors / 1 actor = {two / one:.2f}x (goal >= 1.7x); "
                     f"ray 2 actors / local = {two / local:.2f} (goal >= 0.9), on {cpus} CPUs")
    return lines


if __name__ == "__main__":
    main()
