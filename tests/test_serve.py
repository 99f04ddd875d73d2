"""The HTTP API through FastAPI's TestClient: every endpoint, every bad upload, 413 and 503, and recovery."""

from __future__ import annotations

import io
import json
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
import zlib

import cv2
import numpy as np
import pytest
from conftest import DEFAULT_CLASSES, FER_CLASSES, PHOTO_NAMES, PHOTOS, require

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from emorec.cli import main  # noqa: E402
from emorec.config import ServeConfig  # noqa: E402
from emorec.serve import ByteBudget, create_app, decoded_bytes, model_card_figures  # noqa: E402


def png_header_bomb(width: int = 100_000, height: int = 100_000, depth: int = 8, color: int = 0) -> bytes:
    """A PNG whose header declares width x height pixels (depth bits, colour type), with one tiny compressed row."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(ServeConfig(max_upload_mb=2, queue=4, workers=2))) as test_client:
        yield test_client


def photo_bytes(name: str = PHOTO_NAMES[0]) -> bytes:
    return require(PHOTOS / name).read_bytes()


def post(client, *files, **params):
    return client.post("/v1/predict", files=[("files", f) for f in files], params=params)


def assert_still_serving(client):
    response = post(client, ("ok.jpg", photo_bytes(), "image/jpeg"))
    assert response.status_code == 200 and response.json()[0]["faces"]


def test_health_model_page_and_docs(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    info = client.get("/v1/model").json()
    assert info["class_names"] == DEFAULT_CLASSES and info["image_size"] == 48 and info["color_mode"] == "grayscale"
    assert info["model_file"] == "emorec-ferplus.onnx" and info["emorec_version"]
    assert info["model_card"]["single pass, FER+ majority labels"].startswith("accuracy 83.82%")
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200
    assert "/v1/predict" in client.get("/openapi.json").json()["paths"]


def test_predict_answers_like_the_cli(client, capsys):
    names = PHOTO_NAMES[:2]
    response = post(client, *[(name, photo_bytes(name), "image/jpeg") for name in names])
    assert response.status_code == 200
    api = response.json()
    assert [r["source"] for r in api] == names
    assert main(["predict", *[str(PHOTOS / name) for name in names], "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    for from_api, from_cli in zip(api, cli):
        assert set(from_api) == set(from_cli)
        assert from_api["faces"] == from_cli["faces"]


def test_query_options(client):
    crop = sorted(require(PHOTOS.parent / "fer2013" / "val" / "happy").glob("*.jpg"))[0].read_bytes()
    [whole] = post(client, ("crop.jpg", crop, "image/jpeg"), detect="false").json()
    assert whole["faces"][0]["box"] is None
    [plain] = post(client, ("a.jpg", photo_bytes(), "image/jpeg")).json()
    [flip] = post(client, ("a.jpg", photo_bytes(), "image/jpeg"), tta="flip").json()
    assert plain["faces"][0]["box"] == flip["faces"][0]["box"]
    assert plain["faces"][0]["probabilities"] != flip["faces"][0]["probabilities"]
    assert post(client, ("a.jpg", photo_bytes(), "image/jpeg"), tta="crops").status_code == 422


@pytest.mark.parametrize("name, payload, reason", [
    ("notes.txt", b"just some text", "not a decodable image"),
    ("empty.jpg", b"", "empty file"),
    ("truncated.jpg", None, "truncated"),
    ("bomb.png", None, "pixel"),
])
def test_bad_files_get_their_own_error_and_never_a_500(client, name, payload, reason):
    if name == "truncated.jpg":
        payload = photo_bytes()[:4000]
    if name == "bomb.png":
        payload = png_header_bomb()
    mixed = post(client, (name, payload, "application/octet-stream"), ("good.jpg", photo_bytes(), "image/jpeg"))
    assert mixed.status_code == 200
    bad, good = mixed.json()
    assert bad["source"] == name and reason in bad["error"] and bad["faces"] == []
    assert "emorec-upload" not in bad["error"]  # the message names the upload, not a temporary file
    assert good["error"] is None and good["faces"]
    alone = post(client, (name, payload, "application/octet-stream"))
    assert alone.status_code == 422 and alone.json()[0]["error"]
    assert_still_serving(client)


def test_oversized_uploads_get_413(client):
    big = np.random.default_rng(0).integers(0, 256, (1200, 1200, 3), dtype=np.uint8)
    payload = cv2.imencode(".png", big)[1].tobytes()
    assert len(payload) > 2_000_000
    assert post(client, ("big.png", payload, "image/png")).status_code == 413

    def chunks():  # no Content-Length: the limit is applied while the body streams in
        body = io.BytesIO(b"--x\r\nContent-Disposition: form-data; name=\"files\"; filename=\"b.png\"\r\n\r\n"
                          + payload + b"\r\n--x--\r\n")
        while block := body.read(65536):
            yield block

    streamed = client.post("/v1/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert streamed.status_code == 413
    assert_still_serving(client)


def test_a_full_queue_answers_503_with_retry_after():
    app = create_app(ServeConfig(queue=1))
    with TestClient(app) as busy_client:
        admission = app.state.admission
        assert admission.enter()  # one request is already in
        response = post(busy_client, ("a.jpg", photo_bytes(), "image/jpeg"))
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        admission.leave()
        assert_still_serving(busy_client)


def test_an_image_that_decodes_over_the_per_image_limit_gets_its_own_error(client):
    sixteen_bit_rgb = png_header_bomb(8000, 8000, depth=16, color=2)  # 64 Mpx, under the pixel limit: 384 MB decoded
    assert decoded_bytes(sixteen_bit_rgb) == 8000 * 8000 * 3 * 2
    response = post(client, ("deep.png", sixteen_bit_rgb, "image/png"))
    assert response.status_code == 422
    [result] = response.json()
    assert result["error"].startswith("deep.png: decodes to 366 MiB") and "limit per image" in result["error"]
    assert_still_serving(client)


def test_decoded_pixels_are_budgeted_across_requests():
    app = create_app(ServeConfig(decode_mb=50))
    with TestClient(app) as busy_client:
        pixels = app.state.pixels
        assert pixels.take(pixels.limit)  # other requests are decoding as much as the budget allows
        response = post(busy_client, ("a.jpg", photo_bytes(), "image/jpeg"))
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert "decoded" in response.json()["detail"]
        pixels.give(pixels.limit)
        assert_still_serving(busy_client)
        assert pixels.used == 0  # every request gave its share back


def test_a_request_waits_for_decoded_pixel_budget_to_come_back():
    budget = ByteBudget(100)
    assert budget.take(80)
    waiting = threading.Thread(target=lambda: taken.append(budget.take(50, wait=60)))
    taken: list[bool] = []
    waiting.start()
    assert not budget.take(50)  # no wait: refused at once
    budget.give(80)
    waiting.join(timeout=60)
    assert taken == [True] and budget.used == 50


@pytest.fixture(scope="module")
def live():
    """The real app on Uvicorn on a free loopback port: uploads up to 1 MB, 2 queue places, a 1 s grace period."""
    uvicorn = pytest.importorskip("uvicorn")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cfg = ServeConfig(port=port, max_upload_mb=1, queue=2, body_grace_s=1, min_upload_kbps=50)
    server = uvicorn.Server(uvicorn.Config(create_app(cfg), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)  # polls a flag that has no event to wait on
    assert server.started, "the server did not start"
    yield port
    server.should_exit = True
    thread.join(timeout=30)


def multipart(name: str, payload: bytes) -> tuple[bytes, str]:
    boundary = "emorec-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + payload + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def urllib_post(port: int, name: str, payload: bytes) -> tuple[int, dict]:
    body, content_type = multipart(name, payload)
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/predict", data=body,
                                     headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_plain_clients_read_the_413_of_an_oversized_upload(live):
    payload = bytes(30_000_000)  # more than the socket buffers hold: the server must read it to be heard
    status, body = urllib_post(live, "big.png", payload)  # urllib sends the whole body before reading the answer
    assert status == 413 and "over 1 MB" in body["detail"]
    assert urllib_post(live, "a.jpg", photo_bytes())[0] == 200


def test_slow_senders_lose_their_own_place_not_everyone_elses(live):
    body, content_type = multipart("slow.jpg", photo_bytes())
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    slow = []
    for _ in range(6):  # three times the queue
        sender = socket.create_connection(("127.0.0.1", live), timeout=60)
        sender.sendall(head + body[:100])  # ... and the rest never comes
        slow.append(sender)
    try:
        status, results = urllib_post(live, "a.jpg", photo_bytes())
        assert status == 200 and results[0]["faces"]
        for sender in slow:  # each slow sender gets its 408 once the grace period is over
            answer = b"".join(iter(lambda: sender.recv(4096), b""))  # until the server closes the connection
            assert answer.startswith(b"HTTP/1.1 408") and b"KB/s" in answer
    finally:
        for sender in slow:
            sender.close()


def test_model_card_figures_read_the_results_table(tmp_path):
    model = tmp_path / "m.onnx"
    (tmp_path / "m.md").write_text("| | accuracy | macro-F1 |\n|---|---|---|\n| single pass | **70.1%** | 0.69 |\n")
    assert model_card_figures(model) == {"single pass": "accuracy 70.1%, macro-F1 0.69"}
    assert model_card_figures(tmp_path / "other.onnx") == {}


def face_at(name: str, left: bool) -> bytes:
    """A 640x320 JPEG frame with one photo's face on the left or the right half."""
    frame = np.full((320, 640, 3), 90, np.uint8)
    face = cv2.resize(cv2.imread(str(require(PHOTOS / name))), (240, 240))
    frame[40:280, (40 if left else 360):(280 if left else 600)] = face
    return cv2.imencode(".jpg", frame)[1].tobytes()


