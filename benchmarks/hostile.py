"""Every hostile input family through every command that reads images: what it answered, time, peak memory.

    .venv/bin/python benchmarks/hostile.py [--families NAME ...] [--commands check show ...]

For each family of tests/hostile.py a fresh class-folder tree is made (two
valid faces per class plus the family's input) and each command runs in its
own subprocess: check, show, pack and evaluate (bundled model) on the tree,
predict on the input named explicitly. Families that are only unreadable to
a user without root's override run as nobody (setpriv). Recorded per cell:
the exit code, the output line naming the input (or the last line), wall
seconds and the process's peak RSS (wait4). Results go to
benchmarks/results/hostile.json and a Markdown table is printed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent / "src"))

import hostile  # noqa: E402
from emorec.cli import printable  # noqa: E402

COMMANDS = ("check", "show", "pack", "evaluate", "predict")
RESULTS = HERE / "results" / "hostile.json"


def arguments(command: str, tree: Path, target: Path, work: Path) -> list[str]:
    """The CLI arguments of one command for one family."""
    return {
        "check": ["check", str(tree)],
        "show": ["show", str(tree), "--out", str(work / "show.png")],
        "pack": ["pack", str(tree), str(work / "pack.npz")],
        "evaluate": ["evaluate", "bundled", str(tree), "--out", str(work / "eval")],
        "predict": ["predict", str(target)],
    }[command]


def answer(run: hostile.Run, target: Path) -> str:
    """The output line that names the input, else the last line printed."""
    name = printable(str(target))
    lines = [line.strip() for line in (run.stdout + run.stderr).replace("\r", "\n").splitlines() if line.strip()]
    named = [line for line in lines if name in line]
    shown = (named or lines or ["(nothing)"])[0].replace(str(target.parent) + "/", "")
    return shown[:150]


def measure(family: hostile.Family, commands: list[str], blocked: str | None) -> dict:
    """Run every command on one family in a fresh tree."""
    work = hostile.open_workdir()
    try:
        tree = work / "data"
        target = hostile.build_tree(tree, [family])[family.name]
        prefix = hostile.as_other_user() if family.needs_other_user and not blocked else []
        cells = {}
        for command in commands:
            run = hostile.run_cli(arguments(command, tree, target, work), timeout=300, prefix=prefix, cwd=work)
            cells[command] = {"exit": run.returncode, "answer": answer(run, target), "seconds": round(run.seconds, 2),
                              "peak_mib": round(run.peak_mib), "traceback": "Traceback" in run.stderr}
            for output in ("show.png", "show_counts.png", "pack.npz", "eval"):
                shutil.rmtree(work / output, ignore_errors=True) if (work / output).is_dir() else (work / output).unlink(missing_ok=True)
        return {"family": family.name, "expected": family.verdict, "as_nobody": bool(prefix), "commands": cells}
    finally:
        for path in work.rglob("*"):
            if not path.is_symlink():
                path.chmod(0o755)
        shutil.rmtree(work, ignore_errors=True)


def table(rows: list[dict], commands: list[str]) -> str:
    """A Markdown table: one row per family, one column per command: exit, time, memory, answer."""
    lines = ["| input family | expected | " + " | ".join(commands) + " |", "|---|---|" + "---|" * len(commands)]
    for row in rows:
        cells = []
        for command in commands:
            cell = row["commands"][command]
            cells.append(f"exit {cell['exit']}, {cell['seconds']:.1f} s, {cell['peak_mib']} MiB: {cell['answer']}".replace("|", "/"))
        lines.append(f"| {row['family']}{' (as nobody)' if row['as_nobody'] else ''} | {row['expected']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    """Parse arguments, measure, write JSON and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="*", help="family names (default: all)")
    parser.add_argument("--commands", nargs="*", choices=COMMANDS, default=list(COMMANDS))
    args = parser.parse_args()
    chosen = [f for f in hostile.families() if not args.families or f.name in args.families]
    probe = hostile.open_workdir()
    blocked = hostile.privileges_droppable(probe)
    shutil.rmtree(probe)
    rows = []
    for family in chosen:
        rows.append(measure(family, args.commands, blocked))
        print(f"{family.name}: " + ", ".join(f"{c} exit {v['exit']} {v['seconds']} s {v['peak_mib']} MiB"
                                           for c, v in rows[-1]["commands"].items()), file=sys.stderr, flush=True)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"privileges_dropped": blocked is None, "rows": rows}, indent=2) + "\n")
    print(table(rows, args.commands))
    print(f"\nwritten to {RESULTS}")


if __name__ == "__main__":
    main()
