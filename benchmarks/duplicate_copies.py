"""Time and peak memory of `emorec check --duplicates` on a folder of identical copies of one face.

    .venv/bin/python benchmarks/duplicate_copies.py [--copies 3000 10000] [--distinct 200]

For each count a fresh folder gets that many byte-identical copies of one
FER2013 face (happy/) and --distinct other FER2013 faces (sad/), and
`emorec check DIR --duplicates --json` runs in its own subprocess
(tests/hostile.py `run_cli`): recorded are the wall seconds, the process's
peak RSS (wait4), the groups and the files in them. Results go to
benchmarks/results/duplicate_copies.json and a table is printed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FER = HERE.parent.parent / "shared" / "data" / "fer2013" / "train"
RESULTS = HERE / "results" / "duplicate_copies.json"
sys.path.insert(0, str(HERE.parent / "tests"))

import hostile  # noqa: E402


def make_folder(root: Path, copies: int, distinct: int) -> None:
    """copies identical files of one face in root/happy, distinct other faces in root/sad."""
    face = sorted((FER / "happy").glob("*.jpg"))[0].read_bytes()
    (root / "happy").mkdir(parents=True)
    for i in range(copies):
        (root / "happy" / f"copy{i:05d}.jpg").write_bytes(face)
    (root / "sad").mkdir()
    for path in sorted((FER / "sad").glob("*.jpg"))[:distinct]:
        shutil.copy2(path, root / "sad" / path.name)


def measure(copies: int, distinct: int) -> dict:
    """One row: copies, seconds, peak MiB, groups and files in groups."""
    work = hostile.open_workdir("emorec-copies-")
    try:
        make_folder(work / "data", copies, distinct)
        run = hostile.run_cli(["check", str(work / "data"), "--duplicates", "--json"], timeout=900, cwd=work)
        found = json.loads(run.stdout) if run.stdout.strip().startswith("{") else {}
        return {"copies": copies, "distinct": distinct, "exit": run.returncode, "seconds": round(run.seconds, 1),
                "peak_mib": round(run.peak_mib), "groups": found.get("groups"),
                "files_in_groups": found.get("files_in_groups"), "error": "" if found else run.stderr.strip()[-300:]}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    """Measure each count and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, nargs="+", default=[3000, 10000])
    parser.add_argument("--distinct", type=int, default=200)
    args = parser.parse_args()
    rows = []
    print("| copies | seconds | peak MiB | groups | files in groups |")
    for copies in args.copies:
        rows.append(measure(copies, args.distinct))
        row = rows[-1]
        print(f"| {copies} | {row['seconds']} | {row['peak_mib']} | {row['groups']} | {row['files_in_groups']} |"
              + (f" {row['error']}" if row["error"] else ""), flush=True)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
