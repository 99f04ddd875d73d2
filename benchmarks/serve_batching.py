"""Does classifying the faces of concurrent service requests together pay? Photos/s and p99 latency, in one process.

    .venv/bin/python benchmarks/serve_batching.py [--requests 224] [--clients 16] [--workers 2 4] [--wait-ms 2 5]

Mimics `emorec serve`: CLIENTS threads each send one labelled photo at a
time to a pool of WORKERS inference threads (the service's `--workers`),
with the default bundled model and detector. Two ways to serve a request:

* direct (what the service does): the worker locates the faces
  (`Recognizer.prepare`) and classifies them (`classify_prepared`);
* batched: the worker locates the faces and hands them to one classifier
  thread, which waits up to WAIT ms for other requests' faces and
  classifies all of them in one model call.

Rounds alternate direct and batched so machine load hits both alike.
Writes benchmarks/results/serve_batching.json and prints a table.

Measured on a 2-core CPU shared with other work (defaults: 16 clients, 224
requests per row, 2 rounds; photos/s direct vs batched): 2 workers, 2 ms
wait: 35.1 vs 33.7 and 41.7 vs 37.9, mean batch 1.04-1.23 faces; 4 workers,
5 ms: 33.1 vs 29.7 and 33.1 vs 27.9, mean batch 1.8-1.9; p99 no better
(586-1205 ms direct, 883-1175 ms batched). So the service does not batch
across requests: locating faces takes most of a request's time, so faces
seldom wait together, and the classifier gains little from batches on a
CPU anyway (README: 155 images/s at batch 1, 201 at batch 64, i.e. at most
1.5 of the ~38 ms of CPU a photo costs).
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
PHOTOS = HERE.parent.parent / "shared" / "data" / "photos"
RESULTS = HERE / "results" / "serve_batching.json"


class Batcher:
    """One thread that classifies the prepared faces of every request waiting, after waiting up to wait_s for more."""

    def __init__(self, recognizer, wait_s: float):
        self.recognizer, self.wait_s, self.inbox, self.sizes = recognizer, wait_s, queue.Queue(), []
        threading.Thread(target=self._loop, daemon=True).start()

    def classify(self, prepared):
        """The faces of one prepared image, classified together with whatever else is waiting."""
        future: Future = Future()
        self.inbox.put((prepared, future))
        return future.result()

    def _loop(self) -> None:
        while True:
            items = [self.inbox.get()]
            deadline = time.perf_counter() + self.wait_s
            while (left := deadline - time.perf_counter()) > 0:
                try:
                    items.append(self.inbox.get(timeout=left))
                except queue.Empty:
                    break
            results = self.recognizer.classify_prepared([prepared for prepared, _ in items])
            for (_, future), faces in zip(items, results):
                future.set_result(faces)
            self.sizes.append(len(items))


def run(recognizer, images: list[np.ndarray], requests: int, clients: int, workers: int,
        batcher: Batcher | None) -> dict:
    """photos/s and latency percentiles of `requests` one-photo requests from `clients` threads."""
    pool = ThreadPoolExecutor(workers)

    def handle(image):
        prepared = recognizer.prepare(image)
        return batcher.classify(prepared) if batcher else recognizer.classify_prepared([prepared])[0]

    latencies, lock, numbers = [], threading.Lock(), iter(range(requests))

    def client() -> None:
        while True:
            with lock:
                number = next(numbers, None)
            if number is None:
                return
            started = time.perf_counter()
            pool.submit(handle, images[number % len(images)]).result()
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    pool.shutdown()
    return {"photos_per_s": round(requests / seconds, 1), "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 1),
            "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 1)}


def main(argv=None) -> None:
    """Alternate direct and batched rounds for each worker count and wait; print and write the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=224)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--wait-ms", type=float, nargs="+", default=[2.0, 5.0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE.parent / "src"))
    from emorec.recognizer import Recognizer

    recognizer = Recognizer()
    images = [cv2.imread(str(path)) for path in sorted(PHOTOS.glob("*.jpg"))]
    run(recognizer, images, 32, args.clients, 2, None)  # warm-up
    rows = []
    for workers, wait_ms in zip(args.workers, args.wait_ms):
        for round_ in range(args.rounds):
            batcher = Batcher(recognizer, wait_ms / 1000)
            for mode, used in (("direct", None), ("batched", batcher)):
                row = {"workers": workers, "wait_ms": wait_ms, "round": round_, "mode": mode,
                       **run(recognizer, images, args.requests, args.clients, workers, used)}
                if used:
                    row["mean_batch"] = round(float(np.mean(batcher.sizes)), 2)
                rows.append(row)
                print(row, file=sys.stderr)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"clients": args.clients, "requests": args.requests, "rows": rows}, indent=2) + "\n")
    print("| workers | wait ms | round | mode | photos/s | p50 ms | p99 ms | mean batch |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['workers']} | {r['wait_ms']:g} | {r['round']} | {r['mode']} | {r['photos_per_s']} | {r['p50_ms']} | "
              f"{r['p99_ms']} | {r.get('mean_batch', '-')} |")
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