def test_stream_frames_get_track_ids_kept_per_stream(client):
    def frame(stream, name, left):
        response = post(client, ("frame.jpg", face_at(name, left), "image/jpeg"), stream=stream)
        assert response.status_code == 200
        return [face["track"] for face in response.json()[0]["faces"]]

    assert frame("cam-a", PHOTO_NAMES[0], left=True) == [1]
    assert frame("cam-a", PHOTO_NAMES[0], left=True) == [1]
    assert frame("cam-a", PHOTO_NAMES[1], left=False) == [2]  # someone else, somewhere else: a new id
    assert frame("cam-b", PHOTO_NAMES[1], left=False) == [1]  # another stream counts on its own
    assert "track" not in post(client, ("frame.jpg", face_at(PHOTO_NAMES[0], True), "image/jpeg")).json()[0]["faces"][0]


@pytest.mark.parametrize("stream, files", [("bad id!", 1), ("x" * 65, 1), ("cam", 2)])
def test_bad_stream_requests_get_422(client, stream, files):
    response = post(client, *[("frame.jpg", photo_bytes(), "image/jpeg")] * files, stream=stream)
    assert response.status_code == 422 and "stream" in response.json()["detail"]


def test_stream_trackers_stay_bounded_and_forget_idle_streams():
    from emorec.recognizer import Prepared
    from emorec.serve import StreamTrackers

    now = [0.0]
    trackers = StreamTrackers(limit=2, idle_seconds=10, clock=lambda: now[0])
    nothing = Prepared([], np.zeros((0, 48, 48, 1), np.uint8))
    for stream in ("a", "b", "c"):
        trackers.assign(stream, nothing, (640, 480))
    assert list(trackers.streams) == ["b", "c"]  # the stream idle longest made room
    now[0] = 5.0
    trackers.assign("c", nothing, (640, 480))
    now[0] = 12.0
    trackers.assign("d", nothing, (640, 480))
    assert list(trackers.streams) == ["c", "d"]  # b: nothing for over 10 s
