"""Regenerate (or check) the example outputs in README.md and docs/ by running the commands shown in them.

Every example output block in README.md and in the pages under docs/ is a ```text fence whose first line is `$ COMMAND`,
preceded by a marker naming the same command:

    <!-- example: emorec check ../shared/data/fer2013/val -->
    ```text
    $ emorec check ../shared/data/fer2013/val
    class     images
    ...
    ```

This script runs each marked command from the repository root, with this checkout's `src/` first on
the Python path, and puts what it prints on stdout under the `$ COMMAND` line. Commands run in a
scratch copy of the root (links to its files), so files they write (e.g. `runs/evaluate/...`) land in
the scratch folder and the printed output does not depend on earlier runs. The command is the
marker's, so a block can abbreviate nothing.

A block whose output needs long work (a training epoch, for instance) is marked instead with

    <!-- example-skip: one-line reason -->

and left as it is. A ```text block starting with `$ ` that has neither marker is an error, so a new
example cannot be added without being checked.

Usage (from the repository root):

    python scripts/readme_examples.py            # rewrite the example blocks of README.md and docs/ in place
    python scripts/readme_examples.py --check    # exit 1 and show a diff when a block is stale
    python scripts/readme_examples.py --only evaluate   # just the commands containing "evaluate"
    python scripts/readme_examples.py --readme docs/commands/check.md   # just that page (repeatable)

`--check` masks timings (`37s`, `83ms/step`, `12.5 s`) on both sides before comparing, so
blocks only go stale when what the code prints changes. tests/test_readme.py runs `--check`.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^<!-- example: (?P<command>.+?) -->$")
SKIP = re.compile(r"^<!-- example-skip: (?P<reason>.+?) -->$")
TIMING = re.compile(r"\b\d+(?:\.\d+)?\s?(?:ms|s)\b")


@dataclass
class Example:
    """One marked output block: the command, and the README lines (start, end) of its fenced body."""

    command: str
    start: int  # index of the line after ```text
    end: int  # index of the closing ```

    def body(self, lines: list[str]) -> str:
        """The block's current text."""
        return "".join(lines[self.start:self.end])


class ReadmeError(ValueError):
    """A page has a block this script cannot handle; the message names the file and line."""


def pages() -> list[Path]:
    """The pages whose examples are checked by default: README.md, then every page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def find_examples(lines: list[str], name: str = "README.md") -> list[Example]:
    """The marked example blocks of a page (README.md or a docs page, called name) given as lines (with line ends)."""
    examples, pending = [], None
    for index, line in enumerate(lines):
        text = line.strip()
        if MARKER.match(text) or SKIP.match(text):
            pending = MARKER.match(text)
            pending = pending["command"] if pending else ""  # "" marks a skipped block
            continue
        if text == "```text":
            end = next(i for i in range(index + 1, len(lines)) if lines[i].strip() == "```")
            first = lines[index + 1] if index + 1 < end else ""
            if pending:
                if first.strip() != f"$ {pending}":
                    raise ReadmeError(f"{name}:{index + 2}: expected '$ {pending}' as the block's first line")
                examples.append(Example(pending, index + 1, end))
            elif pending is None and first.startswith("$ "):
                raise ReadmeError(f"{name}:{index + 2}: '{first.strip()}' has no <!-- example: ... --> marker "
                                  "(or <!-- example-skip: reason -->)")
        if text:
            pending = None
    return examples


def run_example(command: str, timeout: float = 600) -> str:
    """What `command` prints on stdout, run as from the repository root; `emorec` is this checkout's."""
    words = shlex.split(command)
    if words[0] == "emorec":
        words = [sys.executable, "-m", "emorec", *words[1:]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
           "COLUMNS": "120"}
    with tempfile.TemporaryDirectory(prefix="readme-examples-") as scratch:
        cwd = _scratch_root(Path(scratch))
        done = subprocess.run(words, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return f"$ {command}\n{done.stdout.rstrip()}\n" if done.stdout.strip() else f"$ {command}\n"


def _scratch_root(scratch: Path) -> Path:
    """scratch/<repo> linking to the repository's entries, beside links to the repository's siblings."""
    for sibling in ROOT.parent.iterdir():
        if sibling.name != ROOT.name:
            (scratch / sibling.name).symlink_to(sibling)
    root = scratch / ROOT.name
    root.mkdir()
    for entry in ROOT.iterdir():
        if entry.name != "runs":
            (root / entry.name).symlink_to(entry)
    return root


def mask(text: str) -> str:
    """text with timings replaced by a placeholder."""
    return TIMING.sub("<time>", text)


def main(argv: list[str] | None = None) -> int:
    """Rewrite or check the example blocks of README.md and docs/ (or of --readme FILE...); returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a block is stale")
    parser.add_argument("--readme", type=Path, action="append", help="a page to check instead of README.md and docs/ "
                        "(repeatable)")
    parser.add_argument("--only", default="", help="only the commands that contain this text")
    args = parser.parse_args(argv)
    found = stale = 0
    for page in args.readme or pages():
        try:
            counts = _refresh(page, args.only, args.check)
        except ReadmeError as error:
            print(error, file=sys.stderr)
            return 1
        found, stale = found + counts[0], stale + counts[1]
    print(f"{found} example(s), {stale} {'stale' if args.check else 'rewritten'}", file=sys.stderr if args.check else sys.stdout)
    return 1 if args.check and stale else 0


def _refresh(page: Path, only: str, check: bool) -> tuple[int, int]:
    """Check or rewrite one page's example blocks; returns (examples, stale ones)."""
    name = str(page.relative_to(ROOT)) if page.is_relative_to(ROOT) else page.name
    lines = page.read_text(encoding="utf-8").splitlines(keepends=True)
    examples = [e for e in find_examples(lines, name) if only in e.command]
    stale = 0
    for example in reversed(examples):  # from the end, so earlier line numbers stay valid while rewriting
        fresh = run_example(example.command)
        old = example.body(lines)
        if mask(fresh) == mask(old):
            continue
        stale += 1
        if check:
            diff = difflib.unified_diff(old.splitlines(), fresh.splitlines(), name, "now", lineterm="")
            print("\n".join(diff), file=sys.stderr)
        else:
            lines[example.start:example.end] = fresh.splitlines(keepends=True)
    if stale and not check:
        page.write_text("".join(lines), encoding="utf-8")
    return len(examples), stale


if __name__ == "__main__":
    sys.exit(main())
