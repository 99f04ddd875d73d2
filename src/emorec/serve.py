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
(after what the client sent is read and dropped, up to a bound), a body
that arrives slower than `min_upload_kbps` after `body_grace_s` gets 408
and never holds a place in the queue, a file that is not a usable image
gets its own `error` (422 when every file failed), and the sizes in image
headers are checked before decoding (the reader of `emorec check`).
Decoded pixels are budgeted across requests (`decode_mb`, read from the
headers first): a request waits briefly for its share, then gets 503 with
Retry-After, and one image over MAX_DECODED_BYTES gets its own error.
Inference runs on `workers` threads; at most `queue` requests are admitted
at once, the others get 503 with Retry-After. Needs the `serve` extra
(FastAPI, Uvicorn).
"""


import asyncio
import contextlib
import io
import json
import os
import re
import tempfile
import threading
import time
import warnings
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np

from emorec import __version__
from emorec.config import ServeConfig, tta_mode
from emorec.images import MAX_PIXELS, ImageReadError, read_image
from emorec.faces import Face
from emorec.recognizer import Prepared, Recognizer
from emorec.report import emotion_colours
from emorec.results import ImageResult
from emorec.tracking import FaceTracker, face_descriptors

WEB = Path(__file__).parent / "web"
MAX_DECODED_BYTES = 256 * 2**20  # one image's pixels, decoded: the reader's per-image byte budget
DECODE_WAIT_S = 2.0  # how long a request waits for decoded-pixel budget before its 503
DISCARD_BYTES = 128 * 2**20  # a refused body is read and dropped up to this size, then the socket closes


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


class ByteBudget:
    """Bytes in flight across requests (upload bodies, decoded pixels): taken before use, given back after."""

    def __init__(self, limit: int):
        self.limit, self.used, self.changed = limit, 0, threading.Condition()

    def take(self, amount: int, wait: float = 0.0) -> bool:
        """Take amount bytes, waiting up to `wait` seconds for others to give theirs back; True if taken."""
        with self.changed:
            if not self.changed.wait_for(lambda: self.used + amount <= self.limit, timeout=wait):
                return False
            self.used += amount
            return True

    def give(self, amount: int) -> None:
        """Give back bytes taken earlier."""
        with self.changed:
            self.used -= amount
            self.changed.notify_all()


class Refused(Exception):
    """An upload answered before the application sees it: status, one-line reason, extra headers."""

    def __init__(self, status: int, detail: str, headers: list | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or []


class UploadGate:
    """ASGI middleware in front of uploads: reads the body under a deadline, then admits the request.

    The body is read first, so a client that sends slowly holds no place in
    the queue, and it must keep up `min_rate` bytes per second once `grace`
    seconds have passed (else 408). Bodies being read share `bodies`
    (queue x limit bytes; more get 503), and admitted ones are at most
    queue x limit more, so memory for uploads stays bounded however many
    clients connect. A body over `limit` bytes gets 413 after what the
    client sends is read and dropped (up to DISCARD_BYTES), so that clients
    that send the whole body before reading the answer (Python's urllib)
    read the 413 rather than a reset connection. Then the request is
    admitted, or refused with 503 and Retry-After when `admission` is full.
    """

    def __init__(self, app, limit: int, admission: Admission, grace: float = 10.0, min_rate: float = 16_000,
                 paths: tuple[str, ...] = ("/v1/predict",)):
        self.app, self.limit, self.admission, self.paths = app, limit, admission, paths
        self.grace, self.min_rate = grace, min_rate
        self.bodies = ByteBudget(admission.limit * limit)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in self.paths:
            return await self.app(scope, receive, send)
        held = [0]
        try:
            messages = await self._read_body(scope, receive, held)
            if not self.admission.enter():
                raise Refused(503, "busy: too many requests in the queue", [(b"retry-after", b"1")])
        except Refused as refusal:
            return await _answer(send, refusal.status, refusal.detail, [*refusal.headers, (b"connection", b"close")])
        finally:
            self.bodies.give(held[0])
            held[0] = 0
        try:
            async def replay():
                return messages.pop(0) if messages else await receive()

            await self.app(scope, replay, send)
        finally:
            self.admission.leave()

    async def _read_body(self, scope, receive, held: list[int]) -> list[dict]:
        """The request's messages, its body complete; Refused (413, 408, 503) when it cannot be taken."""
        headers = dict(scope.get("headers", []))
        length = headers.get(b"content-length", b"")
        too_large = Refused(413, f"request body over {self.limit / 1e6:g} MB")
        if length.isdigit() and int(length) > self.limit:
            if headers.get(b"expect", b"").lower() != b"100-continue":  # else the client has sent nothing yet
                await self._discard(receive, int(length))
            raise too_large
        messages, seen, started = [], 0, time.monotonic()
        while True:
            message = await self._receive_in_time(receive, seen, started)
            messages.append(message)
            size = len(message.get("body", b""))
            seen += size
            if seen > self.limit:
                await self._discard(receive, seen)
                raise too_large
            if not self.bodies.take(size):
                await self._discard(receive, seen)
                raise Refused(503, "busy: too many uploads in progress", [(b"retry-after", b"1")])
            held[0] += size
            if message["type"] != "http.request" or not message.get("more_body", False):
                return messages

    async def _receive_in_time(self, receive, seen: int, started: float) -> dict:
        """The next message, unless the body falls behind min_rate after the grace period (then 408)."""
        left = started + self.grace + seen / self.min_rate - time.monotonic()
        try:
            return await asyncio.wait_for(receive(), timeout=max(left, 0.001))
        except asyncio.TimeoutError:
            raise Refused(408, f"request body arrived slower than {self.min_rate / 1000:g} KB/s") from None

    async def _discard(self, receive, seen: int) -> None:
        """Read and drop the rest of a refused body, up to DISCARD_BYTES and within the rate deadline."""
        started, dropped = time.monotonic(), 0
        with contextlib.suppress(Refused):
            while seen + dropped <= DISCARD_BYTES:
                message = await self._receive_in_time(receive, dropped, started)
                dropped += len(message.get("body", b""))
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return


async def _answer(send, status: int, detail: str, headers: list | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class Busy(Exception):
    """The decoded-pixel budget stayed full while a request waited for its share."""


def recognize_uploads(recognizer: Recognizer, uploads: list[tuple[str, bytes]], budget: ByteBudget | None = None,
                      wait: float = 0.0) -> list[ImageResult]:
    """One ImageResult per (file name, bytes), in order; the faces of all files share one model call.

    Files are decoded one at a time, so a request needs the decoded size of
    its largest file, read from the headers before anything is decoded: that
    much is taken from budget (waiting up to `wait` seconds, else Busy) for
    the time of the decoding. A file that alone would decode to more than
    MAX_DECODED_BYTES (or the whole budget) gets its own error instead.
    """
    results = [ImageResult(name) for name, _ in uploads]
    needed = _refuse_oversized(results, [decoded_bytes(payload) for _, payload in uploads],
                               min(MAX_DECODED_BYTES, budget.limit) if budget else MAX_DECODED_BYTES)
    if budget is not None and not budget.take(needed, wait):
        raise Busy
    try:
        prepared = _prepare(recognizer, uploads, results)
    finally:
        if budget is not None:
            budget.give(needed)
    for (index, _), faces in zip(prepared, recognizer.classify_prepared([item for _, item in prepared])):
        results[index].faces = faces
    return results


def _refuse_oversized(results: list[ImageResult], sizes: list[int], largest: int) -> int:
    """Set the error of each file that decodes to more than `largest` bytes; the largest size left."""
    for result, size in zip(results, sizes):
        if size > largest:
            result.error = (f"{result.source}: decodes to {size / 2**20:,.0f} MiB of pixels, over the "
                            f"{largest / 2**20:,.0f} MiB limit per image")
    return max((size for result, size in zip(results, sizes) if result.error is None), default=0)


def _prepare(recognizer: Recognizer, uploads: list[tuple[str, bytes]],
             results: list[ImageResult]) -> list[tuple[int, Prepared]]:
    """Decode and crop the files without an error yet, one at a time; a file that fails gets its error."""
    prepared: list[tuple[int, Prepared]] = []
    for index, (name, payload) in enumerate(uploads):
        if results[index].error is None:
            try:
                prepared.append((index, recognizer.prepare(decode_upload(name, payload))))
            except (ImageReadError, ValueError) as error:
                results[index].error = str(error)
            except MemoryError:
                results[index].error = f"{name}: not enough memory to decode it now (try again later)"
    return prepared


def decoded_bytes(payload: bytes) -> int:
    """Bytes of pixels the reader allocates to decode an image, from its header: width x height x channels x
    bytes per sample (at least 3 channels: the reader always ends in BGR). 0 for bytes that have no readable
    header (the reader itself then names the problem)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(payload)) as image:
                (width, height), kind, bands = image.size, image.format, len(image.getbands())
                sample = 2 if _sixteen_bit(image, payload) else 1
    except Exception:  # noqa: BLE001 - Pillow raises many types on hostile bytes; the reader reports them
        return 0
    pixels = min(width * height, MAX_PIXELS) if kind in ("JPEG", "MPO") else width * height  # big JPEGs: reduced
    return pixels * max(bands, 3) * sample


def _sixteen_bit(image, payload: bytes) -> bool:
    """Whether an opened image stores 16 bits per sample (Pillow shows 16-bit colour PNGs as 8-bit modes)."""
    if image.format == "PNG":
        return payload[24:25] == b"\x10"  # IHDR bit depth
    if image.format == "TIFF":
        return max(image.tag_v2.get(258, (8,)) or (8,)) > 8  # BitsPerSample
    return image.mode.startswith("I;16")


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


def recognize_frame(recognizer: Recognizer, upload: tuple[str, bytes], trackers: StreamTrackers, stream: str,
                    budget: ByteBudget | None = None, wait: float = 0.0) -> dict:
    """One frame of a live stream as `predict --json` shapes it, each face with its `track` id in that stream.

    Its decoded pixels are taken from budget as in recognize_uploads.
    """
    name, payload = upload
    result = ImageResult(name)
    needed = _refuse_oversized([result], [decoded_bytes(payload)],
                               min(MAX_DECODED_BYTES, budget.limit) if budget else MAX_DECODED_BYTES)
    if result.error is not None:
        return result.to_dict()
    if budget is not None and not budget.take(needed, wait):
        raise Busy
    try:
        image = decode_upload(name, payload)
        prepared = recognizer.prepare(image)
    except (ImageReadError, ValueError) as error:
        return ImageResult(name, error=str(error)).to_dict()
    finally:
        if budget is not None:
            budget.give(needed)
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
    pixels = ByteBudget(int(cfg.decode_mb * 1e6))
    trackers = StreamTrackers()
    pool = ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="emorec-infer")

    @asynccontextmanager
    async def lifespan(app):
        state["recognizer"] = recognizer or Recognizer(cfg.model, detector=cfg.detector)
        yield
        pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="emorec", version=__version__, lifespan=lifespan,
                  description="Facial emotion recognition: faces, boxes and the probability of each emotion.")
    app.state.admission, app.state.pixels = admission, pixels
    app.add_middleware(UploadGate, limit=int(cfg.max_upload_mb * 1e6), admission=admission, grace=cfg.body_grace_s,
                       min_rate=cfg.min_upload_kbps * 1000)

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
        try:
            if stream is not None:
                body = await loop.run_in_executor(pool, recognize_frame, rec, uploads[0], trackers, stream, pixels,
                                                  DECODE_WAIT_S)
                return JSONResponse([body], status_code=422 if body["error"] else 200)
            results = await loop.run_in_executor(pool, recognize_uploads, rec, uploads, pixels, DECODE_WAIT_S)
        except Busy:
            raise HTTPException(503, "busy: too many images being decoded", {"Retry-After": "1"}) from None
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
