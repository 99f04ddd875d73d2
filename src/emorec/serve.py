"""`emorec serve`: the recognizer behind an HTTP API and a web page (FastAPI on Uvicorn).

    POST /v1/predict   multipart field `files` (one or more photos); ?tta=flip&detect=false
                       -> a JSON list, one object per file in upload order, shaped as
                          `emorec predict --json` prints it (source = the uploaded name)
                       ?stream=ID: the file is the next frame of a live stream (the web
                          page's webcam); each face gets `track`, an id that stays with
                          the same person across that stream's frames
    GET  /v1/model     class names, input size, model file, versions, model card figures
    GET  /healthz      200 once the model is loaded
    GET  /             the web page (photos or the webcam; served from the package, works offline)
    GET  /docs         the OpenAPI page

Bad requests never hurt the service: a body over `max_upload_mb` gets 413
before it is read, a file that is not a usable image gets its own `error`
(422 when every file failed), and the sizes in image headers are checked
before decoding (the reader of `emorec check`). Inference runs on
`workers` threads; at most `queue` requests are admitted at once, the
others get 503 with Retry-After. Needs the `serve` extra (FastAPI, Uvicorn).
"""


import asyncio
import json
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np

from emorec import __version__
from emorec.config import ServeConfig, tta_mode
from emorec.data import ImageReadError, read_image
from emorec.faces import Face
from emorec.recognizer import Prepared, Recognizer
from emorec.report import emotion_colours
from emorec.results import ImageResult
from emorec.tracking import FaceTracker, face_descriptors

WEB = Path(__file__).parent / "web"


class Admission:
    """Counts requests in the service; refuses one more than `limit` instead of queueing without end."""

    def __init__(self, limit: int):
        self.limit, self.count, self.lock = limit, 0, threading.Lock()

    def enter(self) -> bool:
        """Admit one request unless `limit` are already in; True if admitted."""
        with self.lock:
            if self.count >= self.limit:
                return False
            self.count += 1
            return True

    def leave(self) -> None:
        """One admitted request is done."""
        with self.lock:
            self.count -= 1


class UploadGate:
    """ASGI middleware in front of uploads: 503 when `admission` is full, 413 for a body over `limit` bytes.

    A request is admitted (or refused with Retry-After) before its body is
    read; the body is then read here, up to the limit, before the
    application parses it. Memory for uploads is therefore bounded by
    queue x limit, however many clients connect.
    """

    def __init__(self, app, limit: int, admission: Admission, paths: tuple[str, ...] = ("/v1/predict",)):
        self.app, self.limit, self.admission, self.paths = app, limit, admission, paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in self.paths:
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _answer(send, 413, f"request body over {self.limit / 1e6:g} MB")
        if not self.admission.enter():
            return await _answer(send, 503, "busy: too many requests in the queue", [(b"retry-after", b"1")])
        try:
            messages, seen = [], 0
            while True:
                message = await receive()
                messages.append(message)
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    return await _answer(send, 413, f"request body over {self.limit / 1e6:g} MB")
                if message["type"] != "http.request" or not message.get("more_body", False):
                    break

            async def replay():
                return messages.pop(0) if messages else await receive()

            await self.app(scope, replay, send)
        finally:
            self.admission.leave()


