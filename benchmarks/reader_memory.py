"""Peak memory of check, predict and explain on one large image: what the reader's byte budget keeps out.

    .venv/bin/python benchmarks/reader_memory.py [--side 8000] [--commands check predict explain]

Each image is an all-black PNG written straight as a compressed stream (a
few hundred KB), side x side pixels: 16-bit RGB (366 MiB decoded), 16-bit
gray (122 MiB) and 8-bit RGB (183 MiB). Each command runs in its own
subprocess (tests/hostile.py `run_cli`) on a folder holding the image (check)
or on the image itself (predict, explain with the bundled models); recorded
per cell: exit code, the line naming the image, wall seconds and the
process's peak RSS (wait4). Results go to benchmarks/results/reader_memory.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import hostile  # noqa: E402

RESULTS = HERE / "results" / "reader_memory.json"
IMAGES = {"16-bit RGB": (16, 2), "16-bit gray": (16, 0), "8-bit RGB": (8, 2)}  # (bit depth, PNG colour type)


def arguments(command: str, image: Path, work: Path) -> list[str]:
    """The CLI arguments of one command on one image."""
    return {
        "check": ["check", str(image.parent.parent)],
        "predict": ["predict", str(image)],
        "explain": ["explain", str(image), "--out", str(work / "explained")],
    }[command]


def measure(side: int, commands: list[str]) -> list[dict]:
    """One row per (image, command): exit code, answer, seconds, peak MiB."""
    rows = []
    for name, (depth, colour_type) in IMAGES.items():
        work = hostile.open_workdir("emorec-reader-")
        try:
            image = work / "data" / "happy" / "large.png"
            image.parent.mkdir(parents=True)
            image.write_bytes(hostile.decompressing_png(side, side, depth, colour_type))
            for command in commands:
                run = hostile.run_cli(arguments(command, image, work), timeout=600, cwd=work)
                named = [line for line in (run.stdout + run.stderr).splitlines() if "large.png" in line]
                rows.append({"image": f"{name} {side}x{side}", "command": command, "exit": run.returncode,
                             "answer": (named or [""])[-1][-160:], "seconds": round(run.seconds, 1),
                             "peak_mib": round(run.peak_mib)})
                print(f"| {rows[-1]['image']} | {command} | {run.returncode} | {rows[-1]['seconds']} s "
                      f"| {rows[-1]['peak_mib']} MiB | {rows[-1]['answer']} |", flush=True)
                shutil.rmtree(work / "explained", ignore_errors=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return rows


def main() -> None:
    """Measure and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=8000)
    parser.add_argument("--commands", nargs="+", default=["check", "predict", "explain"])
    args = parser.parse_args()
    rows = measure(args.side, args.commands)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"side": args.side, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
