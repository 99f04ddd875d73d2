"""Batch inference past one machine: `emorec predict --engine ray` and `predict_dataset` on Ray Data.

The work is the local engine's (emorec.predict), spread over a Ray cluster
(or a Ray started on this machine for one command):

1. planning tasks turn each path into work: a photo stays one item, a video
   is split into ranges of FRAMES_PER_TASK frames;
2. decoding tasks read each photo or frame range and locate and crop the
   faces (`read_photo` and `Recognizer.prepare`, the local engine's own);
3. a pool of classifier actors, each loading the ONNX model once, classifies
   the faces of many photos and frames per model call and turns them into
   result rows (one per face, or one for a photo or frame without faces or
   with an error); a video frame's rows also carry each face's appearance
   descriptor (`emorec.tracking.face_descriptor`, computed where the crops
   are made).

Rows are flat, so they go straight to Parquet; `results_from_rows` turns
them back into the local engine's `ImageResult`s, so `--csv`, `--json` and
the text lines are the local engine's, written by the same writers. Bad
files give the same error rows and never fail the job. Video rows come back
in time order; the driver follows the people through them with the local
engine's tracker (`emorec.video.VideoTracks`: track ids, per-track smoothing),
so a video cut into frame ranges gets the same tracks as on one machine, and
writes the per-video CSV with the local engine's writer.

Needs the `ray` extra (`pip install 'emorec[ray]'`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import cv2
import numpy as np

from emorec.catalog import onnx_path
from emorec.config import PredictConfig
from emorec.errors import EmorecError, UsageError
from emorec.files import OutputPathError, atomic_path, check_targets
from emorec.predict import PHOTOS_PER_CALL, error_line, read_photo, video_outputs
from emorec.recognizer import Recognizer
from emorec.results import FaceResult, ImageResult, VideoSummary
from emorec.results import rows as result_rows
from emorec.runtime import load_runtime, read_info
from emorec.tracking import DESCRIPTOR_SIZE, face_descriptors
from emorec.sources import expand_sources, is_video, plan_sources
from emorec.video import FrameCsv, VideoTracks, capture_fps, count_faces, open_capture, read_frames

FRAMES_PER_TASK = 300  # frames one decoding task reads from a video (10 s at 30 fps)
CPUS_PER_ACTOR = 3  # default pool: one classifier per 3 CPUs (a face: ~10 ms of a core to classify, ~14 to find)
ACTOR_CPUS = 0.5  # what an actor reserves: it waits for decoded faces most of the time
PARQUET_NAME = "results.parquet"
RAY_DEADLINE_S = 60.0  # to start a local Ray or connect to a cluster (a local start took ~10 s on 2 busy cores)
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # what a gRPC client sends first
HTTP2_EMPTY_SETTINGS, HTTP2_SETTINGS = b"\0\0\0\x04\0\0\0\0\0", 4  # a settings frame, and its type


class EngineError(EmorecError, ValueError):
    """Ray could not start, connect or finish the job; the message is one line."""


# ----------------------------------------------------------------------------
# Rows: the flat form of results, for Parquet and between the stages
# ----------------------------------------------------------------------------


def row_schema(class_names: list[str], descriptor: bool = False):
    """The Arrow schema of result rows: where (source, frame, time_s), which face (its number in the
    frame, its track id in a video) and its box, the detector score, one probability column per class,
    the top emotion, and the error if any; with descriptor, also the face's appearance descriptor
    (float32 bytes), which the classifiers hand to the driver's tracker and Parquet leaves out."""
    import pyarrow as pa

    extra = [("descriptor", pa.binary())] if descriptor else []
    return pa.schema([("source", pa.string()), ("frame", pa.int64()), ("time_s", pa.float64()), ("face", pa.int32()),
                      ("track", pa.int32()), *[(key, pa.int32()) for key in "xywh"], ("score", pa.float64()),
                      *[(name, pa.float64()) for name in class_names], ("emotion", pa.string()), ("error", pa.string()),
                      *extra])


def rows_of(result: ImageResult, class_names: list[str], frame: int | None = None,
            time_s: float | None = None) -> list[dict[str, Any]]:
    """The rows of one photo (or video frame) in the results.rows form, with the error of a failed photo."""
    return result_rows(result.faces, class_names, source=result.source, frame=frame, time_s=time_s, error=result.error)


