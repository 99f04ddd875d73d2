"""Hostile clients against `emorec serve`: deep PNGs, slow senders, and plain clients over the upload limit.

    .venv/bin/python benchmarks/serve_hostile.py [--src PATH] [--skip deep]

Starts `emorec serve` (the sources under --src, default this checkout's
src/) on a free loopback port in its own process, then:

- deep: two concurrent requests, each with eight 16-bit 8000x8000 PNGs
  (64 Mpx each, under the pixel limit; ~0.4 MB each on the wire): statuses,
  seconds, and the server's peak RSS (VmHWM);
- slow: 40 clients send their headers and 100 bytes of body, then nothing;
  meanwhile 10 normal requests (one photo each): their statuses and
  latencies, then what the slow clients got;
- plain413: a 30 MB upload (limit 20 MB) from urllib, which sends the whole
  body before reading the answer: the status it read, or its error.

Every loop is bounded in count and time. Writes
benchmarks/results/serve_hostile.json and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from serve_load import free_port, rss_mb  # a sibling script: the benchmarks folder is on sys.path

HERE = Path(__file__).resolve().parent
PHOTOS = HERE.parent.parent / "shared" / "data" / "photos"
RESULTS = HERE / "results" / "serve_hostile.json"
BOUNDARY = "emorec-bench"


def multipart(files: list[tuple[str, bytes]]) -> bytes:
    """A multipart/form-data body with one `files` part per (name, bytes)."""
    parts = [f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
             f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n" for name, data in files]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def post(port: int, body: bytes, timeout: float = 300) -> tuple[int | str, float]:
    """(status or error name, seconds) of one upload through urllib."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/predict", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            status: int | str = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    except (urllib.error.URLError, OSError) as error:
        status = type(getattr(error, "reason", error)).__name__
    return status, round(time.monotonic() - started, 2)


def deep_pngs(port: int, pid: int) -> dict:
    """Two concurrent requests of eight 16-bit 8000x8000 PNGs each."""
    image = np.zeros((8000, 8000, 3), np.uint16)
    image[::97, ::89] = 65535  # a little content, still compresses to a few hundred KB
    png = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 9])[1].tobytes()
    del image
    body = multipart([(f"deep{i}.png", png) for i in range(8)])
    before = rss_mb(pid, "VmHWM")
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: post(port, body), range(2)))
    return {"png_mb": round(len(png) / 1e6, 2), "request_mb": round(len(body) / 1e6, 2),
            "answers": answers, "server_peak_rss_mb_before": round(before),
            "server_peak_rss_mb": round(rss_mb(pid, "VmHWM"))}


def slow_senders(port: int, photo: bytes, senders: int = 40, normal: int = 10) -> dict:
    """Normal requests while `senders` clients hold connections with a body that never completes."""
    body = multipart([("slow.jpg", photo)])
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}"
            f"\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    slow = []
    for _ in range(senders):
        connection = socket.create_connection(("127.0.0.1", port), timeout=120)
        connection.sendall(head + body[:100])
        slow.append(connection)
    time.sleep(0.5)  # the senders are in; the server has their headers
    normal_answers = [post(port, multipart([("a.jpg", photo)]), timeout=120) for _ in range(normal)]
    slow_answers, started = [], time.monotonic()
    for connection in slow:  # all of them within one minute in all
        connection.settimeout(max(0.1, started + 60 - time.monotonic()))
        try:
            first = connection.recv(64).split(b"\r\n")[0].decode(errors="replace")
        except OSError as error:
            first = type(error).__name__
        slow_answers.append(first)
        connection.close()
    return {"senders": senders, "normal": normal_answers, "slow_first_lines": sorted(set(slow_answers)),
            "slow_answers_collected_in_s": round(time.monotonic() - started, 1)}


def plain_413(port: int) -> dict:
    """A 30 MB upload from urllib against the default 20 MB limit."""
    status, seconds = post(port, multipart([("big.png", bytes(30_000_000))]), timeout=120)
    return {"upload_mb": 30, "limit_mb": 20, "answer": status, "seconds": seconds}


def main(argv=None) -> None:
    """Run the scenarios and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", default=str(HERE.parent / "src"),
                        help="emorec sources to serve (e.g. an older checkout)")
    parser.add_argument("--skip", nargs="*", default=[], choices=("deep", "slow", "plain413"))
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    photo = sorted(PHOTOS.glob("*.jpg"))[0].read_bytes()
    port = free_port()
    env = {**os.environ, "PYTHONPATH": args.src}
    server = subprocess.Popen([sys.executable, "-m", "emorec", "serve", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results: dict = {"machine": f"{os.cpu_count()}-core CPU, shared and busy", "src": args.src}
    try:
        deadline = time.monotonic() + 300
        while post(port, multipart([("a.jpg", photo)]), timeout=30)[0] != 200:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.5)  # polls until the service answers
        for name, scenario in (("slow", lambda: slow_senders(port, photo)), ("plain413", lambda: plain_413(port)),
                               ("deep", lambda: deep_pngs(port, server.pid))):
            if name not in args.skip:
                print(f"{name} ...", file=sys.stderr)
                results[name] = scenario()
    finally:
        server.terminate()
        server.wait(timeout=60)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