async def _answer(send, status: int, detail: str, headers: list | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def recognize_uploads(recognizer: Recognizer, uploads: list[tuple[str, bytes]]) -> list[ImageResult]:
    """One ImageResult per (file name, bytes), in order; the faces of all files share one model call."""
    prepared: list[tuple[int, Prepared]] = []
    results = [ImageResult(name) for name, _ in uploads]
    for index, (name, payload) in enumerate(uploads):
        try:
            prepared.append((index, recognizer.prepare(decode_upload(name, payload))))
        except (ImageReadError, ValueError) as error:
            results[index].error = str(error)
    for (index, _), faces in zip(prepared, recognizer.classify_prepared([item for _, item in prepared])):
        results[index].faces = faces
    return results


STREAM_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class StreamTrackers:
    """A FaceTracker per live stream id, so each webcam keeps its own track ids.

    At most `limit` streams are followed (a new one pushes out the one idle
    longest) and a stream without a frame for `idle_seconds` is forgotten:
    memory stays bounded whatever clients send. Frames are numbered by their
    arrival time at `fps`, so the trackers' motion model sees real time
    between frames however irregularly a browser posts them.
    """

    def __init__(self, limit: int = 64, idle_seconds: float = 60.0, fps: float = 10.0, buffer_seconds: float = 3.0,
                 clock=time.monotonic):
        self.limit, self.idle_seconds, self.fps, self.buffer_seconds = limit, idle_seconds, fps, buffer_seconds
        self.clock, self.lock = clock, threading.Lock()
        self.streams: OrderedDict[str, tuple[FaceTracker, float, float]] = OrderedDict()  # id -> tracker, start, last

    def __len__(self) -> int:
        return len(self.streams)

    def assign(self, stream: str, prepared: Prepared, frame_size: tuple[int, int]) -> list[int]:
        """Track ids for the faces of a stream's next frame, in the order of prepared.regions."""
        boxes = [region.box if isinstance(region, Face) else (0, 0, *frame_size) for region in prepared.regions]
        scores = [region.score if isinstance(region, Face) else 1.0 for region in prepared.regions]
        descriptors = face_descriptors(prepared.crops)
        with self.lock:
            now = self.clock()
            tracker, start = self._tracker(stream, now)
            frame = max(round((now - start) * self.fps), (tracker.last_frame or 0) + 1)
            return tracker.update(frame, np.array(boxes, float).reshape(-1, 4), descriptors, np.array(scores))

    def _tracker(self, stream: str, now: float) -> tuple[FaceTracker, float]:
        for old in [key for key, (*_, last) in self.streams.items() if now - last > self.idle_seconds]:
            del self.streams[old]
        tracker, start, _ = self.streams.pop(stream, None) or (FaceTracker(self.fps, self.buffer_seconds), now, now)
        while len(self.streams) >= self.limit:
            self.streams.popitem(last=False)  # the stream idle longest
        self.streams[stream] = (tracker, start, now)
        return tracker, start


def recognize_frame(recognizer: Recognizer, upload: tuple[str, bytes], trackers: StreamTrackers, stream: str) -> dict:
    """One frame of a live stream as `predict --json` shapes it, each face with its `track` id in that stream."""
    name, payload = upload
    try:
        image = decode_upload(name, payload)
        prepared = recognizer.prepare(image)
    except (ImageReadError, ValueError) as error:
        return ImageResult(name, error=str(error)).to_dict()
    [faces] = recognizer.classify_prepared([prepared])
    tracks = trackers.assign(stream, prepared, image.shape[1::-1])
    return ImageResult(name, [replace(face, track=track) for face, track in zip(faces, tracks)]).to_dict()


def decode_upload(name: str, payload: bytes):
    """An uploaded file as a BGR array, through the same safe reader as files on disk; errors name the upload."""
    suffix = Path(name).suffix.lower()
    if not re.fullmatch(r"\.[a-z0-9]{1,5}", suffix):
        suffix = ".img"
    with tempfile.NamedTemporaryFile(suffix=suffix, prefix="emorec-upload-") as handle:
        handle.write(payload)
        handle.flush()
        try:
            return read_image(handle.name, reduce=True)
        except ImageReadError as error:
            raise ImageReadError(str(error).replace(handle.name, name)) from None


def model_card_figures(path: Path | None) -> dict[str, str]:
    """The results table of the model card beside a model file (NAME.md), as {row: "accuracy, macro-F1"}."""
    if path is None:
        return {}
    card = path.with_name(path.name.split(".")[0] + ".md")
    if not card.is_file():
        return {}
    figures = {}
    for line in card.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip().strip("*") for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[1].endswith("%") and cells[0] and not cells[0].startswith("-"):
            figures[cells[0]] = f"accuracy {cells[1]}, macro-F1 {cells[2]}"
    return figures


def create_app(cfg: ServeConfig, recognizer: Recognizer | None = None):
    """The FastAPI application: the model loads once at start-up (or is given), endpoints stay thin."""
    from emorec.extras import require

    require("fastapi", "the service")
    from fastapi import FastAPI, File, HTTPException, Query, UploadFile
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles

    state: dict = {}
    admission = Admission(cfg.queue)
    trackers = StreamTrackers()
    pool = ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="emorec-infer")

    @asynccontextmanager
    async def lifespan(app):
        state["recognizer"] = recognizer or Recognizer(cfg.model, detector=cfg.detector)
        yield
        pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="emorec", version=__version__, lifespan=lifespan,
                  description="Facial emotion recognition: faces, boxes and the probability of each emotion.")
    app.state.admission = admission
    app.add_middleware(UploadGate, limit=int(cfg.max_upload_mb * 1e6), admission=admission)

    @app.get("/healthz")
    def healthz():
        """200 once the model is loaded."""
        if "recognizer" not in state:
            raise HTTPException(503, "model not loaded yet")
        return {"status": "ok"}

    @app.get("/v1/model")
    def model_info():
        """The loaded model: classes, input, file, versions and the model card's figures."""
        rec: Recognizer = state["recognizer"]
        path = rec.runtime.path
        return {"class_names": rec.class_names, "image_size": rec.info.image_size, "color_mode": rec.info.color_mode,
                "arch": rec.info.arch, "model_file": path.name if path else None, "emorec_version": __version__,
                "model_card": model_card_figures(path), "colours": emotion_colours(rec.class_names)}

    @app.post("/v1/predict")
    async def predict(files: list[UploadFile] = File(...), tta: str = Query("none", description="none, flip or multi"),
                      detect: bool = Query(True, description="false: each file is already a face crop"),
                      stream: str | None = Query(None, description="a live stream's id (letters, digits, - and _): "
                                                 "the file is its next frame and each face gets a `track` id")):
        """Faces and emotions for each uploaded photo, in upload order."""
        try:
            mode = tta_mode(tta)
        except ValueError as error:
            raise HTTPException(422, str(error)) from None
        if len(files) > cfg.max_files:
            raise HTTPException(413, f"at most {cfg.max_files} files per request")
        if stream is not None and (not STREAM_ID.fullmatch(stream) or len(files) != 1):
            raise HTTPException(422, "stream: one frame per request, and an id of 1 to 64 letters, digits, - or _")
        uploads = [(file.filename or f"file{i + 1}", await file.read()) for i, file in enumerate(files)]
        rec = state["recognizer"].with_options(tta=mode, detect=detect)
        loop = asyncio.get_running_loop()
        if stream is not None:
            body = await loop.run_in_executor(pool, recognize_frame, rec, uploads[0], trackers, stream)
            return JSONResponse([body], status_code=422 if body["error"] else 200)
        results = await loop.run_in_executor(pool, recognize_uploads, rec, uploads)
        body = [result.to_dict() for result in results]
        return JSONResponse(body, status_code=422 if all(r.error for r in results) else 200)

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(WEB / "index.html")

    app.mount("/static", StaticFiles(directory=WEB), name="static")
    return app


def serve(cfg: ServeConfig) -> None:
    """Run the service with Uvicorn until interrupted."""
    from emorec.extras import require

    for module in ("fastapi", "uvicorn"):
        require(module, "the service")
    import uvicorn

    app = create_app(cfg)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=os.environ.get("EMOREC_LOG_LEVEL", "warning"))
