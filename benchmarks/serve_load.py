"""Load on `emorec serve`: throughput, latency percentiles, errors by status, and memory over 10k requests.

    .venv/bin/python benchmarks/serve_load.py [--clients 1 4 16 64] [--requests 400] [--long 10000] [--model M]

Starts `emorec serve` on 127.0.0.1 (a free port) in its own process, then,
for each client count, sends --requests uploads of one labelled photo each
(the 56 photos in turn) from that many concurrent clients over loopback, and
reports requests/s (= photos/s), p50/p95/p99 latency and responses by status.
Finally --long requests from 16 clients, with the server's RSS read from
/proc after 1,000 and at the end (a leak shows as growth). Every loop is
bounded in count and in time (--max-seconds per stage). Writes
benchmarks/results/serve_load.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PHOTOS = HERE.parent.parent / "shared" / "data" / "photos"
RESULTS = HERE / "results" / "serve_load.json"


def free_port() -> int:
    """A TCP port nobody listens on now, on loopback."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of a process from /proc, in MB: now (VmRSS) or its peak so far (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def run_stage(url: str, photos: list[tuple[str, bytes]], clients: int, requests: int, max_seconds: float,
                    on_count=None) -> dict:
    """`requests` uploads from `clients` concurrent clients; latencies and statuses."""
    import httpx

    latencies, statuses = [], Counter()
    next_index = 0
    deadline = time.monotonic() + max_seconds

    async def client(session: httpx.AsyncClient) -> None:
        nonlocal next_index
        while next_index < requests and time.monotonic() < deadline:
            index = next_index
            next_index += 1
            name, payload = photos[index % len(photos)]
            started = time.perf_counter()
            try:
                response = await session.post(f"{url}/v1/predict", files={"files": (name, payload, "image/jpeg")})
                statuses[response.status_code] += 1
            except httpx.HTTPError as error:
                statuses[type(error).__name__] += 1
            latencies.append(time.perf_counter() - started)
            if on_count is not None:
                on_count(len(latencies))

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        seconds = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"clients": clients, "requests": len(latencies), "seconds": round(seconds, 2),
            "requests_per_s": round(len(latencies) / seconds, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 1), "p95_ms": round(float(np.percentile(ms, 95)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1), "statuses": {str(k): v for k, v in statuses.items()}}


def main(argv=None) -> None:
    """Start the server, run every stage, write and print the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", nargs="+", type=int, default=[1, 4, 16, 64])
    parser.add_argument("--requests", type=int, default=400, help="requests per client count")
    parser.add_argument("--long", type=int, default=10_000, help="requests of the memory run (16 clients)")
    parser.add_argument("--workers", type=int, default=2, help="the server's inference threads")
    parser.add_argument("--model", default="bundled", help="the server's model (default: bundled)")
    parser.add_argument("--max-seconds", type=float, default=900, help="time bound of each stage")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    photos = [(p.name, p.read_bytes()) for p in sorted(PHOTOS.glob("*.jpg"))]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "emorec", "serve", "--port", str(port), "--workers",
                               str(args.workers), "--queue", "128", "--model", args.model], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_until_up(url, server)
        asyncio.run(run_stage(url, photos, 4, 40, args.max_seconds))  # warm-up
        stages = []
        for clients in args.clients:
            print(f"{clients} client(s) ...", file=sys.stderr)
            stages.append(asyncio.run(run_stage(url, photos, clients, args.requests, args.max_seconds)))
        memory = {"rss_mb_start": round(rss_mb(server.pid), 1)}

        def note(count: int) -> None:
            if count == 1000:
                memory["rss_mb_after_1k"] = round(rss_mb(server.pid), 1)

        print(f"{args.long} requests from 16 clients ...", file=sys.stderr)
        long_run = asyncio.run(run_stage(url, photos, 16, args.long, args.max_seconds * 4, note))
        memory["rss_mb_end"] = round(rss_mb(server.pid), 1)
        memory["requests"] = long_run["requests"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    results = {"machine": "2-core CPU", "model": args.model, "server_workers": args.workers, "stages": stages, "long_run": long_run,
               "memory": memory}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print("| clients | requests | photos/s | p50 ms | p95 ms | p99 ms | statuses |\n|---|---|---|---|---|---|---|")
    for s in stages + [long_run]:
        print(f"| {s['clients']} | {s['requests']} | {s['requests_per_s']} | {s['p50_ms']} | {s['p95_ms']} | "
              f"{s['p99_ms']} | {', '.join(f'{k}: {v}' for k, v in s['statuses'].items())} |")
    print(f"\nserver RSS: {memory}")
    print(f"written {out}")


def _wait_until_up(url: str, server: subprocess.Popen, seconds: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited: {server.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not come up")


if __name__ == "__main__":
    main()