def faces_of(rows: list[dict[str, Any]], class_names: list[str]) -> list[FaceResult]:
    """The faces that rows_of wrote for one photo or frame."""
    faces = []
    for row in rows:
        if row["face"] is not None:
            box = None if row["x"] is None else tuple(row[key] for key in "xywh")
            faces.append(FaceResult(box, {name: row[name] for name in class_names}, row["score"]))
    return faces


# ----------------------------------------------------------------------------
# The stages (run in Ray tasks and actors)
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """What the stages need to know, sent to every task and actor."""

    model: str | None = None
    detector: str = "auto"
    detect: bool = True
    tta: str = "none"
    stride: int = 1
    frames_per_task: int = FRAMES_PER_TASK


_RECOGNIZERS: dict[Options, Recognizer] = {}


def _recognizer(options: Options) -> Recognizer:
    """One Recognizer per worker process and options (loaded on first use, one ONNX thread: Ray runs many workers)."""
    if options not in _RECOGNIZERS:
        cv2.setNumThreads(1)
        runtime = load_runtime(options.model, threads=1)
        _RECOGNIZERS[options] = Recognizer(runtime=runtime, detector=options.detector, detect=options.detect,
                                           tta=options.tta)
    return _RECOGNIZERS[options]


def _plan(row: dict[str, Any], options: Options) -> list[dict[str, Any]]:
    """A photo: itself. A video: its frame ranges (the last one reads to the end), or an error."""
    path = row["path"]
    if not is_video(path):
        return [{"source": path, "start": -1, "stop": -1, "fps": 0.0, "error": None}]
    try:
        capture = open_capture(path)
    except ValueError as error:
        return [{"source": path, "start": -1, "stop": -1, "fps": 0.0, "error": str(error)}]
    try:
        fps, count = capture_fps(capture), max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 1)
    finally:
        capture.release()
    step = max(options.frames_per_task // options.stride, 1) * options.stride  # ranges start on classified frames
    starts = list(range(0, count, step))
    return [{"source": path, "start": start, "stop": start + step if start != starts[-1] else -1, "fps": fps,
             "error": None} for start in starts]


def _decode(row: dict[str, Any], options: Options) -> list[dict[str, Any]]:
    """A photo or a frame range decoded, its faces located and cropped (pickled Prepared; for frames
    also the crops' appearance descriptors), or the error."""
    recognizer = _recognizer(options)
    source = row["source"]
    if row["error"] is not None:
        return [{"source": source, "frame": None, "time_s": None, "prepared": None, "error": row["error"]}]
    if row["start"] < 0:
        try:
            _, prepared = read_photo(recognizer, Path(source))
        except Exception as error:  # noqa: BLE001 - error_line re-raises what is not a bad file
            return [{"source": source, "frame": None, "time_s": None, "prepared": None,
                     "error": error_line(Path(source), error)}]
        return [{"source": source, "frame": None, "time_s": None, "prepared": pickle.dumps(prepared), "error": None}]
    return list(_decode_frames(source, row["start"], row["stop"], row["fps"], recognizer, options.stride))


def _decode_frames(source: str, start: int, stop: int, fps: float, recognizer: Recognizer,
                   stride: int) -> Iterator[dict[str, Any]]:
    capture = open_capture(source)
    try:
        if start:
            capture.set(cv2.CAP_PROP_POS_FRAMES, start)
        for offset, frame in read_frames(capture):
            index = start + offset
            if stop >= 0 and index >= stop:
                return
            if index % stride == 0:
                prepared = recognizer.prepare(frame)
                descriptors = face_descriptors(prepared.crops)
                yield {"source": source, "frame": index, "time_s": index / fps,
                       "prepared": pickle.dumps((prepared, descriptors)), "error": None}
    finally:
        capture.release()


class Classifier:
    """A Ray Data actor: loads the model once, classifies the faces of a batch of photos and frames in one call."""

    def __init__(self, options: Options):
        self.recognizer = _recognizer(options)
        self.schema = row_schema(self.recognizer.class_names, descriptor=True)

    def __call__(self, batch) -> Any:
        """A pyarrow batch of decoded items -> a pyarrow table of result rows, in the same order."""
        import pyarrow as pa

        items = batch.to_pylist()
        ready = [_unpickle(item) for item in items if item["error"] is None]
        faces = iter(self.recognizer.classify_prepared([prepared for prepared, _ in ready]))
        descriptors = iter(descriptor for _, descriptor in ready)
        rows = []
        for item in items:
            result = ImageResult(item["source"], error=item["error"]) if item["error"] is not None else \
                ImageResult(item["source"], next(faces))
            item_rows = rows_of(result, self.recognizer.class_names, item["frame"], item["time_s"])
            looks = next(descriptors) if item["error"] is None else None
            if looks is not None and result.faces:
                for row, look in zip(item_rows, looks):
                    row["descriptor"] = look.tobytes()
            rows += item_rows
        return pa.Table.from_pylist(rows, schema=self.schema)


def _unpickle(item: dict[str, Any]):
    """(Prepared, descriptors or None) of a decoded item: frames carry descriptors, photos do not."""
    loaded = pickle.loads(item["prepared"])
    return loaded if isinstance(loaded, tuple) else (loaded, None)


def predict_dataset(dataset, model: str | None = None, detector: str = "auto", detect: bool = True,
                    tta: str = "none", stride: int = 1, actors: int | tuple[int, int] = 1,
                    frames_per_task: int = FRAMES_PER_TASK, batch_size: int = PHOTOS_PER_CALL,
                    restart_actors: bool = True):
    """A Ray Dataset of result rows (see `row_schema`) for a Ray Dataset with a `path` column.

    Each path is a photo or a video file (by extension) that every Ray
    worker can read. Photos give one row per face (one row without face
    fields when none was found, or with `error` set when the file is
    unusable); videos give the rows of every stride-th frame, with `frame`
    and `time_s` set, and each face's appearance `descriptor` (float32
    bytes: `np.frombuffer(row["descriptor"], np.float32)`) for tracking;
    `track` is left empty (tracks need the frames in order: see
    `emorec.video.VideoTracks`). actors is the size of the classifier pool (or a
    (min, max) range for Ray to scale within); restart_actors=False
    (for a Ray on one machine) turns off Ray's restarting of lost actors. With the DataContext's
    `preserve_order` on, rows come in input order and frames in time order.
    """
    import ray.data

    read_info(onnx_path(model))  # a missing or foreign model fails here, not in every worker
    options = Options(str(model) if model is not None else None, detector, detect, tta, stride, frames_per_task)
    pool = ray.data.ActorPoolStrategy(min_size=actors[0], max_size=actors[1]) if isinstance(actors, tuple) \
        else ray.data.ActorPoolStrategy(size=actors)
    planned = dataset.flat_map(_plan, fn_kwargs={"options": options})
    decoded = planned.flat_map(_decode, fn_kwargs={"options": options})
    # Ray restarts lost actors (a node that went away), and then logs an error line per actor at start-up;
    # on one machine nothing can be lost without the whole job, so a local run asks for no restarts.
    restarts = {} if restart_actors else {"max_restarts": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # passing max_restarts is "deprecated" in favour of nothing yet
        return decoded.map_batches(Classifier, fn_constructor_kwargs={"options": options}, compute=pool,
                                   num_cpus=ACTOR_CPUS, batch_size=batch_size, batch_format="pyarrow", **restarts)


# ----------------------------------------------------------------------------
# Ray for one command
# ----------------------------------------------------------------------------


@contextlib.contextmanager
def ray_session(address: str | None = None, cpus: int = 0, deadline: float = RAY_DEADLINE_S) -> Iterator[int]:
    """Connect to the Ray cluster at address (or $RAY_ADDRESS), else start a quiet local Ray with cpus CPUs
    (0: all); yields the cluster's CPU count. Connecting gets `deadline` seconds, and so does starting a local
    Ray (in the main thread). A local Ray is shut down at the end, also when it failed to start."""
    from emorec.extras import require

    require("ray", "--engine ray")
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None and ray.is_initialized():  # the caller's own Ray session: use it, leave it running
        yield int(ray.cluster_resources().get("CPU", 1))
        return
    quiet = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        with _interrupts_deferred() as interrupted:  # Ray stopped half-way leaves its helper processes behind
            if address:
                _probe(address, min(deadline, 5.0))
                _connect(address, quiet, deadline)
            else:
                with _deadline(deadline):
                    ray.init(address="local", num_cpus=cpus or os.cpu_count() or 1, **quiet)
    except (ConnectionError, RuntimeError, ValueError, _DeadlinePassed) as error:
        if not address:  # a local Ray started half-way: stop what it started
            ray.shutdown()
        raise EngineError(f"cannot {'connect to Ray at ' + address if address else 'start a local Ray'}: "
                          f"{_last_line(error)}") from None
    try:
        if interrupted:
            raise KeyboardInterrupt
        _quiet_ray_data()
        yield int(ray.cluster_resources().get("CPU", 1))
    finally:
        ray.shutdown()


def _connect(address: str, options: dict, deadline: float) -> None:
    """ray.init(address) in a helper thread, given up after deadline seconds: Ray's client waits in C++
    code for a minute or more at a time, where no signal can interrupt it."""
    import threading

    import ray

    done, failures = threading.Event(), []

    def connect() -> None:
        try:
            ray.init(address=address, **options)
        except BaseException as error:  # noqa: BLE001 - handed to the caller's thread
            failures.append(error)
        finally:
            done.set()

    threading.Thread(target=connect, name="emorec-ray-connect", daemon=True).start()
    if not done.wait(deadline):
        raise _DeadlinePassed(f"no answer within {deadline:g} s")
    if failures:
        raise failures[0]


class _DeadlinePassed(BaseException):
    """Raised into a Ray start-up or connection that took too long (not an Exception: Ray's retry loops
    catch those and go on retrying)."""


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """_DeadlinePassed is raised in the block once `seconds` have passed (main thread only: it uses SIGALRM)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(*args):
        raise _DeadlinePassed(f"no answer within {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[list]:
    """Ctrl-C inside the block is recorded (the yielded list becomes non-empty) instead of raised."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    received: list = []
    previous = signal.signal(signal.SIGINT, lambda *args: received.append(True))
    try:
        yield received
    finally:
        signal.signal(signal.SIGINT, previous)


def _probe(address: str, timeout: float = 5.0) -> None:
    """ConnectionError unless host:port of a Ray address answers like Ray (gRPC: HTTP/2 settings) within timeout.

    Ray itself retries for minutes on a port that is closed or that speaks another protocol.
    """
    import socket

    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise EngineError(f"{address!r} is not HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as connection:
            connection.sendall(HTTP2_PREFACE + HTTP2_EMPTY_SETTINGS)
            answer = connection.recv(9)
    except socket.timeout:
        raise ConnectionError(f"no answer from {host}:{port} within {timeout:g} s (not a Ray port?)") from None
    except OSError as error:
        raise ConnectionError(error.strerror or str(error) or "no answer") from None
    if len(answer) < 9 or answer[3] != HTTP2_SETTINGS:  # every gRPC server opens with its settings frame
        raise ConnectionError(f"{host}:{port} does not answer like Ray (no gRPC)")


def _quiet_ray_data() -> None:
    """Ray Data's own progress bars and execution logs off: emorec shows its own bar."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _last_line(error: BaseException) -> str:
    """The last non-empty line of an error: where Ray's exceptions say what went wrong."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def default_actors(cpus: int) -> int:
    """Classifier actors for a cluster of cpus CPUs when the user names none."""
    return max(1, cpus // CPUS_PER_ACTOR)


# ----------------------------------------------------------------------------
# The `emorec predict --engine ray` entry
# ----------------------------------------------------------------------------


def run_predict_ray(cfg: PredictConfig, progress: bool = True, parquet: str | Path | None = None,
                    frames_per_task: int = FRAMES_PER_TASK) -> list[ImageResult]:
    """`run_predict` on Ray: the same results and the same per-video CSVs, from a local Ray or a cluster.

    With parquet (a folder), every row is also written to parquet/results.parquet.
    Videos are cut into ranges of frames_per_task frames, decoded in parallel.
    """
    if cfg.save_annotated:
        raise UsageError("--save-annotated runs on the local engine only (leave out --engine ray)")
    errors, images, videos = plan_sources(cfg.sources)
    webcams = [source for source, name in videos if not is_video(source)]
    if webcams:
        raise UsageError(f"{webcams[0]}: a webcam runs on the local engine only (leave out --engine ray)")
    photos = [str(path) for path, _ in expand_sources(images) if not is_video(path)]
    video_jobs = _video_jobs(videos, cfg)
    class_names = read_info(onnx_path(cfg.model)).class_names
    paths = photos + [job.source for job in video_jobs if isinstance(job, _VideoJob)]
    if not paths:
        return errors + video_jobs
    remote = bool(cfg.address or os.environ.get("RAY_ADDRESS"))
    if not remote:
        _check_local_size(cfg, os.cpu_count() or 1)
    # A local Ray gets the actors' share on top of the CPUs that decode: an actor mostly waits for faces.
    decoding = cfg.cpus or os.cpu_count() or 1
    local_cpus = decoding + math.ceil((cfg.actors or default_actors(decoding)) * ACTOR_CPUS)
    with ray_session(cfg.address, local_cpus) as cpus, _parquet_sink(parquet, class_names) as sink:
        import ray.data

        ray.data.DataContext.get_current().execution_options.preserve_order = True  # rows are matched to inputs
        if remote and cfg.cpus > cpus:
            raise UsageError(f"--cpus {cfg.cpus} is more than the {cpus} CPUs of the Ray cluster")
        actors = cfg.actors or default_actors(cpus)
        if actors * ACTOR_CPUS + 1 > cpus:  # else no CPU is left for decoding, and the job waits forever
            raise UsageError(f"--actors {actors} leaves no CPU for decoding on a Ray with {cpus} CPUs; "
                             f"use at most {int((cpus - 1) / ACTOR_CPUS)} actors")
        dataset = ray.data.from_items([{"path": path} for path in paths])
        rows = predict_dataset(dataset, cfg.model, cfg.detector, cfg.detect, cfg.tta, cfg.stride, actors=actors,
                               frames_per_task=frames_per_task, restart_actors=remote)
        stream = _Peekable(_rows(rows, len(paths), progress))
        try:
            results = [_photo_result(stream, path, class_names, sink) for path in photos]
            results += [_video_result(stream, job, cfg, class_names, sink) if isinstance(job, _VideoJob) else job
                        for job in video_jobs]
        except ray.exceptions.RayError as error:
            raise EngineError(f"the Ray job failed: {_last_line(error)}") from None
    return errors + results


def _check_local_size(cfg: PredictConfig, machine: int) -> None:
    """UsageError unless --cpus and --actors fit this machine: a local Ray starts a worker process per CPU
    it is given (113 of them for --cpus 100000 on 2 cores, and the job never began)."""
    if cfg.cpus > machine:
        raise UsageError(f"--cpus {cfg.cpus} is more than the {machine} CPUs of this machine")
    if cfg.actors * ACTOR_CPUS > machine:
        raise UsageError(f"--actors {cfg.actors} is more than a local Ray on this machine's {machine} CPUs can run "
                         f"(at most {int(machine / ACTOR_CPUS)})")


@dataclass
class _VideoJob:
    source: str
    csv_path: Path
    frames: int  # what the container says; the summary's frame count is checked against the rows
    fps: float


def _video_jobs(videos: list[tuple[str, Path | None]], cfg: PredictConfig) -> list[_VideoJob | ImageResult]:
    """The videos to run, or error results for those whose CSV exists (the local engine's check), in order."""
    jobs: list[_VideoJob | ImageResult] = []
    for source, name in videos:
        csv_path, _ = video_outputs(source, cfg, name)
        try:
            check_targets([csv_path], cfg.exist_ok, inputs=[source])
        except (FileExistsError, OutputPathError) as error:
            jobs.append(ImageResult(str(source), error=str(error)))
            continue
        frames, fps = 0, 0.0
        with contextlib.suppress(ValueError):  # an unreadable video gets its error row from the job
            capture = open_capture(source)
            frames, fps = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), capture_fps(capture)
            capture.release()
        jobs.append(_VideoJob(str(source), csv_path, frames, fps))
    return jobs


def _rows(dataset, total: int, progress: bool) -> Iterator[dict[str, Any]]:
    """The dataset's rows in order."""
    from emorec.progress import bar as progress_bar

    with warnings.catch_warnings(), progress_bar(total=total, desc="photos and videos", unit="item",
                                                 enabled=progress) as bar:
        warnings.simplefilter("ignore")  # Ray's deprecation notices are not the user's business
        last = None
        for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
            for row in batch.to_pylist():
                if (row["source"], row["frame"] is None) != last:
                    bar.update()
                    last = (row["source"], row["frame"] is None)
                yield row


class _Peekable:
    """An iterator that can look at its next item."""

    def __init__(self, items: Iterable):
        self.items, self.head = iter(items), None
        self._advance()

    def _advance(self) -> None:
        self.head = next(self.items, None)

    def take(self) -> dict[str, Any]:
        """The next item (the job's rows cannot run out before every input is answered)."""
        item = self.head
        if item is None:
            raise EngineError("the Ray job returned fewer rows than it was given inputs")
        self._advance()
        return item


def _photo_result(stream: _Peekable, path: str, class_names: list[str], sink) -> ImageResult:
    """The ImageResult of the next photo's rows (one per face, or one without a face); the rows go to the sink."""
    rows = [stream.take()]
    while rows[0]["face"] == 1 and stream.head is not None and stream.head["source"] == path \
            and stream.head["frame"] is None and (stream.head["face"] or 0) > rows[-1]["face"]:
        rows.append(stream.take())
    sink(rows)
    return ImageResult(path, faces_of(rows, class_names), error=rows[0]["error"])


def _video_result(stream: _Peekable, job: _VideoJob, cfg: PredictConfig, class_names: list[str],
                  sink) -> ImageResult:
    """Follow the people through a video's frame rows (in time order, as the local engine does), write
    its CSV, hand the rows with their track ids to the sink, and return its result."""
    first = stream.head
    if first is not None and first["source"] == job.source and first["frame"] is None:  # it could not be opened
        row = stream.take()
        sink([row])
        return ImageResult(job.source, error=row["error"])
    summary = VideoSummary(job.source, fps=job.fps, csv_path=str(job.csv_path))
    people = VideoTracks(job.fps, class_names, cfg.track_buffer, cfg.smooth)
    last = -1
    with FrameCsv(job.csv_path, class_names) as csv_rows:
        while stream.head is not None and stream.head["source"] == job.source and stream.head["frame"] is not None \
                and stream.head["frame"] > last:
            rows = [stream.take()]
            while stream.head is not None and stream.head["frame"] == rows[0]["frame"] and \
                    stream.head["source"] == job.source:
                rows.append(stream.take())
            last = rows[0]["frame"]
            face_rows = [row for row in rows if row["face"] is not None]
            faces = people.follow(last, faces_of(face_rows, class_names), _descriptors(face_rows))
            for row, face in zip(face_rows, faces):
                row["track"] = face.track
            sink(rows)
            csv_rows.write(rows[0]["time_s"], last, faces)
            count_faces(summary, faces)
    summary.frames = min(max(job.frames, last + 1), last + cfg.stride) if last >= 0 else job.frames
    summary.tracks = people.tracks()
    return ImageResult(job.source, video=summary)


def _descriptors(face_rows: list[dict[str, Any]]) -> np.ndarray:
    """The appearance descriptors the classifiers attached to a frame's face rows (N x DESCRIPTOR_SIZE)."""
    if not face_rows:
        return np.zeros((0, DESCRIPTOR_SIZE), np.float32)
    return np.stack([np.frombuffer(row["descriptor"], np.float32) for row in face_rows])


PARQUET_ROWS_PER_WRITE = 10_000  # rows gathered before a Parquet row group is written


@contextlib.contextmanager
def _parquet_sink(folder: str | Path | None, class_names: list[str]):
    """A function that appends result rows (dicts) to folder/results.parquet, written atomically at the end."""
    if folder is None:
        yield lambda rows: None
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = row_schema(class_names)  # without the descriptor column
    waiting: list[dict[str, Any]] = []
    with atomic_path(Path(folder) / PARQUET_NAME, suffix=".parquet") as tmp:
        with pq.ParquetWriter(tmp, schema) as writer:

            def sink(rows: list[dict[str, Any]]) -> None:
                waiting.extend(rows)
                if len(waiting) >= PARQUET_ROWS_PER_WRITE:
                    writer.write_table(pa.Table.from_pylist(waiting, schema=schema))
                    waiting.clear()

            yield sink
            if waiting:
                writer.write_table(pa.Table.from_pylist(waiting, schema=schema))
